# Stage 1: import the model spec into a local float32 safetensors checkpoint, once.


rule import_model:
    output:
        directory("resources/models/{model}"),
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
    log:
        log_file("import_model", "{model}"),
    benchmark:
        benchmark_file("import_model", "{model}")
    threads: THREADS
    resources:
        mem_mb=model_mem_mb,
        runtime=60,
    conda:
        CONDA_ENV
    message:
        "Importing model {wildcards.model}"
    shell:
        "rose --threads {threads} import-model --spec {params.spec:q} --out {output:q} > {log:q} 2>&1"
