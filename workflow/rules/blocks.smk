# Stages 4 to 6, once per decoder block. The hessian job of block i first propagates: it runs
# block i-1 (pruned, or dense under dense propagation) on that block's inputs to get block i's
# inputs, then accumulates H and activation norms. The prune job prunes block i from them.


def _maybe_temp(path):
    return path if config["keep_hessians"] else temp(path)


def _source_inputs(wildcards):
    """Block 0 reads the captured inputs; block i reads block i-1's inputs and runs block i-1.

    Block 1 reads the captured inputs too (block 0's inputs file is only a link to them), so a
    rerun of block 1 never needs block 0's hessian job to recreate that temporary link.
    """
    block = int(wildcards.block)
    if block <= 1:
        return f"{embeddings_dir(wildcards)}/inputs.safetensors"
    return f"{run_dir(wildcards)}/inputs/{block_file(block - 1)}.safetensors"


def _previous_weights(wildcards):
    block = int(wildcards.block)
    if block == 0 or wildcards.method == "dense":
        return []
    return f"{run_dir(wildcards)}/pruned/{block_file(block - 1)}.safetensors"


rule hessian:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
        source_inputs=_source_inputs,
        previous_weights=_previous_weights,
        kwargs=lambda wildcards: f"{embeddings_dir(wildcards)}/block_kwargs.pt",
    output:
        hessians=_maybe_temp(f"{RESULTS}/{RUN_PATTERN}/hessians/block_{{block}}.safetensors"),
        inputs=temp(f"{RESULTS}/{RUN_PATTERN}/inputs/block_{{block}}.safetensors"),
    params:
        device=DEVICE,
        previous_weights=lambda wildcards, input: (
            f"--previous-weights {input.previous_weights}" if input.previous_weights else ""
        ),
    log:
        log_file("hessian", RUN_PATTERN + "/block_{block}"),
    benchmark:
        benchmark_file("hessian", RUN_PATTERN + "/block_{block}")
    threads: THREADS
    resources:
        mem_mb=block_mem_mb,
        gpu=GPUS_PER_JOB,
        runtime=30,
    conda:
        CONDA_ENV
    message:
        "Inputs and Hessians of block {wildcards.block} ({wildcards.method} {wildcards.target})"
    shell:
        "rose --threads {threads} hessian --model {input.model:q} --block {wildcards.block}"
        " --source-inputs {input.source_inputs:q} {params.previous_weights} --kwargs {input.kwargs:q}"
        " --out {output.hessians:q} --out-inputs {output.inputs:q} --device {params.device} > {log:q} 2>&1"


rule prune_block:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
        hessians=hessian_for_pruning,
    output:
        weights=f"{RESULTS}/{RUN_PATTERN}/pruned/block_{{block}}.safetensors",
        stats=f"{RESULTS}/{RUN_PATTERN}/pruned/block_{{block}}.json",
    params:
        device=DEVICE,
        pattern=lambda wildcards: Run(wildcards.method, wildcards.target).pattern,
        sparsity=lambda wildcards: Run(wildcards.method, wildcards.target).sparsity,
        block_size=lambda wildcards: Run(wildcards.method, wildcards.target).block_size or PRUNING["block_size"],
        damping=PRUNING["damping"],
        threshold=PRUNING["threshold"],
    log:
        log_file("prune_block", RUN_PATTERN + "/block_{block}"),
    benchmark:
        benchmark_file("prune_block", RUN_PATTERN + "/block_{block}")
    threads: THREADS
    resources:
        mem_mb=block_mem_mb,
        gpu=GPUS_PER_JOB,
        runtime=30,
    conda:
        CONDA_ENV
    message:
        "Pruning block {wildcards.block} with {wildcards.method} ({wildcards.target})"
    shell:
        "rose --threads {threads} prune-block --model {input.model:q} --block {wildcards.block}"
        " --hessians {input.hessians:q} --method {wildcards.method} --pattern {params.pattern}"
        " --sparsity {params.sparsity} --block-size {params.block_size} --damping {params.damping}"
        " --threshold {params.threshold} --out-weights {output.weights:q} --out-stats {output.stats:q}"
        " --device {params.device} > {log:q} 2>&1"
