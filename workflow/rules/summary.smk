# Stage 9: results/summary.csv, the perplexity-versus-sparsity figure and, when zero-shot tasks are
# configured, results/tables/zeroshot.md.


def _summary_rows():
    """(model, calibration tag, run, checkpoint, perplexity file) for every experiment and text."""
    rows = []
    for model in config["models"]:
        for calibration, run in EXPERIMENTS:
            checkpoint_path = checkpoint_dir(model, run.method, run.target, calibration.tag)
            for tag in PERPLEXITY_DATASETS:
                perplexity = f"{RESULTS}/{model}/{calibration.tag}/{run.method}/{run.target}/perplexity/{tag}.json"
                rows.append((model, calibration.tag, run, checkpoint_path, perplexity))
    return rows


def _main_grid(calib, run):
    """Whether an experiment belongs to the main grid (zero-shot runs there only), not to a sweep."""
    main_tags = {calibration.tag for calibration in rose_config.main_calibrations(config)}
    return calib in main_tags and run.block_size is None


ZEROSHOT_TABLE = f"{RESULTS}/tables/zeroshot.md"


def _zeroshot_field(model, calib, run):
    """The optional last field of a summary row: the run's zero-shot record."""
    if ZEROSHOT_TASKS and _main_grid(calib, run):
        return f",{zeroshot_file(model, run.method, run.target, calib)}"
    return ""


rule summary:
    input:
        perplexity=[row[4] for row in _summary_rows()],
        checkpoints=sorted({row[3] for row in _summary_rows()}),
        zeroshot=[
            zeroshot_file(model, run.method, run.target, calibration.tag)
            for model in config["models"]
            for calibration, run in EXPERIMENTS
            if ZEROSHOT_TASKS and _main_grid(calibration.tag, run)
        ],
    output:
        table=f"{RESULTS}/summary.csv",
        figure=report(f"{RESULTS}/figures/perplexity_vs_sparsity.png", caption="../report/perplexity_vs_sparsity.rst", category="Figures", subcategory="all models"),
        **({"zeroshot_table": ZEROSHOT_TABLE} if ZEROSHOT_TASKS else {}),
    params:
        rows=" ".join(
            f"{model},{run.method},{run.target},{calib},{perplexity},{checkpoint}/sparsity.json"
            + _zeroshot_field(model, calib, run)
            for model, calib, run, checkpoint, perplexity in _summary_rows()
        ),
        block_size=PRUNING["block_size"],
        nsamples=config["calibration"]["nsamples"],
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
        "rose summary --rows {params.rows} --block-size {params.block_size} --nsamples {params.nsamples}"
        " --out-csv {output.table:q} --out-figure {output.figure:q} {params.zeroshot_table}"
        " > {log:q} 2>&1"
