"""The workflow on a real one-node SLURM cluster, through snakemake-executor-plugin-slurm and the
slurm profile, compared with a local run. Also the DAG shape that lets a cluster run every block's
pruning job at once.

The cluster tests (marker ``slurm``, run by ``make test-slurm``) start munged, slurmctld and slurmd
on this machine with .ci/slurm-up, which needs root, and stop them with .ci/slurm-down.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, snakemake, tiny_config
from test_workflow import job_counts, write_config

CALIBRATION = "corpus.txt_n4_l32_seed0"
PRUNED_RUN = Path("results") / "tiny" / CALIBRATION / "sparsegpt" / "unstructured-0.5"
# The pipeline's rules, each of which must run as a SLURM job.
PIPELINE_RULES = {
    "import_model", "calibrate", "capture_block_inputs", "hessian", "prune_block",
    "assemble_checkpoint", "perplexity", "summary",
}
# Matches the plugin's (2.8) line for each sbatch submission, whose log path names the rule.
SUBMISSION = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+/rule_(\w+)/\S*?)\)")
# common.smk's memory requests: Python's own share, and the request while the model's size is unknown.
PROCESS_MEM_MB = 1024
FALLBACK_MEM_MB = 8000


def workflow_environment() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, so that jobs find `rose` (sbatch exports PATH)."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def slurm_command(workdir: Path) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
        # The test cluster has no accounting database, so squeue reports job states; its
        # MinJobAge of 600 s keeps ended jobs listed.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        # The SLURM logs of successful jobs stay, as evidence that the jobs ran under SLURM.
        "--slurm-keep-successful-logs",
    ]


@dataclass(frozen=True)
class SlurmJob:
    state: str
    comment: str
    mem_mb: int


def slurm_jobs() -> dict[str, SlurmJob]:
    """Every job slurmctld still lists, ended ones included: {job id: job}."""
    listing = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i|%T|%k|%m"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    jobs = {}
    for line in listing.splitlines():
        job_id, state, comment, memory = line.strip().split("|")
        scale = 1024 if memory.endswith("G") else 1
        jobs[job_id] = SlurmJob(state, comment, int(float(memory.rstrip("MG")) * scale))
    return jobs


def submissions(output: str) -> dict[str, list[tuple[str, Path]]]:
    """Parse the sbatch submissions in Snakemake's output: {rule: [(SLURM job id, SLURM log)]}."""
    found = defaultdict(list)
    for job_id, log, rule in SUBMISSION.findall(output):
        found[rule].append((job_id, Path(log)))
    return found


