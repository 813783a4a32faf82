"""The SparseGPT sweep (Frantar & Alistarh, ICML 2023) over a given column order.

The sweep prunes columns block by block in processing order and compensates every pruned
weight by updating the columns not yet processed (the optimal brain surgeon update, computed
from the upper Cholesky factor of the inverse Hessian).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rose.ordering import ColumnOrder
from rose.patterns import SparsityPattern, lowest_k_mask, unstructured_count

log = logging.getLogger(__name__)

# Each failed Cholesky factorisation multiplies the damping by this factor, at most this often.
DAMPING_GROWTH = 10.0
MAX_DAMPING_RETRIES = 4


class CholeskyError(RuntimeError):
    """The damped Hessian stayed non positive definite after every retry."""


@dataclass
class SweepResult:
    """Outcome of one sweep.

    ``weight`` is the pruned matrix in original column order. ``damping`` is the relative damping
    λ finally used. ``error_curve[k]`` is the relative error tr(ΔW H_d ΔWᵀ) / tr(W H_d Wᵀ) after
    sweep block k, with H_d the damped Hessian, accumulated from the sweep's exact per-column
    losses (w − q)² / U_jj².
    """

    weight: torch.Tensor
    damping: float
    error_curve: list[float]
    cholesky_retries: int


def working_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (tests), float32 for everything else."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def damped_inverse_cholesky(
    hessian: torch.Tensor, damping: float, name: str = "matrix"
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Return (U, damped H, damping used, retries) with U the upper Cholesky factor of H_d⁻¹.

    H_d = H + λ · mean(diag H) · I. A failed factorisation is retried with λ multiplied by
    `DAMPING_GROWTH`; every retry is logged and counted, never silently replaced.
    """
    if damping <= 0:
        raise ValueError(f"invalid damping {damping!r}: expected a positive number (0.01 is the usual value)")
    mean_diagonal = torch.diagonal(hessian).mean()
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for retry in range(MAX_DAMPING_RETRIES + 1):
        used = damping * DAMPING_GROWTH**retry
        damped = hessian + used * mean_diagonal * identity
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                if retry:
                    log.warning("%s: Cholesky factorisation needed damping %g (%d retries)", name, used, retry)
                return upper, damped, used, retry
        log.warning("%s: Cholesky factorisation failed with damping %g; retrying with more damping", name, used)
    raise CholeskyError(
        f"{name}: the damped Hessian is not positive definite even with damping {used:g}; "
        "check the calibration data of this sublayer or raise the `damping` setting"
    )


def sparsegpt_sweep(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    order: ColumnOrder,
    pattern: SparsityPattern,
    damping: float = 0.01,
    name: str = "matrix",
) -> SweepResult:
    """Prune ``weight`` (rows × cols) with the SparseGPT sweep in the order ``order`` gives.

    Unstructured: exactly floor(p · rows · width) weights of every sweep block are pruned, the
    lowest w² / U_jj² chosen by index. N:M: at the first column of every group of M processing
    positions, the N lowest scores per row of that group, scored with the weights updated so far.
    """
    dtype = working_dtype(weight)
    perm = order.permutation.to(weight.device)
    W = weight.to(dtype)[:, perm].clone()
    H = hessian.to(dtype)[perm][:, perm].clone()
    rows, cols = W.shape

    # Dead inputs never vary, so their weights cannot matter: zero them and keep H invertible.
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    U, damped, damping_used, retries = damped_inverse_cholesky(H, damping, name)
    reference = torch.sum((W @ damped) * W)
    column_loss = torch.zeros(cols, dtype=dtype, device=W.device)

    for start, end in order.block_bounds:
        width = end - start
        W1 = W[:, start:end].clone()
        U1 = U[start:end, start:end]
        d = torch.diagonal(U1)
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        if pattern.is_nm:
            if width % pattern.m:
                raise ValueError(f"{name}: sweep block of {width} columns splits {pattern.n}:{pattern.m} groups")
            mask = torch.zeros_like(W1, dtype=torch.bool)
        else:
            scores = W1**2 / d.unsqueeze(0) ** 2
            mask = lowest_k_mask(scores, unstructured_count(pattern.sparsity, rows * width))

        for i in range(width):
            if pattern.is_nm and i % pattern.m == 0:
                group = W1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m].unsqueeze(0) ** 2
                chosen = torch.argsort(group, dim=1, stable=True)[:, : pattern.n]
                mask[:, i : i + pattern.m].scatter_(1, chosen, True)
            w = W1[:, i]
            q = torch.where(mask[:, i], torch.zeros_like(w), w)
            err = (w - q) / d[i]
            # Optimal update of the block's remaining columns; column i itself becomes q.
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Q1[:, i] = q
            E1[:, i] = err
        column_loss[start:end] = (E1**2).sum(dim=0)

        W[:, start:end] = Q1
        # Lazy batch update: the block's errors reach all later columns at once.
        W[:, end:] -= E1 @ U[start:end, end:]

    block_loss = torch.stack([column_loss[start:end].sum() for start, end in order.block_bounds])
    curve = (torch.cumsum(block_loss, 0) / reference.clamp(min=torch.finfo(dtype).tiny)).tolist()

    pruned = torch.empty_like(W)
    pruned[:, perm] = W
    return SweepResult(pruned, damping_used, curve, retries)
