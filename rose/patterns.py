"""Sparsity patterns and exact-count selection of the weights to prune."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

_NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class SparsityPattern:
    """Sparsity pattern: a fraction of every sweep block (unstructured) or N of every M weights.

    ``n`` and ``m`` are 0 for unstructured sparsity.
    """

    sparsity: float
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def parse_pattern(pattern: str, sparsity: float | None = None) -> SparsityPattern:
    """Build a pattern from ``"unstructured"`` plus a sparsity, or from ``"N:M"``.

    For N:M the sparsity is N/M; a sparsity given alongside must agree with it.
    """
    if pattern == "unstructured":
        if sparsity is None:
            raise ValueError("unstructured pruning needs a sparsity in [0, 1)")
        check_sparsity(sparsity)
        return SparsityPattern(float(sparsity))
    match = _NM_PATTERN.match(str(pattern))
    if not match:
        raise ValueError(
            f"invalid sparsity pattern {pattern!r}: expected 'unstructured' or 'N:M' with N < M, e.g. '2:4'"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"invalid N:M pattern {pattern!r}: N must satisfy 0 < N < M")
    if sparsity is not None and not math.isclose(sparsity, n / m):
        raise ValueError(f"sparsity {sparsity} contradicts pattern {pattern!r}, which prunes {n}/{m} = {n / m:g}")
    return SparsityPattern(n / m, n, m)


def check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"invalid sparsity {sparsity!r}: expected a number in [0, 1)")


def lowest_k_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mark exactly ``k`` lowest scores in every row of a 2-D tensor, ties broken by position.

    Choosing by position rather than by "score <= threshold" keeps the count exact when scores
    tie, which they often do for weights de-quantised from a 4-bit file. The k-th value comes
    from a selection (linear time) rather than a full sort.
    """
    rows, width = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= width:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    below = scores < kth
    # Entries equal to the k-th value fill the remaining places, earliest positions first.
    ties = scores == kth
    needed = k - below.sum(dim=1, keepdim=True)
    return below | (ties & (torch.cumsum(ties, dim=1) <= needed))


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mark exactly ``k`` entries of ``scores`` (any shape) with the lowest values."""
    return lowest_k_per_row(scores.reshape(1, -1), k).reshape(scores.shape)


def lowest_per_row_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mark exactly ``k`` lowest-scoring entries in every row of ``scores`` (rows × width)."""
    return lowest_k_per_row(scores, k)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mark the ``n`` lowest scores in every row of every group of ``m`` consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"a {n}:{m} pattern needs a column count divisible by {m}; this matrix has {cols} columns")
    grouped = scores.reshape(rows, cols // m, m)
    order = torch.argsort(grouped, dim=2, stable=True)
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(2, order[:, :, :n], True)
    return mask.reshape(rows, cols)


def unstructured_count(sparsity: float, numel: int) -> int:
    """Number of weights to prune among ``numel``: floor(sparsity · numel), robust to float noise."""
    return int(math.floor(sparsity * numel + 1e-9))
