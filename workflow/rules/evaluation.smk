# Stage 8: perplexity of every checkpoint on every configured text.
PERPLEXITY = config["perplexity"]
PERPLEXITY_DATASETS = {rose_config.dataset_tag(name): name for name in PERPLEXITY["datasets"]}


rule perplexity:
    input:
        checkpoint=f"{RESULTS}/{RUN_PATTERN}/checkpoint",
    output:
        f"{RESULTS}/{RUN_PATTERN}/perplexity/{{dataset}}.json",
    params:
        dataset=lambda wildcards: PERPLEXITY_DATASETS[wildcards.dataset],
        seqlen=PERPLEXITY["seqlen"],
        max_chars=PERPLEXITY["max_chars"],
        max_windows=PERPLEXITY["max_windows"],
        batch_size=PERPLEXITY["batch_size"],
        device=DEVICE,
    log:
        log_file("perplexity", RUN_PATTERN + "/{dataset}"),
    benchmark:
        benchmark_file("perplexity", RUN_PATTERN + "/{dataset}")
    threads: THREADS
    resources:
        mem_mb=model_mem_mb,
        gpu=GPUS_PER_JOB,
        runtime=60,
    conda:
        CONDA_ENV
    message:
        "Perplexity of {wildcards.method} {wildcards.target} on {wildcards.dataset}"
    shell:
        "rose --threads {threads} perplexity --checkpoint {input.checkpoint:q} --dataset {params.dataset:q}"
        " --seqlen {params.seqlen} --max-chars {params.max_chars} --max-windows {params.max_windows}"
        " --batch-size {params.batch_size} --out {output:q} --device {params.device} > {log:q} 2>&1"
