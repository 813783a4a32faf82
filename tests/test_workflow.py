"""The Snakemake workflow end to end on a tiny model: outputs, DAG shape, refusals, resumption."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import REPO, build_tiny_llama, snakemake, tiny_config

CALIBRATION = "corpus.txt_n4_l32_seed0"


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    counts = {}
    for line in dry_run_output.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match:
            counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model, corpus_file) -> Path:
    workdir = write_config(tmp_path_factory.mktemp("workflow"), tiny_config(tiny_model, corpus_file))
    snakemake(workdir)
    return workdir


def test_summary_has_one_row_per_run(finished_run):
    table = pd.read_csv(finished_run / "results" / "summary.csv")
    assert sorted(zip(table["method"], table["sparsity"])) == [("dense", 0.0), ("rose", 0.5), ("sparsegpt", 0.5)]
    assert (table["windows"] == 8).all()
    assert table["perplexity"].notna().all()
    pruned = table[table["method"] != "dense"]
    assert ((pruned["sparsity_reached"] - 0.5).abs() < 0.01).all()
    assert (finished_run / "results" / "figures" / "perplexity_vs_sparsity.png").stat().st_size > 10_000


def test_checkpoint_loads_with_from_pretrained(finished_run):
    checkpoint = finished_run / "results" / "tiny" / CALIBRATION / "rose" / "unstructured-0.5" / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    report = json.loads((checkpoint / "sparsity.json").read_text())
    q_proj = model.model.layers[1].self_attn.q_proj.weight
    assert float((q_proj == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
    assert report["layers"]["model.layers.1.self_attn.q_proj.weight"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert report["overall"] == pytest.approx(0.5, abs=1e-3)
    # The embeddings stay tied and unpruned.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_block_statistics_recorded(finished_run):
    stats_file = finished_run / "results" / "tiny" / CALIBRATION / "rose" / "unstructured-0.5" / "pruned" / "block_000.json"
    record = json.loads(stats_file.read_text())
    sublayers = {item["sublayer"]: item for item in record["sublayers"]}
    assert set(sublayers) == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    }
    for item in sublayers.values():
        assert item["sparsity"] == pytest.approx(0.5, abs=1e-6)
        assert 0 <= item["relative_error"] < 1
        assert item["seconds"] > 0
        assert isinstance(item["reordered"], bool)
        assert item["relative_range"] is not None


def test_every_rule_logs_and_benchmarks(finished_run):
    logs = {path.parts[0] for path in (finished_run / "results" / "logs").rglob("*.log") for path in [path.relative_to(finished_run / "results" / "logs")]}
    benchmarks = {path.relative_to(finished_run / "results" / "benchmarks").parts[0] for path in (finished_run / "results" / "benchmarks").rglob("*.tsv")}
    expected = {
        "import_model", "calibrate", "capture_block_inputs", "hessian", "prune_block", "assemble_checkpoint", "perplexity", "summary",
        "figure_error_curve", "figure_columnar", "figure_reordering", "figure_layer_error", "figure_stage_costs", "tables",
    }
    assert logs == expected
    assert benchmarks == expected


def test_rerun_finished_workflow_does_nothing(finished_run):
    result = snakemake(finished_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_dry_run_lists_jobs_per_block(tmp_path, tiny_model, corpus_file):
    config = tiny_config(tiny_model, corpus_file, sparsities=[0.5, 0.7])
    result = snakemake(write_config(tmp_path, config), "-n")
    counts = job_counts(result.stdout)
    pruned_runs, blocks = 4, 2
    assert counts["hessian"] == pruned_runs * blocks
    assert counts["prune_block"] == pruned_runs * blocks
    assert counts["perplexity"] == pruned_runs + 1


def test_dense_propagation_shares_hessians(tmp_path, tiny_model, corpus_file):
    config = tiny_config(tiny_model, corpus_file, sparsities=[0.5, 0.7])
    config["pruning"]["propagation"] = "dense"
    counts = job_counts(snakemake(write_config(tmp_path, config), "-n").stdout)
    assert counts["hessian"] == 2  # one per block, shared by the 4 pruned runs
    assert counts["prune_block"] == 4 * 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sparsitys": [0.5]}, "unknown config key(s) 'sparsitys'"),
        ({"methods": ["dense", "sparsegtp"]}, "'sparsegtp' is not one of"),
        ({"sparsities": [1.5]}, "1.5 is greater than or equal to the maximum of 1"),
        ({"models": {"tiny": "/no/such/folder"}}, "model path '/no/such/folder' does not exist"),
        ({"zeroshot": {"tasks": ["boolqq"]}}, "unknown zero-shot task(s) 'boolqq'; available tasks: boolq, piqa"),
    ],
)
def test_snakemake_rejects_bad_config_before_compute(tmp_path, tiny_model, corpus_file, change, message):
    config = {**tiny_config(tiny_model, corpus_file), **change}
    result = snakemake(write_config(tmp_path, config), check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "resources").exists()


def _interrupt_during_block(workdir: Path, block: int, sig: int) -> None:
    """Start the workflow and send ``sig`` once the hessian job of ``block`` has started.

    That job starts only after Snakemake has recorded the previous block's pruning as finished.
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", "1",
    ]
    marker = workdir / "results" / "logs" / "hessian" / "tiny" / CALIBRATION / "sparsegpt" / "unstructured-0.5" / f"block_{block:03d}.log"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, "the workflow ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting for the block to finish"
        time.sleep(0.2)
    os.killpg(process.pid, sig)
    process.wait(timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_without_recomputing(tmp_path_factory, corpus_file, sig):
    model = build_tiny_llama(tmp_path_factory.mktemp("deep") / "tiny-llama", corpus_file, layers=4)
    config = tiny_config(model, corpus_file, methods=["sparsegpt"])
    workdir = write_config(tmp_path_factory.mktemp("resume"), config)
    _interrupt_during_block(workdir, 2, sig)

    run = workdir / "results" / "tiny" / CALIBRATION / "sparsegpt" / "unstructured-0.5"
    finished = [run / "pruned" / f"block_{b:03d}.{suffix}" for b in (0, 1) for suffix in ("json", "safetensors")]
    finished += [run / "hessians" / f"block_{b:03d}.safetensors" for b in (0, 1)]
    before = {path: path.stat().st_mtime_ns for path in finished}

    if sig == signal.SIGKILL:
        snakemake(workdir, "--unlock")  # a killed Snakemake cannot remove its lock
    snakemake(workdir, "--rerun-incomplete")
    assert {path: path.stat().st_mtime_ns for path in finished} == before
    assert (run / "pruned" / "block_003.json").exists()
    assert (workdir / "results" / "summary.csv").exists()

    # The resumed result equals an uninterrupted run bit for bit.
    reference = write_config(tmp_path_factory.mktemp("reference"), config)
    snakemake(reference)
    resumed = AutoModelForCausalLM.from_pretrained(str(run / "checkpoint")).state_dict()
    uninterrupted = AutoModelForCausalLM.from_pretrained(
        str(reference / "results" / "tiny" / CALIBRATION / "sparsegpt" / "unstructured-0.5" / "checkpoint")
    ).state_dict()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
