"""Faults lose nothing: killed writers, numerical faults, and parameter changes that rerun only what they affect."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import snakemake, tiny_config
from rose import pipeline
from rose.evaluate import perplexity
from rose.io import IntegrityError, load_object, load_tensors, save_object, save_tensors
from test_workflow import job_counts, write_config


def _block0_files(tmp_path: Path, tiny_model: Path, corpus_file: Path) -> dict[str, Path]:
    files = {name: tmp_path / name for name in ("tokens.safetensors", "inputs.safetensors", "kwargs.pt", "hessians.safetensors")}
    pipeline.calibrate(tiny_model, str(corpus_file), 4, 32, 0, files["tokens.safetensors"])
    pipeline.capture(tiny_model, files["tokens.safetensors"], files["inputs.safetensors"], files["kwargs.pt"], "cpu", "float32")
    pipeline.hessians(tiny_model, 0, files["inputs.safetensors"], files["kwargs.pt"], files["hessians.safetensors"], "cpu")
    return files


def test_killed_prune_job_leaves_nothing_accepted(tmp_path, tiny_model, corpus_file):
    files = _block0_files(tmp_path, tiny_model, corpus_file)
    out = tmp_path / "out"
    out.mkdir()
    command = [
        sys.executable, "-m", "rose", "--threads", "1", "prune-block", "--model", str(tiny_model), "--block", "0",
        "--hessians", str(files["hessians.safetensors"]), "--method", "rose", "--sparsity", "0.5", "--block-size", "32",
        "--out-weights", str(out / "block.safetensors"), "--out-stats", str(out / "block.json"), "--device", "cpu",
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    duration = time.monotonic() - started
    (out / "block.safetensors").unlink()
    (out / "block.json").unlink()

    # Kill at several points of the job's life, the last ones close to the final writes.
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.95):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        process.send_signal(signal.SIGKILL)
        process.wait()
        weights = out / "block.safetensors"
        if weights.exists():
            load_tensors(weights)  # a file under the final name is complete and verified
            weights.unlink()
        (out / "block.json").unlink(missing_ok=True)
        leftovers = [path.name for path in out.iterdir() if not path.name.startswith(".")]
        assert leftovers == []


def test_nan_activations_reported_with_block_and_sublayer(tmp_path, tiny_model, corpus_file):
    files = _block0_files(tmp_path, tiny_model, corpus_file)
    inputs = load_tensors(files["inputs.safetensors"])[0]["hidden_states"]
    inputs[1, 3, 5] = float("nan")
    save_tensors(files["inputs.safetensors"], {"hidden_states": inputs})
    with pytest.raises(FloatingPointError, match=r"block 0 Hessian of self_attn\.q_proj contains \d+ NaN or inf"):
        pipeline.hessians(tiny_model, 0, files["inputs.safetensors"], files["kwargs.pt"], tmp_path / "h.safetensors", "cpu")
    assert not (tmp_path / "h.safetensors").exists()


def test_corrupt_hessian_file_names_rule(tmp_path, tiny_model, corpus_file):
    files = _block0_files(tmp_path, tiny_model, corpus_file)
    raw = bytearray(files["hessians.safetensors"].read_bytes())
    raw[-8] ^= 0x55
    files["hessians.safetensors"].write_bytes(bytes(raw))
    settings = pipeline.PruneSettings("rose", "unstructured", 0.5, 32)
    with pytest.raises(IntegrityError, match=r"hessians\.safetensors: checksum mismatch.*rerun"):
        pipeline.prune(tiny_model, 0, files["hessians.safetensors"], settings, tmp_path / "w.safetensors", tmp_path / "w.json", "cpu")
    assert not (tmp_path / "w.safetensors").exists()


def test_nan_perplexity_reported_as_nan(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    result = perplexity(model, torch.arange(200) % 250, seqlen=32)
    assert math.isnan(result.perplexity)
    assert result.windows == 6


def test_kwargs_record_round_trips(tmp_path):
    record = {"position_ids": torch.arange(4)[None], "attention_mask": None, "use_cache": False,
              "position_embeddings": (torch.ones(1, 4, 2), torch.zeros(1, 4, 2))}
    save_object(tmp_path / "kwargs.pt", record)
    loaded = load_object(tmp_path / "kwargs.pt")
    assert torch.equal(loaded["position_ids"], record["position_ids"])
    assert loaded["attention_mask"] is None
    assert torch.equal(loaded["position_embeddings"][0], record["position_embeddings"][0])


@pytest.fixture(scope="module")
def finished_sparsegpt_run(tmp_path_factory, tiny_model, corpus_file) -> Path:
    config = tiny_config(tiny_model, corpus_file, methods=["dense", "sparsegpt"])
    workdir = write_config(tmp_path_factory.mktemp("params"), config)
    snakemake(workdir)
    return workdir


def _with_change(workdir: Path, section: str, key: str, value) -> None:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    if section:
        config[section][key] = value
    else:
        config[key] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_damping_change_reruns_only_pruning(finished_sparsegpt_run, tmp_path):
    workdir = write_config(tmp_path, yaml.safe_load((finished_sparsegpt_run / "config.yaml").read_text()))
    os.symlink(finished_sparsegpt_run / "results", workdir / "results")
    os.symlink(finished_sparsegpt_run / "resources", workdir / "resources")
    os.symlink(finished_sparsegpt_run / ".snakemake", workdir / ".snakemake")
    _with_change(workdir, "pruning", "damping", 0.05)
    counts = job_counts(snakemake(workdir, "-n").stdout)
    assert counts["prune_block"] == 2  # both blocks of the one pruned run
    assert counts["hessian"] == 1  # block 1 gets new pruned outputs of block 0, and block 0 is unchanged
    assert counts["perplexity"] == 1
    for unaffected in ("import_model", "calibrate", "capture_block_inputs"):
        assert unaffected not in counts


def test_new_sparsity_adds_only_its_run(finished_sparsegpt_run, tmp_path):
    workdir = write_config(tmp_path, yaml.safe_load((finished_sparsegpt_run / "config.yaml").read_text()))
    for name in ("results", "resources", ".snakemake"):
        os.symlink(finished_sparsegpt_run / name, workdir / name)
    _with_change(workdir, "", "sparsities", [0.5, 0.7])
    counts = job_counts(snakemake(workdir, "-n").stdout)
    assert counts["prune_block"] == 2
    assert counts["hessian"] == 2
    assert counts["perplexity"] == 1  # the new run only; the dense and 0.5 results are kept
    assert "calibrate" not in counts
