"""Memory and disk estimates stop a run before it allocates or writes what does not fit."""

from __future__ import annotations

import pytest

from rose import planning

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30}
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32}


def test_activation_estimate_is_product():
    assert planning.activation_bytes(32, 512, 576, 4) == 32 * 512 * 576 * 4


def test_block_plan_for_smollm2():
    plan = planning.estimate_block_plan(SMOLLM2, model_bytes=30 * 1000, nsamples=32, seqlen=512, dtype_bytes=4)
    assert plan.activations == 37_748_736
    assert plan.block_weights == 1000
    assert plan.hessians == 4 * (3 * (576 * 576 + 576) + 1536 * 1536 + 1536)


def test_memory_limit_names_estimate_and_knob():
    # 2 × 4 GiB of activations + 2 × 13/32 GiB of block weights + 0.64 GiB of Hessians.
    plan = planning.estimate_block_plan(LLAMA_7B, 13 * planning.GIB, nsamples=128, seqlen=2048, dtype_bytes=4)
    with pytest.raises(planning.ResourceError, match=r"one block job needs an estimated 9\.45 GiB.*configured limit of 4\.00 GiB.*nsamples"):
        planning.check_run_fits(plan, 32, 13 * planning.GIB, 1, True, "/", max_memory_bytes=4 * planning.GIB)


def test_disk_shortage_names_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(planning.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10 * planning.MIB})())
    with pytest.raises(planning.ResourceError, match=r"needs an estimated 1\.00 GiB of disk.*only 0\.01 GiB are free"):
        planning.check_disk(tmp_path / "not" / "yet", planning.GIB, "the test", "free space")


def test_small_run_fits(tmp_path):
    plan = planning.estimate_block_plan(SMOLLM2, 538 * planning.MIB, nsamples=4, seqlen=32, dtype_bytes=4)
    planning.check_run_fits(plan, 30, 538 * planning.MIB, 1, False, tmp_path)
