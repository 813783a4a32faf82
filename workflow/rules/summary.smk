# Stage 9: results/summary.csv and the perplexity-versus-sparsity figure.


def _summary_rows():
    rows = []
    for model in config["models"]:
        for run in RUNS:
            checkpoint_path = checkpoint_dir(model, run.method, run.target)
            for tag in PERPLEXITY_DATASETS:
                perplexity = f"{RESULTS}/{model}/{CALIBRATION}/{run.method}/{run.target}/perplexity/{tag}.json"
                rows.append((model, run, checkpoint_path, perplexity))
    return rows


rule summary:
    input:
        perplexity=[row[3] for row in _summary_rows()],
        checkpoints=sorted({row[2] for row in _summary_rows()}),
    output:
        table=f"{RESULTS}/summary.csv",
        figure=f"{RESULTS}/figures/perplexity_vs_sparsity.png",
    params:
        rows=" ".join(
            f"{model},{run.method},{run.pattern},{run.sparsity},{CALIBRATION},{perplexity},{checkpoint}/sparsity.json"
            for model, run, checkpoint, perplexity in _summary_rows()
        ),
    log:
        log_file("summary", "summary"),
    benchmark:
        benchmark_file("summary", "summary")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Writing {output.table} and {output.figure}"
    shell:
        "rose summary --rows {params.rows} --out-csv {output.table:q} --out-figure {output.figure:q} > {log:q} 2>&1"
