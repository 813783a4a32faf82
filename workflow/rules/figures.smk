# Stage 10: the paper's kinds of figures (PNG and the CSV each is drawn from) under
# results/figures/ and tables under results/tables/, cheap jobs that read the statistics of the
# prune_block jobs, summary.csv and the benchmark files. `snakemake figures` builds them alone;
# `snakemake --report results/report.html` bundles them with the captions in workflow/report/.
from types import SimpleNamespace

FIGURE_SETTINGS = config["figures"]
FIGURE_DIR = f"{RESULTS}/figures"
TABLE_DIR = f"{RESULTS}/tables"
# Methods that run the SparseGPT sweep with some column order, and so record an error curve.
ORDERING_METHODS = ["sparsegpt", "rose", "rose_ascending", "rose_blocks_only", "rose_columns_only"]
ABLATION_METHODS = ["rose_ascending", "rose_blocks_only", "rose_columns_only"]
MAIN_CALIBRATIONS = rose_config.main_calibrations(config)
MAIN_RUNS = rose_config.runs(config)
SWEEP_METHODS = [m for m in config["sweeps"].get("methods", ["sparsegpt", "rose"]) if m != "dense"]
HAS_SWEEPS = bool(config["sweeps"].get("nsamples") or config["sweeps"].get("block_size"))


def _figure_block(model):
    """The configured figures.block, checked against the model's number of decoder blocks."""
    block = FIGURE_SETTINGS["block"]
    if block >= num_blocks(model):
        raise ValueError(f"figures.block is {block}, but model {model} has {num_blocks(model)} decoder blocks (0 to {num_blocks(model) - 1})")
    return block


def _stats_entries(model, methods, blocks=None, first_seed_only=False):
    """(calibration tag, run, statistics file) of the main grid's pruned runs of ``methods``."""
    calibrations = MAIN_CALIBRATIONS[:1] if first_seed_only else MAIN_CALIBRATIONS
    blocks = range(num_blocks(model)) if blocks is None else blocks
    return [
        (calibration.tag, run, f"{RESULTS}/{model}/{calibration.tag}/{run.method}/{run.target}/pruned/{block_file(block)}.json")
        for calibration in calibrations
        for run in MAIN_RUNS
        if run.method in methods
        for block in blocks
    ]


def _stats_files(**selection):
    return lambda wildcards: [path for _, _, path in _stats_entries(wildcards.model, **selection)]


def _stats_argument(**selection):
    return lambda wildcards: " ".join(
        f"{calib},{run.method},{run.target},{path}" for calib, run, path in _stats_entries(wildcards.model, **selection)
    )


def _figure_targets():
    """Every figure and table this configuration can draw."""
    methods = set(config["methods"])
    targets = [f"{FIGURE_DIR}/stage_costs.png", f"{TABLE_DIR}/perplexity.csv", f"{TABLE_DIR}/pruning_time.csv"]
    if ZEROSHOT_TASKS:
        targets.append(f"{TABLE_DIR}/zeroshot.csv")
    for model in config["models"]:
        if methods & set(ORDERING_METHODS):
            targets.append(f"{FIGURE_DIR}/{model}/error_curve.png")
        if "rose" in methods:
            targets.append(f"{FIGURE_DIR}/{model}/reordering.png")
            targets += [f"{FIGURE_DIR}/{model}/columnar_{run.target}.png" for run in MAIN_RUNS if run.method == "rose"]
        if {"sparsegpt", "rose"} <= methods:
            targets.append(f"{FIGURE_DIR}/{model}/layer_error.png")
        if methods & set(ABLATION_METHODS):
            targets.append(f"{FIGURE_DIR}/{model}/ordering_ablation.png")
        if HAS_SWEEPS:
            targets.append(f"{FIGURE_DIR}/{model}/sensitivity.png")
    return targets


def _columnar_run(wildcards):
    """Path-building stand-in for the wildcards of the ROSE run whose block the columnar figure draws."""
    return SimpleNamespace(
        model=wildcards.model, calib=MAIN_CALIBRATIONS[0].tag, method="rose", target=wildcards.target,
        block=_figure_block(wildcards.model),
    )


