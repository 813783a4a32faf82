"""Atomic, verified files: every output appears complete or not at all, and is checked on read."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

# Metadata key holding the JSON record of a tensor file (checksums, provenance, caller fields).
METADATA_KEY = "rose"


class IntegrityError(RuntimeError):
    """A file on disk is truncated, corrupt, or does not match its header."""


def _corrupt(path: Path, reason: str) -> IntegrityError:
    return IntegrityError(
        f"{path}: {reason}. The file is corrupt or incomplete: delete it and rerun the workflow "
        "(snakemake --rerun-incomplete reruns the rule that writes it)"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and for directories. The temporary name lives in the same folder, so the
    final rename is atomic and a killed process leaves at most a hidden ``.tmp`` leftover.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = temporary / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_json(path: str | os.PathLike, record: object) -> None:
    with atomic_path(path) as staged:
        staged.write_text(json.dumps(record, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def read_json(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise _corrupt(Path(path), f"invalid JSON ({error})") from error


def tensor_sha256(tensor: torch.Tensor) -> str:
    raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy()).hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], record: dict | None = None) -> None:
    """Write ``tensors`` to a safetensors file with each tensor's sha256 and ``record`` in its header."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header = dict(record or {})
    header["sha256"] = {name: tensor_sha256(t) for name, t in tensors.items()}
    with atomic_path(path) as staged:
        save_file(tensors, str(staged), metadata={"format": "pt", METADATA_KEY: json.dumps(header, default=_json_default)})


def load_tensors(
    path: str | os.PathLike, names: list[str] | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors (all, or ``names``) and the header record, verifying every checksum read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; rerun the workflow to produce it")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
            requested = list(handle.keys()) if names is None else names
            tensors = {name: handle.get_tensor(name) for name in requested}
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt(path, f"unreadable safetensors file ({error})") from error
    checksums = header.get("sha256", {})
    for name, tensor in tensors.items():
        if name not in checksums:
            raise _corrupt(path, f"no checksum recorded for tensor {name!r}")
        if tensor_sha256(tensor) != checksums[name]:
            raise _corrupt(path, f"checksum mismatch for tensor {name!r}")
    return {name: t.to(device) for name, t in tensors.items()}, header


def file_digest(path: str | os.PathLike) -> str:
    """Compute a sha256 identifying a file's content, for provenance records.

    For a tensor file written by `save_tensors` the digest comes from the per-tensor checksums
    in the header, so no tensor data is read. Any other file is hashed byte by byte.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                checksums = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}")).get("sha256")
        except (SafetensorError, OSError, ValueError):
            checksums = None
        if checksums:
            return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_object(path: str | os.PathLike, value: object) -> None:
    """torch.save through a temporary file; for small records of tensors and plain values."""
    with atomic_path(path) as staged:
        torch.save(value, staged)


def load_object(path: str | os.PathLike) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several unrelated types for damaged pickles
        raise _corrupt(Path(path), f"unreadable torch file ({error})") from error
