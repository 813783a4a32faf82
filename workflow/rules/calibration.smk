# Stages 2 and 3: seeded calibration windows, then block 0's inputs and the arguments
# the model passes to its blocks, captured from a real forward pass.


rule calibrate:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
    output:
        f"{RESULTS}/{{model}}/calibration/{{calib}}.safetensors",
    params:
        settings=lambda wildcards: calibration_settings(wildcards.calib),
    log:
        log_file("calibrate", "{model}/{calib}"),
    benchmark:
        benchmark_file("calibrate", "{model}/{calib}")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    message:
        "Sampling calibration windows {wildcards.calib} for {wildcards.model}"
    shell:
        "rose --threads {threads} calibrate --model {input.model:q} --dataset {params.settings[dataset]:q}"
        " --nsamples {params.settings[nsamples]} --seqlen {params.settings[seqlen]} --seed {params.settings[seed]}"
        " --out {output:q} > {log:q} 2>&1"


rule capture_block_inputs:
    input:
        model=lambda wildcards: model_dir(wildcards.model),
        calibration=f"{RESULTS}/{{model}}/calibration/{{calib}}.safetensors",
    output:
        inputs=f"{RESULTS}/{{model}}/{{calib}}/embeddings/inputs.safetensors",
        kwargs=f"{RESULTS}/{{model}}/{{calib}}/embeddings/block_kwargs.pt",
    params:
        device=DEVICE,
        activation_dtype=config["activation_dtype"],
    log:
        log_file("capture_block_inputs", "{model}/{calib}"),
    benchmark:
        benchmark_file("capture_block_inputs", "{model}/{calib}")
    threads: THREADS
    resources:
        mem_mb=model_mem_mb,
        gpu=GPUS_PER_JOB,
        runtime=30,
    conda:
        CONDA_ENV
    message:
        "Capturing block 0 inputs of {wildcards.model}"
    shell:
        "rose --threads {threads} capture --model {input.model:q} --calibration {input.calibration:q}"
        " --out-inputs {output.inputs:q} --out-kwargs {output.kwargs:q}"
        " --device {params.device} --activation-dtype {params.activation_dtype} > {log:q} 2>&1"
