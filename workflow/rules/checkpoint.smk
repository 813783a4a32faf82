# Stage 7: merge the pruned blocks into a Hugging Face checkpoint with sparsity.json.


rule assemble_checkpoint:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
        weights=lambda wildcards: pruned_blocks(wildcards, "safetensors"),
        stats=lambda wildcards: pruned_blocks(wildcards, "json"),
    output:
        directory(f"{RESULTS}/{RUN_PATTERN}/checkpoint"),
    log:
        log_file("assemble_checkpoint", RUN_PATTERN),
    benchmark:
        benchmark_file("assemble_checkpoint", RUN_PATTERN)
    threads: 1
    resources:
        mem_mb=model_mem_mb,
        runtime=30,
    conda:
        CONDA_ENV
    message:
        "Assembling the {wildcards.method} {wildcards.target} checkpoint of {wildcards.model}"
    shell:
        "rose --threads {threads} assemble --model {input.model:q} --weights {input.weights:q}"
        " --stats {input.stats:q} --out {output:q} > {log:q} 2>&1"
