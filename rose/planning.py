"""Memory and disk estimates, checked before a stage allocates or writes anything large."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

MIB = 1024**2
GIB = 1024**3


class ResourceError(RuntimeError):
    """A stage would need more memory or disk than is available; the message names the setting to change."""


@dataclass(frozen=True)
class BlockPlan:
    """Sizes in bytes of what one block's jobs hold: activations, weights and Hessians."""

    activations: int
    block_weights: int
    hessians: int
    sweep_working_set: int = 0

    @property
    def hessian_job(self) -> int:
        # Inputs of the previous block, this block's inputs, two blocks' weights, the Hessians.
        return 2 * self.activations + 2 * self.block_weights + self.hessians

    @property
    def prune_job(self) -> int:
        # The block's weights twice (read and pruned), the Hessians, and the sweep of the widest sublayer.
        return 2 * self.block_weights + self.hessians + self.sweep_working_set

    @property
    def largest_job(self) -> int:
        return max(self.hessian_job, self.prune_job)


def sweep_working_set(rows: int, cols: int) -> int:
    """Estimate the float32 bytes the sweep of one rows × cols sublayer keeps at its peak.

    Six cols × cols matrices (the permuted Hessian, its damped copy, the Cholesky factor, the
    inverse, its factor U, one temporary) and three rows × cols ones (the permuted weight, its
    pruned copy, the result). For a LLaMA-7B block the prune job's estimate is 5.4 GiB; the peak
    resident size measured by benchmarks/bench_block_memory.py (torch 2.13, CPU) was 5.6 GiB,
    which includes about 0.4 GiB of Python and its libraries.
    """
    return 4 * (6 * cols * cols + 3 * rows * cols)


def estimate_block_plan(model_config: dict, model_bytes: int, nsamples: int, seqlen: int, dtype_bytes: int) -> BlockPlan:
    """Estimate one block's sizes from a model's config.json and its weight file size.

    Hessians are counted for the four distinct inputs of a LLaMA block: attention, its output
    projection, the MLP input and the MLP's down projection. Other families differ a little.
    """
    hidden = int(model_config.get("hidden_size") or model_config.get("n_embd") or model_config["d_model"])
    inner = int(model_config.get("intermediate_size") or model_config.get("n_inner") or model_config.get("ffn_dim") or 4 * hidden)
    blocks = int(model_config.get("num_hidden_layers") or model_config.get("n_layer") or model_config["num_layers"])
    return BlockPlan(
        activation_bytes(nsamples, seqlen, hidden, dtype_bytes),
        model_bytes // max(blocks, 1),
        hessian_bytes([hidden, hidden, hidden, inner]),
        # The MLP's down projection (hidden × inner) has the widest input of the block.
        sweep_working_set(hidden, inner),
    )


def check_run_fits(
    plan: BlockPlan,
    blocks: int,
    model_bytes: int,
    streams: int,
    keep_hessians: bool,
    results_dir: str | os.PathLike,
    max_memory_bytes: int | None = None,
) -> None:
    """Check one block job's memory and the whole run's disk use before any block is computed.

    Per activation stream (one per pruned configuration, or one under dense propagation) the
    run keeps two activation files at a time, the pruned blocks and the assembled checkpoint
    (each about the model's size), and the Hessians when they are kept.
    """
    check_memory(
        plan.largest_job, "one block job",
        "lower calibration.nsamples or calibration.seqlen, or store activations as bfloat16 (activation_dtype)",
        max_memory_bytes,
    )
    per_stream = 2 * plan.activations + 2 * model_bytes + (blocks if keep_hessians else 2) * plan.hessians
    check_disk(
        results_dir, plan.activations + streams * per_stream, f"a run of {streams} pruning configuration(s)",
        "free space, use fewer methods or sparsities per run, or set keep_hessians: false",
    )


def activation_bytes(nsamples: int, seqlen: int, hidden: int, dtype_bytes: int) -> int:
    """Size of one block's calibration activations: nsamples × seqlen × hidden × dtype size."""
    return nsamples * seqlen * hidden * dtype_bytes


def hessian_bytes(input_widths: list[int]) -> int:
    """Size of a block's Hessian file: one float32 cols × cols matrix and norm vector per distinct input."""
    return sum(4 * (cols * cols + cols) for cols in input_widths)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(needed: int, description: str, knob: str, limit: int | None = None) -> None:
    """Raise `ResourceError` when ``needed`` bytes exceed the limit or the available memory."""
    available = available_memory_bytes()
    ceilings = [value for value in (limit, available) if value is not None]
    if ceilings and needed > min(ceilings):
        ceiling = min(ceilings)
        source = "the configured limit" if limit is not None and ceiling == limit else "the available memory"
        raise ResourceError(
            f"{description} needs an estimated {needed / GIB:.2f} GiB, more than {source} of {ceiling / GIB:.2f} GiB; {knob}"
        )


def check_disk(folder: str | os.PathLike, needed: int, description: str, knob: str) -> None:
    """Raise `ResourceError` when the file system of ``folder`` has less than ``needed`` bytes free."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ResourceError(
            f"{description} needs an estimated {needed / GIB:.2f} GiB of disk in {folder}, "
            f"but only {free / GIB:.2f} GiB are free; {knob}"
        )
