"""ROSE: choose the column order of the SparseGPT sweep from a pre-pruning loss.

Su & Wang, "ROSE: Reordered SparseGPT for More Accurate One-Shot Large Language Models
Pruning" (arXiv 2603.05878). The order is independent of the sweep: `sweep.sparsegpt_sweep`
takes any `ColumnOrder`, whether it comes from here or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rose.patterns import SparsityPattern, lowest_k_mask, lowest_k_per_row, nm_mask, unstructured_count

# Sort directions of each ordering variant: (blocks descending?, columns descending?).
# None keeps the original order.
ORDER_VARIANTS: dict[str, tuple[bool | None, bool | None]] = {
    "descending": (True, True),  # the paper's ROSE
    "ascending": (False, False),
    "blocks_only": (True, None),
    "columns_only": (None, True),
}


@dataclass
class ColumnOrder:
    """A processing order for the sweep.

    ``permutation[k]`` is the original column processed at position ``k``; ``block_bounds`` are
    the sweep blocks as ``(start, end)`` positions in processing order.
    """

    permutation: torch.Tensor
    block_bounds: list[tuple[int, int]]
    reordered: bool = False
    relative_range: float = 0.0
    block_loss: list[float] = field(default_factory=list)


def block_spans(cols: int, block_size: int) -> list[tuple[int, int]]:
    """Consecutive blocks of ``block_size`` columns; the last one may be shorter."""
    if block_size < 1:
        raise ValueError(f"invalid block size {block_size}: expected a positive integer")
    return [(start, min(start + block_size, cols)) for start in range(0, cols, block_size)]


def identity_order(cols: int, block_size: int, device: torch.device | str = "cpu") -> ColumnOrder:
    """Plain SparseGPT: original column order, blocks of ``block_size``."""
    return ColumnOrder(torch.arange(cols, device=device), block_spans(cols, block_size))


def rose_score(weight: torch.Tensor, act_sq_norm: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · sqrt(a_j), the Wanda score that ROSE pre-prunes with."""
    return weight.abs() * act_sq_norm.clamp(min=0).sqrt().unsqueeze(0)


def pre_pruning_loss(score: torch.Tensor, pattern: SparsityPattern, block_size: int) -> torch.Tensor:
    """Loss matrix L: the score at the entries a pre-pruning would remove, 0 elsewhere.

    Unstructured: exactly floor(p · rows · width) lowest scores inside every block of
    ``block_size`` original columns. N:M: the N lowest scores per row in every group of M.
    """
    if pattern.is_nm:
        return score * nm_mask(score, pattern.n, pattern.m)

    rows, cols = score.shape
    mask = torch.zeros_like(score, dtype=torch.bool)
    full_blocks = cols // block_size
    if full_blocks:
        # All full blocks at once: (blocks, rows · block_size), one exact selection per block.
        full = score[:, : full_blocks * block_size].reshape(rows, full_blocks, block_size)
        per_block = full.permute(1, 0, 2).reshape(full_blocks, rows * block_size)
        chosen = lowest_k_per_row(per_block, unstructured_count(pattern.sparsity, rows * block_size))
        mask[:, : full_blocks * block_size] = (
            chosen.reshape(full_blocks, rows, block_size).permute(1, 0, 2).reshape(rows, -1)
        )
    tail_start = full_blocks * block_size
    if tail_start < cols:
        tail = score[:, tail_start:]
        mask[:, tail_start:] = lowest_k_mask(tail, unstructured_count(pattern.sparsity, tail.numel()))
    return score * mask


def relative_range(block_loss: torch.Tensor) -> float:
    """r = (max_k b_k − min_k b_k) / max_k b_k; 0 when every block loss is 0."""
    largest = float(block_loss.max())
    if largest <= 0.0:
        return 0.0
    return (largest - float(block_loss.min())) / largest


def _sorted(values: torch.Tensor, descending: bool | None) -> torch.Tensor:
    if descending is None:
        return torch.arange(values.numel(), device=values.device)
    return torch.argsort(values, descending=descending, stable=True)


def rose_order(
    weight: torch.Tensor,
    act_sq_norm: torch.Tensor,
    pattern: SparsityPattern,
    block_size: int = 128,
    threshold: float = 0.5,
    variant: str = "descending",
) -> ColumnOrder:
    """Order the sweep's columns by pre-pruning loss when the layer is columnar (r > threshold).

    Columnar layers get their blocks ordered by block loss and, inside each block, their columns
    (or, for N:M, their groups of M columns) ordered by column loss. Blocks keep their original
    width, so a short last block stays one sweep block wherever it lands. Other layers keep the
    identity order, which makes the sweep plain SparseGPT.
    """
    if variant not in ORDER_VARIANTS:
        raise ValueError(f"unknown ROSE ordering variant {variant!r}: expected one of {sorted(ORDER_VARIANTS)}")
    rows, cols = weight.shape
    unit = pattern.m if pattern.is_nm else 1
    if pattern.is_nm and block_size % unit:
        raise ValueError(
            f"block size {block_size} is not a multiple of M={pattern.m}: N:M groups would straddle sweep blocks"
        )

    loss = pre_pruning_loss(rose_score(weight, act_sq_norm), pattern, block_size)
    column_loss = loss.sum(dim=0)
    spans = block_spans(cols, block_size)
    padded = torch.nn.functional.pad(column_loss, (0, len(spans) * block_size - cols))
    block_loss = padded.reshape(len(spans), block_size).sum(dim=1)
    r = relative_range(block_loss)
    block_loss_list = [float(b) for b in block_loss]

    if r <= threshold:
        order = identity_order(cols, block_size, weight.device)
        order.relative_range, order.block_loss = r, block_loss_list
        return order

    blocks_descending, columns_descending = ORDER_VARIANTS[variant]
    pieces: list[torch.Tensor] = []
    bounds: list[tuple[int, int]] = []
    position = 0
    for k in _sorted(block_loss, blocks_descending).tolist():
        start, end = spans[k]
        # Units are single columns (unstructured) or whole groups of M columns (N:M), so an
        # N:M group is never split and stays contiguous in the original column order.
        unit_loss = column_loss[start:end].reshape(-1, unit).sum(dim=1)
        unit_order = _sorted(unit_loss, columns_descending)
        columns = start + (unit_order.unsqueeze(1) * unit + torch.arange(unit, device=weight.device)).reshape(-1)
        pieces.append(columns)
        bounds.append((position, position + end - start))
        position += end - start
    return ColumnOrder(torch.cat(pieces), bounds, True, r, block_loss_list)
