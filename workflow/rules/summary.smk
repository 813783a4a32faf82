# Stage 9: results/summary.csv, the perplexity-versus-sparsity figure and, when zero-shot tasks are
# configured, results/tables/zeroshot.md.


def _summary_rows():
    rows = []
    for model in config["models"]:
        for run in RUNS:
            checkpoint_path = checkpoint_dir(model, run.method, run.target)
            for tag in PERPLEXITY_DATASETS:
                perplexity = f"{RESULTS}/{model}/{CALIBRATION}/{run.method}/{run.target}/perplexity/{tag}.json"
                rows.append((model, run, checkpoint_path, perplexity))
    return rows


ZEROSHOT_TABLE = f"{RESULTS}/tables/zeroshot.md"


def _zeroshot_field(model, run):
    """The optional eighth field of a summary row: the run's zero-shot record."""
    return f",{zeroshot_file(model, run.method, run.target)}" if ZEROSHOT_TASKS else ""


rule summary:
    input:
        perplexity=[row[3] for row in _summary_rows()],
        checkpoints=sorted({row[2] for row in _summary_rows()}),
        zeroshot=[zeroshot_file(model, run.method, run.target) for model in config["models"] for run in RUNS] if ZEROSHOT_TASKS else [],
    output:
        table=f"{RESULTS}/summary.csv",
        figure=f"{RESULTS}/figures/perplexity_vs_sparsity.png",
        **({"zeroshot_table": ZEROSHOT_TABLE} if ZEROSHOT_TASKS else {}),
    params:
        rows=" ".join(
            f"{model},{run.method},{run.pattern},{run.sparsity},{CALIBRATION},{perplexity},{checkpoint}/sparsity.json"
            + _zeroshot_field(model, run)
            for model, run, checkpoint, perplexity in _summary_rows()
        ),
        zeroshot_table=f"--out-zeroshot-table {ZEROSHOT_TABLE}" if ZEROSHOT_TASKS else "",
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
        "rose summary --rows {params.rows} --out-csv {output.table:q} --out-figure {output.figure:q} {params.zeroshot_table}"
        " > {log:q} 2>&1"