def cancel_running_block_job(block: int, process: subprocess.Popen, timeout_seconds: int = 300) -> str:
    """Wait for a hessian or prune_block job of ``block`` to run under SLURM, scancel it, return its id."""
    suffix = f"_{block:03d}"
    deadline = time.monotonic() + timeout_seconds
    while True:
        for job_id, job in slurm_jobs().items():
            is_block_job = job.comment.startswith(("rule_hessian_", "rule_prune_block_")) and job.comment.endswith(suffix)
            if is_block_job and job.state == "RUNNING":
                subprocess.run(["scancel", job_id], check=True, timeout=30)
                return job_id
        assert process.poll() is None, f"the workflow ended before a job of block {block} could be cancelled"
        assert time.monotonic() < deadline, f"no job of block {block} ran within {timeout_seconds} s"
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def slurm_cluster():
    started = subprocess.run([str(REPO / ".ci" / "slurm-up")], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        subprocess.run([str(REPO / ".ci" / "slurm-down")], capture_output=True, timeout=120)
        pytest.fail(
            f".ci/slurm-up failed with exit status {started.returncode}:\n{started.stdout}\n{started.stderr}",
            pytrace=False,
        )
    yield
    stopped = subprocess.run([str(REPO / ".ci" / "slurm-down")], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, f".ci/slurm-down failed:\n{stopped.stdout}\n{stopped.stderr}"


@dataclass
class InterruptedRun:
    workdir: Path
    planned: dict[str, int]  # jobs per rule in a dry run before the first run
    cancelled_job: str
    cancelled_state: str
    first_returncode: int
    first_output: str
    finished_before: dict[Path, int]  # block files present after the failed run: {path: mtime in ns}
    second: subprocess.CompletedProcess
    jobs: dict[str, SlurmJob]  # squeue's listing after the second run


@pytest.fixture(scope="module")
def tiny_slurm_config(tiny_model, corpus_file) -> dict:
    return tiny_config(tiny_model, corpus_file, methods=["dense", "sparsegpt"])


@pytest.fixture(scope="module")
def interrupted_slurm_run(slurm_cluster, tmp_path_factory, tiny_slurm_config) -> InterruptedRun:
    """Run the workflow under SLURM, scancel a running job of block 1, then run the same command again."""
    workdir = write_config(tmp_path_factory.mktemp("slurm"), tiny_slurm_config)
    planned = job_counts(snakemake(workdir, "-n").stdout)
    planned.pop("total")
    first_log = workdir / "first-run.log"
    with first_log.open("w") as output:
        process = subprocess.Popen(
            slurm_command(workdir), stdout=output, stderr=subprocess.STDOUT,
            env=workflow_environment(), start_new_session=True,
        )
        try:
            marker = workdir / PRUNED_RUN / "pruned" / "block_000.json"
            deadline = time.monotonic() + 600
            while not marker.exists():
                assert process.poll() is None, f"the workflow ended before block 0 was pruned:\n{first_log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "block 0 was not pruned within 600 s"
                time.sleep(0.5)
            cancelled_job = cancel_running_block_job(1, process)
            first_returncode = process.wait(timeout=600)
        finally:
            stop_process_group(process)

    finished_before = {
        path: path.stat().st_mtime_ns
        for folder in ("pruned", "hessians")
        for path in sorted((workdir / PRUNED_RUN / folder).glob("block_*"))
    }
    second = subprocess.run(slurm_command(workdir), capture_output=True, text=True, timeout=900, env=workflow_environment())
    jobs = slurm_jobs()
    return InterruptedRun(
        workdir, planned, cancelled_job, jobs[cancelled_job].state, first_returncode, first_log.read_text(),
        finished_before, second, jobs,
    )


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_slurm_config) -> Path:
    workdir = write_config(tmp_path_factory.mktemp("local"), tiny_slurm_config)
    snakemake(workdir)
    return workdir


@pytest.mark.slurm
def test_cancelled_job_fails_run(interrupted_slurm_run):
    assert interrupted_slurm_run.cancelled_state == "CANCELLED"
    assert interrupted_slurm_run.first_returncode != 0
    assert f"SLURM-job '{interrupted_slurm_run.cancelled_job}' failed" in interrupted_slurm_run.first_output


@pytest.mark.slurm
def test_rerun_keeps_finished_blocks(interrupted_slurm_run):
    run = interrupted_slurm_run
    output = run.second.stdout + run.second.stderr
    assert run.second.returncode == 0, output[-6000:]

    pruned = run.workdir / PRUNED_RUN / "pruned"
    assert pruned / "block_000.json" in run.finished_before
    assert pruned / "block_000.safetensors" in run.finished_before
    after = {path: path.stat().st_mtime_ns for path in run.finished_before}
    assert after == run.finished_before

    rerun_submissions = submissions(output)
    # A block job's SLURM log folder is named after its wildcards, which end in the block number.
    rerun_block_jobs = [log.parent.name for _, log in rerun_submissions["hessian"] + rerun_submissions["prune_block"]]
    assert rerun_block_jobs, "the rerun submitted no block job"
    assert not [name for name in rerun_block_jobs if name.endswith("_000")]
    assert (pruned / "block_001.safetensors").exists()
    assert (run.workdir / "results" / "summary.csv").exists()


@pytest.mark.slurm
def test_every_job_ran_under_slurm(interrupted_slurm_run):
    run = interrupted_slurm_run
    output = run.first_output + run.second.stdout + run.second.stderr
    submitted = submissions(run.first_output)
    for rule, jobs in submissions(run.second.stdout + run.second.stderr).items():
        submitted[rule].extend(jobs)
    assert PIPELINE_RULES <= set(submitted)

    # Each planned job ran once under SLURM, the cancelled one twice; `all` runs in Snakemake itself.
    local_rules = set(re.findall(r"^localrule (\w+):", output, flags=re.MULTILINE))
    cancelled_rule = next(rule for rule, jobs in submitted.items() for job_id, _ in jobs if job_id == run.cancelled_job)
    expected = {rule: count + (rule == cancelled_rule) for rule, count in run.planned.items() if rule not in local_rules}
    assert {rule: len(jobs) for rule, jobs in submitted.items()} == expected
    assert local_rules == {"all"}

    for rule, jobs in submitted.items():
        for job_id, log in jobs:
            assert log.is_file(), f"no SLURM log for {rule} job {job_id}"
            assert job_id in run.jobs, f"squeue does not list {rule} job {job_id}"
            expected_state = "CANCELLED" if job_id == run.cancelled_job else "COMPLETED"
            assert run.jobs[job_id].state == expected_state, f"{rule} job {job_id}"
            assert run.jobs[job_id].comment.startswith(f"rule_{rule}")


@pytest.mark.slurm
def test_memory_requests_come_from_model(interrupted_slurm_run):
    """Block and whole-model jobs request memory estimated from the imported tiny model, not the fallback."""
    submitted = submissions(interrupted_slurm_run.first_output)
    for rule in ("hessian", "prune_block", "capture_block_inputs", "assemble_checkpoint", "perplexity"):
        for job_id, _ in submitted[rule]:
            mem_mb = interrupted_slurm_run.jobs[job_id].mem_mb
            assert PROCESS_MEM_MB < mem_mb < FALLBACK_MEM_MB, f"{rule} job {job_id} requested {mem_mb} MB"


@pytest.mark.slurm
def test_slurm_outputs_equal_local_run(interrupted_slurm_run, local_run):
    slurm_results = interrupted_slurm_run.workdir / "results"
    local_results = local_run / "results"
    checkpoints = sorted(path.relative_to(local_results) for path in local_results.glob(f"tiny/{CALIBRATION}/*/*/checkpoint"))
    assert len(checkpoints) == 2

    for checkpoint in checkpoints:
        files = sorted(path.name for path in (local_results / checkpoint).glob("*.safetensors"))
        assert files
        for name in files:
            local_tensors = load_file(local_results / checkpoint / name)
            slurm_tensors = load_file(slurm_results / checkpoint / name)
            assert slurm_tensors.keys() == local_tensors.keys(), checkpoint / name
            for key, tensor in local_tensors.items():
                assert torch.equal(slurm_tensors[key], tensor), f"{checkpoint / name}: {key}"

    columns = ["method", "sparsity", "dataset", "perplexity", "windows"]
    local_table = pd.read_csv(local_results / "summary.csv")[columns].sort_values(["method", "sparsity"], ignore_index=True)
    slurm_table = pd.read_csv(slurm_results / "summary.csv")[columns].sort_values(["method", "sparsity"], ignore_index=True)
    pd.testing.assert_frame_equal(slurm_table, local_table, check_exact=True)


@pytest.mark.slurm
def test_cuda_device_requests_gpus(slurm_cluster, tmp_path, tiny_model, corpus_file):
    """With device: cuda, capture_block_inputs requests a GPU, and import_model and calibrate do not.

    The test node has no GPU, so sbatch rejects a GPU request and accepts every other job.
    """
    config = tiny_config(tiny_model, corpus_file, methods=["dense", "sparsegpt"], device="cuda")
    workdir = write_config(tmp_path, config)
    result = subprocess.run(
        [*slurm_command(workdir), "--until", "capture_block_inputs"],
        capture_output=True, text=True, timeout=600, env=workflow_environment(),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-6000:]

    jobs = slurm_jobs()
    submitted = submissions(output)
    for rule in ("import_model", "calibrate"):
        assert len(submitted[rule]) == 1, f"{rule} was not submitted:\n{output[-6000:]}"
        job_id, _ = submitted[rule][0]
        assert jobs[job_id].state == "COMPLETED", f"{rule} job {job_id}"

    rejected_calls = [line for line in output.splitlines() if line.strip().startswith("sbatch --parsable")]
    assert len(rejected_calls) == 1, output[-6000:]
    assert "Invalid generic resource" in output
    assert "--comment rule_capture_block_inputs_" in rejected_calls[0]
    assert "--gpus=1" in rejected_calls[0]
    assert not submitted["capture_block_inputs"]


def dag_edges(dot: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Parse `snakemake --dag` output into {node: rule} and {node: nodes it depends on directly}."""
    rules = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)', dot, flags=re.MULTILINE))
    inputs = defaultdict(set)
    for source, target in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.MULTILINE):
        inputs[target].add(source)
    return rules, inputs


def ancestors(node: str, inputs: dict[str, set[str]]) -> set[str]:
    found, pending = set(), [node]
    while pending:
        for parent in inputs[pending.pop()] - found:
            found.add(parent)
            pending.append(parent)
    return found


def test_dense_propagation_prune_jobs_independent(tmp_path, tiny_model, corpus_file):
    """Under dense propagation every prune_block job needs only Hessians, so all can run at once."""
    config = tiny_config(tiny_model, corpus_file, methods=["dense", "sparsegpt", "rose"], sparsities=[0.5, 0.7])
    config["pruning"]["propagation"] = "dense"
    rules, inputs = dag_edges(snakemake(write_config(tmp_path, config), "--dag").stdout)

    blocks, pruned_runs = 2, 4
    prune_jobs = [node for node, rule in rules.items() if rule == "prune_block"]
    hessian_jobs = [node for node, rule in rules.items() if rule == "hessian"]
    assert len(prune_jobs) == blocks * pruned_runs
    assert len(hessian_jobs) == blocks

    before_hessians = {"import_model", "calibrate", "capture_block_inputs", "hessian"}
    for node in prune_jobs:
        upstream = {rules[parent] for parent in ancestors(node, inputs)}
        assert upstream <= before_hessians, f"prune_block job {node} waits for {sorted(upstream - before_hessians)}"
    for node in hessian_jobs:
        assert "prune_block" not in {rules[parent] for parent in ancestors(node, inputs)}
