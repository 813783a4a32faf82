"""`rose prune`: the whole pipeline in one process, without Snakemake.

It calls the same stage functions as the Snakemake rules, in order, with intermediate files in
a work folder. A stage whose output already exists is skipped, so rerunning after a crash goes
on from the last finished block.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from rose import pipeline
from rose.models import count_blocks, import_model, resolve_model_spec

log = logging.getLogger(__name__)


def prune_model(
    spec: str,
    out: Path,
    settings: pipeline.PruneSettings,
    calibration: str = "c4-sample",
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    propagation: str = "pruned",
    device: str = "auto",
    activation_dtype: str = "auto",
    work_dir: Path | None = None,
    keep_work_dir: bool = False,
) -> Path:
    """Prune the model ``spec`` with ``settings`` and write a Hugging Face checkpoint to ``out``."""
    if propagation not in ("pruned", "dense"):
        raise ValueError(f"invalid propagation {propagation!r}: expected 'pruned' or 'dense'")
    resolve_model_spec(spec)  # rejects a missing path before any compute
    work = Path(work_dir) if work_dir is not None else Path(f"{out}.work")
    work.mkdir(parents=True, exist_ok=True)

    model_dir = work / "model"
    source = resolve_model_spec(spec)
    if source.kind == "folder" and (Path(source.location) / "model.safetensors").is_file():
        model_dir = Path(source.location)
    elif not (model_dir / "config.json").is_file():
        import_model(spec, model_dir)

    tokens = work / "calibration.safetensors"
    if not tokens.exists():
        pipeline.calibrate(model_dir, calibration, nsamples, seqlen, seed, tokens)
    kwargs = work / "block_kwargs.pt"
    inputs = work / "embeddings.safetensors"
    if not inputs.exists():
        pipeline.capture(model_dir, tokens, inputs, kwargs, device, activation_dtype)

    weights, stats = [], []
    source, previous = inputs, None
    for index in range(count_blocks(spec, model_dir)):
        hessian = work / f"hessians_{index:03d}.safetensors"
        block_inputs = work / f"inputs_{index:03d}.safetensors"
        weight = work / f"pruned_{index:03d}.safetensors"
        stat = work / f"pruned_{index:03d}.json"
        if not (weight.exists() and stat.exists() and block_inputs.exists()):
            if not (hessian.exists() and block_inputs.exists()):
                pipeline.hessians(model_dir, index, source, kwargs, hessian, device, previous, block_inputs)
            pipeline.prune(model_dir, index, hessian, settings, weight, stat, device)
        # Block index + 1 is calibrated on this block's outputs: pruned ones, or dense ones.
        source, previous = block_inputs, (weight if propagation == "pruned" else None)
        weights.append(weight)
        stats.append(stat)
        log.info("block %d done", index)

    pipeline.assemble(model_dir, weights, stats, out)
    if not keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return out
