# Stage 8: zero-shot accuracy of every checkpoint with lm-eval-harness (skipped when
# zeroshot.tasks is empty). One job scores all configured tasks, so lm-eval starts once per checkpoint.
ZEROSHOT = config["zeroshot"]
ZEROSHOT_TASKS = ZEROSHOT["tasks"]


def zeroshot_file(model, method, target, calib=CALIBRATION):
    return f"{RESULTS}/{model}/{calib}/{method}/{target}/zeroshot.json"


rule zeroshot:
    input:
        checkpoint=f"{RESULTS}/{RUN_PATTERN}/checkpoint",
    output:
        f"{RESULTS}/{RUN_PATTERN}/zeroshot.json",
    params:
        tasks=" ".join(ZEROSHOT_TASKS),
        source=ZEROSHOT["source"],
        limit=ZEROSHOT["limit"],
        num_fewshot=ZEROSHOT["num_fewshot"],
        batch_size=ZEROSHOT["batch_size"],
        device=DEVICE,
    log:
        log_file("zeroshot", RUN_PATTERN),
    benchmark:
        benchmark_file("zeroshot", RUN_PATTERN)
    threads: THREADS
    resources:
        mem_mb=model_mem_mb,
        gpu=GPUS_PER_JOB,
        runtime=120,
    conda:
        CONDA_ENV
    message:
        "Zero-shot accuracy of {wildcards.method} {wildcards.target} on {params.tasks}"
    shell:
        "rose --threads {threads} zeroshot --checkpoint {input.checkpoint:q} --tasks {params.tasks}"
        " --source {params.source} --limit {params.limit} --num-fewshot {params.num_fewshot}"
        " --batch-size {params.batch_size} --out {output:q} --device {params.device} > {log:q} 2>&1"
