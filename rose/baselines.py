"""Pruning baselines without weight updates: Wanda and magnitude."""

from __future__ import annotations

import torch

from rose.patterns import SparsityPattern, lowest_k_mask, lowest_per_row_mask, nm_mask, unstructured_count


def wanda_mask(weight: torch.Tensor, act_sq_norm: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Mask of the weights Wanda prunes (Sun et al., 2024): lowest |W_ij| · sqrt(a_j).

    Unstructured sparsity compares weights within each output row, as in the Wanda paper.
    """
    score = weight.abs() * act_sq_norm.clamp(min=0).sqrt().unsqueeze(0)
    if pattern.is_nm:
        return nm_mask(score, pattern.n, pattern.m)
    return lowest_per_row_mask(score, unstructured_count(pattern.sparsity, weight.shape[1]))


def magnitude_mask(weight: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Mask of the lowest |W_ij| over the whole matrix (unstructured) or per N:M group."""
    score = weight.abs()
    if pattern.is_nm:
        return nm_mask(score, pattern.n, pattern.m)
    return lowest_k_mask(score, unstructured_count(pattern.sparsity, weight.numel()))
