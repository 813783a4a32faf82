# Stages 4 to 6, once per decoder block: Hessians of the block's inputs, pruning, and
# propagation of the (pruned) block's outputs to the next block.


def _maybe_temp(path):
    return path if config["keep_hessians"] else temp(path)


rule hessian:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
        inputs=block_inputs,
        kwargs=lambda wildcards: f"{embeddings_dir(wildcards)}/block_kwargs.pt",
    output:
        _maybe_temp(f"{RESULTS}/{RUN_PATTERN}/hessians/block_{{block}}.safetensors"),
    params:
        device=DEVICE,
    log:
        log_file("hessian", RUN_PATTERN + "/block_{block}"),
    benchmark:
        benchmark_file("hessian", RUN_PATTERN + "/block_{block}")
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    message:
        "Hessians of block {wildcards.block} ({wildcards.method} {wildcards.target})"
    shell:
        "rose --threads {threads} hessian --model {input.model:q} --block {wildcards.block}"
        " --inputs {input.inputs:q} --kwargs {input.kwargs:q} --out {output:q} --device {params.device} > {log:q} 2>&1"


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
        block_size=PRUNING["block_size"],
        damping=PRUNING["damping"],
        threshold=PRUNING["threshold"],
    log:
        log_file("prune_block", RUN_PATTERN + "/block_{block}"),
    benchmark:
        benchmark_file("prune_block", RUN_PATTERN + "/block_{block}")
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    message:
        "Pruning block {wildcards.block} with {wildcards.method} ({wildcards.target})"
    shell:
        "rose --threads {threads} prune-block --model {input.model:q} --block {wildcards.block}"
        " --hessians {input.hessians:q} --method {wildcards.method} --pattern {params.pattern}"
        " --sparsity {params.sparsity} --block-size {params.block_size} --damping {params.damping}"
        " --threshold {params.threshold} --out-weights {output.weights:q} --out-stats {output.stats:q}"
        " --device {params.device} > {log:q} 2>&1"


def _propagated_block(wildcards):
    return int(wildcards.block) - 1


def _propagate_weights(wildcards):
    if wildcards.method == "dense":
        return []
    return f"{run_dir(wildcards)}/pruned/{block_file(_propagated_block(wildcards))}.safetensors"


rule propagate:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
        weights=_propagate_weights,
        inputs=lambda wildcards: block_inputs(wildcards, _propagated_block(wildcards)),
        kwargs=lambda wildcards: f"{embeddings_dir(wildcards)}/block_kwargs.pt",
    output:
        temp(f"{RESULTS}/{RUN_PATTERN}/inputs/block_{{block}}.safetensors"),
    params:
        device=DEVICE,
        source=_propagated_block,
        weights=lambda wildcards, input: f"--weights {input.weights}" if input.weights else "",
    log:
        log_file("propagate", RUN_PATTERN + "/block_{block}"),
    benchmark:
        benchmark_file("propagate", RUN_PATTERN + "/block_{block}")
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    message:
        "Propagating block {params.source} outputs to block {wildcards.block} ({wildcards.method} {wildcards.target})"
    shell:
        "rose --threads {threads} propagate --model {input.model:q} --block {params.source} {params.weights}"
        " --inputs {input.inputs:q} --kwargs {input.kwargs:q} --out {output:q} --device {params.device} > {log:q} 2>&1"
