"""Files are written atomically and verified on read."""

from __future__ import annotations

import pytest
import torch

from rose.io import IntegrityError, atomic_path, load_tensors, save_tensors


def test_tensors_round_trip_with_record(tmp_path):
    path = tmp_path / "block.safetensors"
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, 2).to(torch.bfloat16)}
    save_tensors(path, tensors, {"block": 3})
    loaded, record = load_tensors(path)
    assert record["block"] == 3
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


def test_truncated_file_names_file_and_fix(tmp_path):
    path = tmp_path / "inputs.safetensors"
    save_tensors(path, {"hidden_states": torch.randn(64, 64)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match=r"inputs\.safetensors.*delete it and rerun"):
        load_tensors(path)


def test_flipped_byte_fails_checksum(tmp_path):
    path = tmp_path / "hessians.safetensors"
    save_tensors(path, {"hessian/x": torch.ones(16, 16)})
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="checksum mismatch for tensor 'hessian/x'"):
        load_tensors(path)


def test_failed_write_leaves_no_output(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as staged:
            staged.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_file_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="file not found"):
        load_tensors(tmp_path / "absent.safetensors")