rule figure_error_curve:
    input:
        stats=lambda wildcards: [
            path for _, _, path in _stats_entries(wildcards.model, ORDERING_METHODS, [_figure_block(wildcards.model)])
        ],
    output:
        figure=report(
            f"{FIGURE_DIR}/{{model}}/error_curve.png", caption="../report/error_curve.rst", category="Figures", subcategory="{model}"
        ),
        table=f"{FIGURE_DIR}/{{model}}/error_curve.csv",
    params:
        stats=lambda wildcards: " ".join(
            f"{calib},{run.method},{run.target},{path}"
            for calib, run, path in _stats_entries(wildcards.model, ORDERING_METHODS, [_figure_block(wildcards.model)])
        ),
        block=lambda wildcards: _figure_block(wildcards.model),
        sublayer=FIGURE_SETTINGS["sublayer"],
    log:
        log_file("figure_error_curve", "{model}"),
    benchmark:
        benchmark_file("figure_error_curve", "{model}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Drawing {output.figure}"
    shell:
        "rose figures error-curve --model {wildcards.model} --block {params.block} --sublayer {params.sublayer}"
        " --stats {params.stats} --out-figure {output.figure:q} --out-csv {output.table:q} > {log:q} 2>&1"


rule figure_columnar:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
        hessians=lambda wildcards: hessian_for_pruning(_columnar_run(wildcards)),
        stats=lambda wildcards: f"{run_dir(_columnar_run(wildcards))}/pruned/{block_file(_figure_block(wildcards.model))}.json",
    output:
        figure=report(
            f"{FIGURE_DIR}/{{model}}/columnar_{{target}}.png",
            caption="../report/columnar.rst",
            category="Figures",
            subcategory="{model}",
        ),
        table=f"{FIGURE_DIR}/{{model}}/columnar_{{target}}.csv",
        heatmap=f"{FIGURE_DIR}/{{model}}/columnar_{{target}}_heatmap.csv",
    params:
        calib=MAIN_CALIBRATIONS[0].tag,
        block=lambda wildcards: _figure_block(wildcards.model),
        sublayer=FIGURE_SETTINGS["sublayer"],
        quantity=FIGURE_SETTINGS["heatmap"],
    log:
        log_file("figure_columnar", "{model}/{target}"),
    benchmark:
        benchmark_file("figure_columnar", "{model}/{target}")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Drawing {output.figure}"
    shell:
        "rose figures columnar --model {wildcards.model} --model-dir {input.model:q} --hessians {input.hessians:q}"
        " --stats {params.calib},rose,{wildcards.target},{input.stats:q} --block {params.block} --sublayer {params.sublayer}"
        " --quantity {params.quantity} --out-figure {output.figure:q} --out-csv {output.table:q}"
        " --out-heatmap-csv {output.heatmap:q} > {log:q} 2>&1"


rule figure_reordering:
    input:
        stats=_stats_files(methods=["rose"], first_seed_only=True),
    output:
        figure=report(
            f"{FIGURE_DIR}/{{model}}/reordering.png", caption="../report/reordering.rst", category="Figures", subcategory="{model}"
        ),
        table=f"{FIGURE_DIR}/{{model}}/reordering.csv",
    params:
        stats=_stats_argument(methods=["rose"], first_seed_only=True),
        threshold=PRUNING["threshold"],
    log:
        log_file("figure_reordering", "{model}"),
    benchmark:
        benchmark_file("figure_reordering", "{model}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Drawing {output.figure}"
    shell:
        "rose figures reordering --model {wildcards.model} --threshold {params.threshold} --stats {params.stats}"
        " --out-figure {output.figure:q} --out-csv {output.table:q} > {log:q} 2>&1"


rule figure_layer_error:
    input:
        stats=_stats_files(methods=["sparsegpt", "rose"]),
    output:
        figure=report(
            f"{FIGURE_DIR}/{{model}}/layer_error.png", caption="../report/layer_error.rst", category="Figures", subcategory="{model}"
        ),
        table=f"{FIGURE_DIR}/{{model}}/layer_error.csv",
    params:
        stats=_stats_argument(methods=["sparsegpt", "rose"]),
    log:
        log_file("figure_layer_error", "{model}"),
    benchmark:
        benchmark_file("figure_layer_error", "{model}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Drawing {output.figure}"
    shell:
        "rose figures layer-error --model {wildcards.model} --stats {params.stats}"
        " --out-figure {output.figure:q} --out-csv {output.table:q} > {log:q} 2>&1"


rule figure_ordering_ablation:
    input:
        stats=_stats_files(methods=ORDERING_METHODS),
        summary=rules.summary.output.table,
    output:
        figure=report(
            f"{FIGURE_DIR}/{{model}}/ordering_ablation.png",
            caption="../report/ordering_ablation.rst",
            category="Figures",
            subcategory="{model}",
        ),
        table=f"{FIGURE_DIR}/{{model}}/ordering_ablation.csv",
    params:
        stats=_stats_argument(methods=ORDERING_METHODS),
        block_size=PRUNING["block_size"],
        nsamples=config["calibration"]["nsamples"],
    log:
        log_file("figure_ordering_ablation", "{model}"),
    benchmark:
        benchmark_file("figure_ordering_ablation", "{model}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Drawing {output.figure}"
    shell:
        "rose figures ordering-ablation --model {wildcards.model} --stats {params.stats} --summary {input.summary:q}"
        " --block-size {params.block_size} --nsamples {params.nsamples}"
        " --out-figure {output.figure:q} --out-csv {output.table:q} > {log:q} 2>&1"


rule figure_sensitivity:
    input:
        summary=rules.summary.output.table,
    output:
        figure=report(
            f"{FIGURE_DIR}/{{model}}/sensitivity.png", caption="../report/sensitivity.rst", category="Figures", subcategory="{model}"
        ),
        table=f"{FIGURE_DIR}/{{model}}/sensitivity.csv",
    params:
        block_size=PRUNING["block_size"],
        nsamples=config["calibration"]["nsamples"],
        methods=" ".join(SWEEP_METHODS),
    log:
        log_file("figure_sensitivity", "{model}"),
    benchmark:
        benchmark_file("figure_sensitivity", "{model}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Drawing {output.figure}"
    shell:
        "rose figures sensitivity --model {wildcards.model} --summary {input.summary:q} --block-size {params.block_size}"
        " --nsamples {params.nsamples} --methods {params.methods}"
        " --out-figure {output.figure:q} --out-csv {output.table:q} > {log:q} 2>&1"


rule figure_stage_costs:
    # summary.csv is written after every pruning and evaluation job, so their benchmark files are
    # complete; the figure jobs' own benchmark files are not, and are left out.
    input:
        summary=rules.summary.output.table,
    output:
        figure=report(f"{FIGURE_DIR}/stage_costs.png", caption="../report/stage_costs.rst", category="Figures", subcategory="workflow"),
        table=f"{FIGURE_DIR}/stage_costs.csv",
    params:
        benchmarks=f"{RESULTS}/benchmarks",
        rules=lambda wildcards: " ".join(rule.name for rule in workflow.rules if not rule.name.startswith("figure") and rule.name != "tables"),
    log:
        log_file("figure_stage_costs", "stage_costs"),
    benchmark:
        benchmark_file("figure_stage_costs", "stage_costs")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Drawing {output.figure}"
    shell:
        "rose figures stage-costs --benchmarks {params.benchmarks:q} --rules {params.rules}"
        " --out-figure {output.figure:q} --out-csv {output.table:q} > {log:q} 2>&1"


rule tables:
    input:
        summary=rules.summary.output.table,
    output:
        perplexity=report(f"{TABLE_DIR}/perplexity.csv", caption="../report/perplexity_table.rst", category="Tables"),
        perplexity_md=f"{TABLE_DIR}/perplexity.md",
        pruning_time=report(f"{TABLE_DIR}/pruning_time.csv", caption="../report/pruning_time_table.rst", category="Tables"),
        pruning_time_md=f"{TABLE_DIR}/pruning_time.md",
        **(
            {
                "zeroshot": report(f"{TABLE_DIR}/zeroshot.csv", caption="../report/zeroshot_table.rst", category="Tables"),
                "zeroshot_md": f"{TABLE_DIR}/zeroshot_mean.md",
            }
            if ZEROSHOT_TASKS
            else {}
        ),
    params:
        block_size=PRUNING["block_size"],
        nsamples=config["calibration"]["nsamples"],
        zeroshot="--zeroshot" if ZEROSHOT_TASKS else "",
    log:
        log_file("tables", "tables"),
    benchmark:
        benchmark_file("tables", "tables")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    message:
        "Writing the perplexity, pruning-time and zero-shot tables next to {output.perplexity}"
    shell:
        "rose tables --summary {input.summary:q} --block-size {params.block_size} --nsamples {params.nsamples}"
        " {params.zeroshot} --out-dir {TABLE_DIR} > {log:q} 2>&1"


rule figures:
    input:
        _figure_targets(),
