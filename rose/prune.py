"""Prune one weight matrix: the public entry point to the mathematics, free of files and models."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from rose.baselines import magnitude_mask, wanda_mask
from rose.ordering import identity_order, rose_order
from rose.patterns import SparsityPattern, parse_pattern
from rose.sweep import sparsegpt_sweep, working_dtype

# ROSE and its ablation variants, mapped to the ordering variant each one uses.
ROSE_METHODS = {
    "rose": "descending",
    "rose_ascending": "ascending",
    "rose_blocks_only": "blocks_only",
    "rose_columns_only": "columns_only",
}
SWEEP_METHODS = ("sparsegpt", *ROSE_METHODS)
METHODS = (*SWEEP_METHODS, "wanda", "magnitude")


@dataclass
class PruneStats:
    """What happened to one sublayer.

    ``relative_error`` is tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with the undamped Hessian (None without a
    Hessian). ``error_curve`` is the same ratio after each sweep block, measured against the
    damped Hessian the sweep works with (empty for methods without a sweep). ``block_loss`` and
    ``relative_range`` come from ROSE's pre-pruning; ``reordered`` is True when the order changed.
    """

    method: str
    pattern: str
    target_sparsity: float
    sparsity: float
    rows: int
    cols: int
    reordered: bool = False
    relative_range: float | None = None
    block_loss: list[float] = field(default_factory=list)
    damping: float | None = None
    cholesky_retries: int = 0
    relative_error: float | None = None
    error_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def relative_reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with ΔW = W − Ŵ."""
    dtype = working_dtype(weight)
    W, H = weight.to(dtype), hessian.to(dtype)
    delta = W - pruned.to(dtype)
    denominator = torch.sum((W @ H) * W)
    if float(denominator) <= 0.0:
        return 0.0
    return float(torch.sum((delta @ H) * delta) / denominator)


def _check_inputs(
    weight: torch.Tensor, hessian: torch.Tensor | None, act_sq_norm: torch.Tensor | None, method: str, name: str
) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}: expected one of {', '.join(METHODS)}")
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name}: the weight matrix contains NaN or inf")
    cols = weight.shape[1]
    if hessian is not None:
        if tuple(hessian.shape) != (cols, cols):
            raise ValueError(f"{name}: Hessian shape {tuple(hessian.shape)} does not match {cols} input columns")
        if not bool(torch.isfinite(hessian).all()):
            raise ValueError(f"{name}: the Hessian contains NaN or inf; the calibration activations overflowed")
    elif method in SWEEP_METHODS:
        raise ValueError(f"{name}: method {method!r} needs the Hessian of the sublayer's inputs")
    if act_sq_norm is not None:
        if tuple(act_sq_norm.shape) != (cols,):
            raise ValueError(f"{name}: activation norms of shape {tuple(act_sq_norm.shape)} do not match {cols} columns")
        if not bool(torch.isfinite(act_sq_norm).all()):
            raise ValueError(f"{name}: the activation norms contain NaN or inf")


def prune_matrix(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    act_sq_norm: torch.Tensor | None,
    method: str,
    sparsity: float | None,
    pattern: str = "unstructured",
    block_size: int = 128,
    damping: float = 0.01,
    threshold: float = 0.5,
    name: str = "matrix",
) -> tuple[torch.Tensor, PruneStats]:
    """Prune ``weight`` (out_features × in_features) and return the pruned matrix and its statistics.

    Args:
        weight: the sublayer's weight, one row per output feature.
        hessian: H = (2/N) Σ x xᵀ over the calibration inputs (cols × cols). Required by the
            SparseGPT-based methods; used by the others only for the reconstruction error.
        act_sq_norm: a_j = (1/N) Σ x_j², the squared norm of every input feature. When omitted
            it is read off the Hessian's diagonal (diag H = 2a).
        method: one of `METHODS`: ``sparsegpt``, ``rose`` and its ordering variants, ``wanda``,
            ``magnitude``.
        sparsity: the fraction to prune, in [0, 1). For an N:M pattern it may be None (then N/M).
        pattern: ``"unstructured"`` or ``"N:M"`` such as ``"2:4"``.
        block_size: sweep block size B; ROSE pre-prunes and reorders blocks of this width.
        damping: relative damping λ added as λ · mean(diag H) to the diagonal.
        threshold: ROSE's gate τ: a layer is reordered when its relative range exceeds it.
        name: how errors and logs refer to the matrix, e.g. ``"block 3 self_attn.q_proj"``.

    The result has the input's dtype and exact zeros at pruned positions.
    """
    started = time.perf_counter()
    spec: SparsityPattern = parse_pattern(pattern, sparsity)
    _check_inputs(weight, hessian, act_sq_norm, method, name)
    if act_sq_norm is None and hessian is not None:
        act_sq_norm = torch.diagonal(hessian) / 2
    rows, cols = weight.shape
    if spec.is_nm and cols % spec.m:
        raise ValueError(
            f"{name}: a {spec.name} pattern needs the column count to be a multiple of {spec.m}, "
            f"but the matrix has {cols} columns; use unstructured sparsity for this sublayer"
        )
    stats = PruneStats(method, spec.name, spec.sparsity, 0.0, rows, cols)

    if spec.sparsity == 0.0:
        pruned = weight.clone()
    elif method in SWEEP_METHODS:
        if method == "sparsegpt":
            order = identity_order(cols, block_size, weight.device)
        else:
            weight_w = weight.to(working_dtype(weight))
            order = rose_order(weight_w, act_sq_norm.to(weight_w.dtype), spec, block_size, threshold, ROSE_METHODS[method])
            stats.reordered, stats.relative_range, stats.block_loss = order.reordered, order.relative_range, order.block_loss
        result = sparsegpt_sweep(weight, hessian, order, spec, damping, name)
        pruned = result.weight.to(weight.dtype)
        stats.damping, stats.cholesky_retries, stats.error_curve = result.damping, result.cholesky_retries, result.error_curve
    elif method == "wanda":
        if act_sq_norm is None:
            raise ValueError(f"{name}: method 'wanda' needs the activation norms or the Hessian")
        pruned = weight.masked_fill(wanda_mask(weight, act_sq_norm.to(weight.device), spec), 0.0)
    else:
        pruned = weight.masked_fill(magnitude_mask(weight, spec), 0.0)

    stats.sparsity = float((pruned == 0).sum()) / pruned.numel()
    if hessian is not None:
        stats.relative_error = relative_reconstruction_error(weight, pruned, hessian)
    stats.seconds = time.perf_counter() - started
    return pruned, stats
