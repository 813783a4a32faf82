# Config validation, wildcard constraints and the one place where output paths are built.
import re
import sys

from rose import config as rose_config
from rose.config import Run
from rose.models import count_blocks

try:
    _validated = rose_config.validate(config)
except rose_config.ConfigError as error:
    sys.exit(f"Invalid configuration: {error}")
config.clear()
config.update(_validated)

RESULTS = "results"
# Used by --sdm conda; a plain run uses the current environment.
CONDA_ENV = "../../envs/rose.yaml"
RUNS = rose_config.runs(config)
# (calibration, run) pairs of the main grid for every seed, then of the sensitivity sweeps.
EXPERIMENTS = rose_config.experiments(config)
CALIBRATIONS = {calibration.tag: calibration for calibration, _ in EXPERIMENTS}
CALIBRATION = rose_config.calibration_tag(config)
PRUNING = config["pruning"]
THREADS = config["threads"]
DEVICE = config["device"]


def check_resources():
    """Refuse, before any job runs, a run whose activations, blocks and Hessians would not fit.

    Needs the imported checkpoint's config.json and weight file; before the import job has run,
    the same check runs again on the next invocation.
    """
    import json
    from pathlib import Path

    from rose import planning

    dtype_bytes = 4 if config["activation_dtype"] in ("float32", "auto") else 2
    pruned_runs = [run for _, run in EXPERIMENTS if run.method != "dense"]
    streams = len(CALIBRATIONS) if PRUNING["propagation"] == "dense" else len(pruned_runs)
    max_memory = config["max_memory_gb"] * planning.GIB if config["max_memory_gb"] else None
    for model in config["models"]:
        folder = Path(model_dir(model))
        if not pruned_runs or not (folder / "config.json").is_file():
            continue
        model_config = json.loads((folder / "config.json").read_text())
        model_bytes = (folder / "model.safetensors").stat().st_size
        calibration = config["calibration"]
        plan = planning.estimate_block_plan(model_config, model_bytes, calibration["nsamples"], calibration["seqlen"], dtype_bytes)
        try:
            planning.check_run_fits(plan, num_blocks(model), model_bytes, streams, config["keep_hessians"], RESULTS, max_memory)
        except planning.ResourceError as error:
            sys.exit(f"Insufficient resources for model {model}: {error}")


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    calib="[^/]+",
    method="[a-z_]+",
    target="(dense|unstructured-[0-9.]+|[0-9]+of[0-9]+)(-b[0-9]+)?",
    block="[0-9]{3}",
    dataset="[^/]+",


def model_dir(model):
    return f"resources/models/{model}"


def run_dir(wildcards, method=None, target=None):
    """Folder of one run: results/<model>/<calibration>/<method>/<target>."""
    method = method or wildcards.method
    target = target or wildcards.target
    return f"{RESULTS}/{wildcards.model}/{wildcards.calib}/{method}/{target}"


def block_file(block):
    return f"block_{int(block):03d}"


def num_blocks(model):
    """Decoder blocks of a model: its imported config.json, else num_blocks in the config, else its source."""
    from pathlib import Path

    declared = config["num_blocks"].get(model)
    if declared is not None and not (Path(model_dir(model)) / "config.json").is_file():
        return declared
    counted = count_blocks(config["models"][model], model_dir(model))
    if declared is not None and declared != counted:
        sys.exit(
            f"Invalid configuration: num_blocks.{model} is {declared}, but the imported checkpoint "
            f"{model_dir(model)} has {counted} decoder blocks; correct num_blocks.{model} or remove it"
        )
    return counted


def calibration_settings(calib):
    """Settings of a calibration tag such as c4-sample_n32_l512_seed0, as the rules need them."""
    if calib not in CALIBRATIONS:
        raise ValueError(f"unknown calibration setting {calib!r}; this config defines {', '.join(CALIBRATIONS)}")
    calibration = CALIBRATIONS[calib]
    return {
        "dataset": calibration.dataset,
        "nsamples": calibration.nsamples,
        "seqlen": calibration.seqlen,
        "seed": calibration.seed,
    }


def embeddings_dir(wildcards):
    return f"{RESULTS}/{wildcards.model}/{wildcards.calib}/embeddings"


def stream_run(wildcards):
    """(method, target) whose activations calibrate this run: itself, or dense ones under dense propagation."""
    if PRUNING["propagation"] == "dense":
        return "dense", "dense"
    return wildcards.method, wildcards.target


