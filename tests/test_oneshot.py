"""`rose prune` prunes a whole model in one process, with the stage functions of the workflow."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rose.cli import main


def test_rose_prune_writes_loadable_checkpoint(tmp_path, tiny_model, corpus_file):
    out = tmp_path / "pruned"
    status = main([
        "--threads", "1", "prune", "--model", str(tiny_model), "--out", str(out), "--method", "rose",
        "--sparsity", "0.5", "--calibration", str(corpus_file), "--nsamples", "4", "--seqlen", "32",
        "--block-size", "32", "--device", "cpu",
    ])
    assert status == 0
    model = AutoModelForCausalLM.from_pretrained(str(out))
    report = json.loads((out / "sparsity.json").read_text())
    assert report["overall"] == pytest.approx(0.5, abs=1e-3)
    assert float((model.model.layers[0].mlp.down_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
    assert not (tmp_path / "pruned.work").exists()


def test_rose_prune_rejects_unknown_method(tmp_path, tiny_model, caplog):
    status = main(["prune", "--model", str(tiny_model), "--out", str(tmp_path / "x"), "--method", "sparsegtp", "--sparsity", "0.5"])
    assert status == 1
    assert "unknown pruning method 'sparsegtp'" in caplog.text
    assert not (tmp_path / "x").exists()


def test_rose_prune_rejects_missing_model(tmp_path, caplog):
    status = main(["prune", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--method", "rose", "--sparsity", "0.5"])
    assert status == 1
    assert "does not exist" in caplog.text
