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
    return count_blocks(config["models"][model], model_dir(model))


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


check_resources()