def hessian_for_pruning(wildcards):
    method, target = stream_run(wildcards)
    return f"{run_dir(wildcards, method, target)}/hessians/{block_file(wildcards.block)}.safetensors"


def pruned_blocks(wildcards, suffix):
    if wildcards.method == "dense":
        return []
    return [
        f"{run_dir(wildcards)}/pruned/{block_file(block)}.{suffix}"
        for block in range(num_blocks(wildcards.model))
    ]


def checkpoint_dir(model, method, target, calib=CALIBRATION):
    return f"{RESULTS}/{model}/{calib}/{method}/{target}/checkpoint"


def log_file(rule_name, pattern):
    return f"{RESULTS}/logs/{rule_name}/{pattern}.log"


def benchmark_file(rule_name, pattern):
    return f"{RESULTS}/benchmarks/{rule_name}/{pattern}.tsv"


RUN_PATTERN = "{model}/{calib}/{method}/{target}"


# Resource requests. A local run uses them only under --resources limits; the SLURM executor passes
# them to sbatch (mem_mb as --mem, in MiB). Memory is estimated from the imported model. Snakemake
# (9.27) evaluates these functions when a job is about to start, so every job after the import sees
# the imported checkpoint; a dry run evaluates them up front and shows the fallback.
PROCESS_MEM_MB = 1024  # Python with torch and transformers imported, before any tensor is loaded
FALLBACK_MEM_MB = 8000  # when the model's size is not known yet
# GPU rules request one GPU per job when the config puts the work on CUDA (device: cuda or cuda:N).
GPUS_PER_JOB = 1 if DEVICE.startswith("cuda") else 0


def _mebibytes(size_bytes):
    return -(-int(size_bytes) // (1024 * 1024))


def _weight_bytes(model):
    """Size in bytes of the model's float32 weights: the imported checkpoint, else a local folder spec, else None."""
    import json
    from pathlib import Path

    for folder in (Path(model_dir(model)), Path(str(config["models"][model]))):
        files = [*folder.glob("*.safetensors"), *folder.glob("*.bin")] if folder.is_dir() else []
        if not files:
            continue
        size = sum(path.stat().st_size for path in files)
        config_file = folder / "config.json"
        model_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        stored = model_config.get("dtype") or model_config.get("torch_dtype")
        # A float16 or bfloat16 checkpoint doubles in size when it is imported as float32.
        return size * 2 if stored in ("float16", "bfloat16") else size
    return None


def _block_plan(model, calib):
    """rose.planning's sizes of one block's jobs, or None before the model is imported."""
    import json
    from pathlib import Path

    from rose import planning

    config_file = Path(model_dir(model)) / "config.json"
    model_bytes = _weight_bytes(model)
    if model_bytes is None or not config_file.is_file():
        return None
    settings = calibration_settings(calib)
    dtype_bytes = 4 if config["activation_dtype"] in ("float32", "auto") else 2
    return planning.estimate_block_plan(
        json.loads(config_file.read_text()), model_bytes, settings["nsamples"], settings["seqlen"], dtype_bytes
    )


def block_mem_mb(wildcards):
    """mem_mb of a hessian or prune_block job, from rose.planning's estimate of one block's job."""
    plan = _block_plan(wildcards.model, wildcards.calib)
    if plan is None:
        return FALLBACK_MEM_MB
    # Writing the output activations serialises them once more; a quarter on top is allocator slack.
    return PROCESS_MEM_MB + _mebibytes(1.25 * max(plan.hessian_job + plan.activations, plan.prune_job))


def model_mem_mb(wildcards):
    """mem_mb of a job that loads the whole model: import, capture, assembly, perplexity, zero-shot.

    Up to three copies of the weights: the loaded model, the tensors being read or written, and
    the serialised file or the logits. Jobs of one calibration setting add two copies of its block
    activations, which capture holds and serialises.
    """
    model_bytes = _weight_bytes(wildcards.model)
    if model_bytes is None:
        # NOTE: importing a hub model or a GGUF file requests this fixed amount; a model larger
        # than about 2 GB of float32 weights needs --set-resources import_model:mem_mb=... on SLURM.
        return FALLBACK_MEM_MB
    plan = _block_plan(wildcards.model, wildcards.calib) if "calib" in wildcards.keys() else None
    return PROCESS_MEM_MB + _mebibytes(3 * model_bytes + 2 * (plan.activations if plan else 0))


check_resources()
