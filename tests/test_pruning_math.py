"""The pruning mathematics checked against expected values computed without the code under test.

Expected values come from direct linear algebra (least squares per row, damped traces), from
Python sorting, or from numbers worked out by hand in the test. Float64 is used wherever a
check compares values rather than counts.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from rose.ordering import ColumnOrder, identity_order, rose_order
from rose.patterns import parse_pattern
from rose.prune import METHODS, ROSE_METHODS, SWEEP_METHODS, prune_matrix
from rose.sweep import CholeskyError, sparsegpt_sweep

ROSE_VARIANT_METHODS = tuple(ROSE_METHODS)
# (rows, cols, kind) of the exact-count tests. Neither column count is a multiple of the block
# size 128, so every layer ends with a short sweep block. "columnar" and "quantised" make that
# short block the loud one, so ROSE moves it to the front.
COUNT_CASES = [
    (192, 576, "random"),
    (192, 576, "columnar"),
    (192, 576, "quantised"),
    (64, 160, "random"),
    (64, 160, "columnar"),
    (64, 160, "quantised"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run this module's small matrix operations on one thread.

    At these sizes, intra-op threads cost more than they save, and on a busy machine they
    oversubscribe the cores: with 2 threads on a 2-core machine running another job, this
    module took about 10 times longer.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- inputs with known structure


def _calibration_inputs(
    cols: int, tokens: int, seed: int, loud: slice | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Correlated random inputs (tokens × cols); the ``loud`` columns are 4 times larger.

    Four shared factors correlate the features, so the Hessian has off-diagonal mass and the
    sweep's updates matter.
    """
    generator = torch.Generator().manual_seed(seed)
    factors = torch.randn(tokens, 4, generator=generator, dtype=torch.float64)
    loadings = torch.randn(4, cols, generator=generator, dtype=torch.float64)
    inputs = torch.randn(tokens, cols, generator=generator, dtype=torch.float64) + factors @ loadings
    if loud is not None:
        inputs[:, loud] *= 4.0
    return inputs.to(dtype)


def _hessian(inputs: torch.Tensor) -> torch.Tensor:
    """H = (2/T) Σ x xᵀ over the T token vectors."""
    return 2.0 * inputs.T @ inputs / inputs.shape[0]


def _layer(
    rows: int,
    cols: int,
    seed: int = 0,
    loud: slice | None = None,
    dtype: torch.dtype = torch.float64,
    tokens: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (weight, Hessian, activation norms) of a random layer.

    With ``loud`` set, those columns get 4 times larger weights and inputs, so their Wanda
    scores are 16 times larger: a columnar layer in ROSE's sense.
    """
    inputs = _calibration_inputs(cols, tokens, seed, loud, torch.float64)
    generator = torch.Generator().manual_seed(seed + 1000)
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    if loud is not None:
        weight[:, loud] *= 4.0
    act_sq_norm = (inputs**2).mean(dim=0)
    return weight.to(dtype), _hessian(inputs).to(dtype), act_sq_norm.to(dtype)


def _quantised_layer(
    rows: int, cols: int, seed: int = 0, loud: slice | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer whose scores tie massively: weights on the levels ±0.5, ±1, ±2 and a diagonal Hessian.

    A diagonal Hessian makes the sweep's updates vanish, so the ties of the original weights
    survive into every sweep block. The ``loud`` columns get 4 times larger levels and inputs.
    """
    generator = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float32)
    weight = levels[torch.randint(0, 3, (rows, cols), generator=generator)]
    weight = weight * torch.where(torch.rand(rows, cols, generator=generator) < 0.5, -1.0, 1.0)
    act_sq_norm = torch.ones(cols, dtype=torch.float32)
    if loud is not None:
        weight[:, loud] *= 4.0
        act_sq_norm[loud] = 16.0
    return weight, torch.diag(2.0 * act_sq_norm), act_sq_norm


def _damped(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """H_d = H + λ · mean(diag H) · I, the matrix the sweep minimises against."""
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype)
    return hessian + damping * torch.diagonal(hessian).mean() * identity


def _quadratic_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(Δ H Δᵀ), written as a sum over rows of δᵀ H δ."""
    return float(sum(row @ hessian @ row for row in delta))


def _masked_least_squares(weight: torch.Tensor, damped: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """argmin over Ŵ with Ŵ = 0 on ``pruned`` of tr((W − Ŵ) H_d (W − Ŵ)ᵀ), solved row by row.

    With δ = w − ŵ fixed to w on the pruned set P, the kept set K minimises δᵀ H_d δ at
    δ_K = −H_KK⁻¹ H_KP w_P (the normal equations of the reduced system).
    """
    optimum = torch.zeros_like(weight)
    for row in range(weight.shape[0]):
        kept, cut = ~pruned[row], pruned[row]
        system = damped[kept][:, kept]
        right = damped[kept][:, cut] @ weight[row, cut]
        optimum[row, kept] = weight[row, kept] + torch.linalg.solve(system, right)
    return optimum


def _weights_at_position(weight, pruned_weight, damped, permutation, position: int) -> torch.Tensor:
    """Return the weights of the columns from ``position`` on, as the sweep has updated them by then.

    The OBS updates keep the not yet processed columns at the optimum given the processed ones,
    so they follow from the final values of the processed columns alone.
    """
    done, free = permutation[:position], permutation[position:]
    delta_done = (weight - pruned_weight)[:, done]
    # δ_free = −H_ff⁻¹ H_fd δ_done minimises δᵀ H_d δ with δ_done fixed.
    delta_free = -torch.linalg.solve(damped[free][:, free], damped[free][:, done] @ delta_done.T).T
    return weight[:, free] - delta_free


def _zeros_per_nm_group(pruned: torch.Tensor, m: int) -> torch.Tensor:
    """Count the zeros of every row in every group of m contiguous original columns."""
    rows, cols = pruned.shape
    return (pruned == 0).reshape(rows, cols // m, m).sum(dim=2)


def _lowest_indices(values: list[float], count: int) -> set[int]:
    """Indices of the ``count`` smallest values, by plain Python sorting."""
    return set(sorted(range(len(values)), key=lambda index: values[index])[:count])


# ---------------------------------------------------------------- the sweep as least squares


def test_sweep_matches_masked_least_squares():
    # When every row's pruned weights come before its kept ones in processing order, the
    # sequential OBS sweep solves the masked least-squares problem exactly: each kept weight is
    # fixed only after every pruned weight of its row has been compensated.
    rows, cols, damping = 6, 24, 0.01
    inputs = _calibration_inputs(cols, tokens=200, seed=3)
    hessian = _hessian(inputs)
    generator = torch.Generator().manual_seed(4)
    permutation = torch.randperm(cols, generator=generator)
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    weight = weight + 3.0 * torch.sign(weight)  # kept weights stay far above the tiny ones
    pruned_prefix = [4, 8, 12, 16, 20, 12]  # 72 = 0.5 · 6 · 24 pruned in total
    expected_mask = torch.zeros(rows, cols, dtype=torch.bool)
    for row, count in enumerate(pruned_prefix):
        expected_mask[row, permutation[:count]] = True
    weight[expected_mask] *= 1e-3  # the lowest scores, so the sweep picks exactly this mask

    order = ColumnOrder(permutation, [(0, cols)])  # one block: the mask is chosen at the start
    result = sparsegpt_sweep(weight, hessian, order, parse_pattern("unstructured", 0.5), damping)

    assert torch.equal(result.weight == 0, expected_mask)
    optimum = _masked_least_squares(weight, _damped(hessian, damping), expected_mask)
    torch.testing.assert_close(result.weight, optimum, rtol=0, atol=1e-9)


def test_sweep_never_revisits_kept_columns():
    # A kept weight processed before a pruned weight of its row is frozen and not re-fitted, so
    # the sweep is not the masked least-squares optimum then. Hand example, λ = 0.01:
    # H = [[2, 1], [1, 2]], H_d = H + 0.02 I, w = (1, 0.1). Column 1 is pruned (lowest score).
    # The sweep keeps ŵ_0 = 1; the optimum is ŵ_0 = 1 + H_d01 · w_1 / H_d00 = 1 + 0.1 / 2.02.
    hessian = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.1]], dtype=torch.float64)
    result = sparsegpt_sweep(weight, hessian, identity_order(2, 2), parse_pattern("unstructured", 0.5), 0.01)

    assert result.weight.tolist() == [[1.0, 0.0]]
    optimum = _masked_least_squares(weight, _damped(hessian, 0.01), result.weight == 0)
    assert optimum[0, 0].item() == pytest.approx(1.0 + 0.1 / 2.02, rel=1e-12)
    assert _quadratic_error(weight - optimum, _damped(hessian, 0.01)) < _quadratic_error(
        weight - result.weight, _damped(hessian, 0.01)
    )


def test_sweep_columns_optimal_given_earlier():
    # What the sweep does compute, for any mask, order and block size: each kept weight equals
    # the optimum of a smaller problem. In it, the columns processed before that weight are
    # fixed at their final values and the columns from it on are free.
    rows, cols, damping = 5, 24, 0.01
    inputs = _calibration_inputs(cols, tokens=200, seed=5)
    hessian = _hessian(inputs)
    damped = _damped(hessian, damping)
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    permutation = torch.randperm(cols, generator=generator)
    order = ColumnOrder(permutation, [(0, 8), (8, 16), (16, 24)])
    result = sparsegpt_sweep(weight, hessian, order, parse_pattern("unstructured", 0.5), damping)
    pruned = result.weight == 0

    for position in range(cols):
        column = int(permutation[position])
        best = _weights_at_position(weight, result.weight, damped, permutation, position)[:, 0]
        kept = ~pruned[:, column]
        torch.testing.assert_close(result.weight[kept, column], best[kept], rtol=0, atol=1e-9)

    # The masked least-squares optimum for the same mask can only be lower.
    optimum = _masked_least_squares(weight, damped, pruned)
    assert _quadratic_error(weight - optimum, damped) <= _quadratic_error(weight - result.weight, damped) + 1e-12


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", None)])
def test_sweep_prunes_lowest_obs_scores(pattern, sparsity):
    # The OBS score of weight j at its turn is w_j² / [H_F⁻¹]_jj with F the columns not yet
    # processed, i.e. w² / U_jj² for U the upper Cholesky factor of H_d⁻¹.
    rows, cols, damping = 5, 24, 0.01
    hessian = _hessian(_calibration_inputs(cols, tokens=200, seed=23))
    damped = _damped(hessian, damping)
    generator = torch.Generator().manual_seed(24)
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    permutation = torch.randperm(cols, generator=generator)
    order = ColumnOrder(permutation, [(0, 8), (8, 16), (16, 24)])
    spec = parse_pattern(pattern, sparsity)
    result = sparsegpt_sweep(weight, hessian, order, spec, damping)
    pruned = result.weight == 0

    inverse_diagonal = []
    for position in range(cols):
        free = permutation[position:]
        inverse_diagonal.append(float(torch.linalg.inv(damped[free][:, free])[0, 0]))

    # Unstructured: the lowest scores of each block at the block's start; N:M: the lowest N
    # per row of each group at the group's start.
    starts = [start for start, _ in order.block_bounds] if not spec.is_nm else list(range(0, cols, spec.m))
    for start in starts:
        width = 8 if not spec.is_nm else spec.m
        current = _weights_at_position(weight, result.weight, damped, permutation, start)[:, :width]
        scores = [
            [float(current[row, k]) ** 2 / inverse_diagonal[start + k] for k in range(width)] for row in range(rows)
        ]
        chosen = pruned[:, permutation[start : start + width]]
        if spec.is_nm:
            for row in range(rows):
                expected = _lowest_indices(scores[row], spec.n)
                assert {k for k in range(width) if chosen[row, k]} == expected, (start, row)
        else:
            flat = [score for row_scores in scores for score in row_scores]
            expected = _lowest_indices(flat, math.floor(0.5 * rows * width))
            assert {index for index, value in enumerate(chosen.reshape(-1).tolist()) if value} == expected, start


# ---------------------------------------------------------------- ROSE ordering


def test_non_columnar_rose_equals_sparsegpt():
    weight, hessian, act_sq_norm = _layer(32, 64, seed=7)
    pattern = parse_pattern("unstructured", 0.5)
    direct = sparsegpt_sweep(weight, hessian, identity_order(64, 16), pattern).weight
    sparsegpt, _ = prune_matrix(weight, hessian, act_sq_norm, "sparsegpt", 0.5, block_size=16)
    rose, stats = prune_matrix(weight, hessian, act_sq_norm, "rose", 0.5, block_size=16)

    assert stats.relative_range < 0.5
    assert not stats.reordered
    assert torch.equal(sparsegpt, direct)
    assert torch.equal(rose, sparsegpt)

    # A columnar layer with τ = 1 is never reordered either, since r ≤ 1 always.
    weight, hessian, act_sq_norm = _layer(32, 64, seed=7, loud=slice(48, 64))
    sparsegpt, _ = prune_matrix(weight, hessian, act_sq_norm, "sparsegpt", 0.5, block_size=16)
    rose, stats = prune_matrix(weight, hessian, act_sq_norm, "rose", 0.5, block_size=16, threshold=1.0)
    assert stats.relative_range > 0.5
    assert not stats.reordered
    assert torch.equal(rose, sparsegpt)


def _hand_case_layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights ±1 (±4 in columns 48–63) with a_j = 1 (16 in columns 48–63)."""
    generator = torch.Generator().manual_seed(8)
    signs = torch.where(torch.rand(32, 64, generator=generator) < 0.5, -1.0, 1.0)
    weight = signs.clone()
    weight[:, 48:] *= 4.0
    act_sq_norm = torch.ones(64)
    act_sq_norm[48:] = 16.0
    inputs = _calibration_inputs(64, tokens=256, seed=8, loud=slice(48, 64), dtype=torch.float32)
    return weight, _hessian(inputs), act_sq_norm


def test_relative_range_matches_hand_value():
    # 32 × 64, blocks of 16. Every |W| is 1 and every a_j is 1, except the last block with
    # |W| = 4 and a_j = 16, so S = |W| · sqrt(a) is 1 there and 16 in the last block.
    # Pre-pruning at 50% removes 0.5 · 32 · 16 = 256 entries per block, so the block losses
    # are 256, 256, 256 and 256 · 16 = 4096, and r = (4096 − 256) / 4096 = 15/16.
    weight, hessian, act_sq_norm = _hand_case_layer()
    _, stats = prune_matrix(weight, hessian, act_sq_norm, "rose", 0.5, block_size=16)
    assert stats.block_loss == [256.0, 256.0, 256.0, 4096.0]
    assert stats.relative_range == 15 / 16
    assert stats.reordered

    # Columnar means r > τ strictly: at τ = r the layer keeps the identity order.
    _, stats = prune_matrix(weight, hessian, act_sq_norm, "rose", 0.5, block_size=16, threshold=15 / 16)
    assert not stats.reordered

    # The same layer without the loud block: equal block losses, r = 0.
    uniform_weight = weight.sign()
    _, stats = prune_matrix(uniform_weight, hessian, torch.ones(64), "rose", 0.5, block_size=16)
    assert stats.block_loss == [256.0, 256.0, 256.0, 256.0]
    assert stats.relative_range == 0.0
    assert not stats.reordered


def test_rose_reorders_columnar_layer_only():
    # 64 × 160 with blocks [0, 128) and [128, 160): the short last block is the loud one, so
    # ROSE processes it first and it stays a single sweep block of 32 columns.
    weight, hessian, act_sq_norm = _layer(64, 160, seed=9, loud=slice(128, 160))
    pattern = parse_pattern("unstructured", 0.5)
    order = rose_order(weight, act_sq_norm, pattern, block_size=128)
    assert order.reordered
    assert order.block_bounds == [(0, 32), (32, 160)]
    assert sorted(order.permutation[:32].tolist()) == list(range(128, 160))
    assert sorted(order.permutation.tolist()) == list(range(160))

    uniform_weight, _, uniform_norms = _layer(64, 256, seed=9)
    order = rose_order(uniform_weight, uniform_norms, pattern, block_size=128)
    assert not order.reordered
    assert torch.equal(order.permutation, torch.arange(256))
    assert order.block_bounds == [(0, 128), (128, 256)]


@pytest.mark.parametrize(
    "variant,blocks_descending,columns_descending",
    [("descending", True, True), ("ascending", False, False), ("blocks_only", True, None), ("columns_only", None, True)],
)
def test_rose_order_matches_direct_ranking(variant, blocks_descending, columns_descending):
    rows, cols, block_size = 32, 80, 16
    weight, _, act_sq_norm = _layer(rows, cols, seed=25, loud=slice(32, 48))
    score = weight.abs() * act_sq_norm.sqrt()

    # Pre-pruning by k-th smallest value per block (no ties in random data), then the losses.
    column_loss = torch.zeros(cols, dtype=torch.float64)
    block_loss = []
    for start in range(0, cols, block_size):
        block = score[:, start : start + block_size]
        count = math.floor(0.5 * block.numel())
        cutoff = torch.kthvalue(block.reshape(-1), count).values
        loss = torch.where(block <= cutoff, block, torch.zeros_like(block))
        column_loss[start : start + block_size] = loss.sum(dim=0)
        block_loss.append(float(loss.sum()))
    relative_range = (max(block_loss) - min(block_loss)) / max(block_loss)

    blocks = list(range(len(block_loss)))
    if blocks_descending is not None:
        blocks = sorted(blocks, key=lambda k: block_loss[k], reverse=blocks_descending)
    expected = []
    for k in blocks:
        columns = list(range(k * block_size, (k + 1) * block_size))
        if columns_descending is not None:
            columns = sorted(columns, key=lambda j: float(column_loss[j]), reverse=columns_descending)
        expected.extend(columns)

    order = rose_order(weight, act_sq_norm, parse_pattern("unstructured", 0.5), block_size, 0.5, variant)
    assert order.relative_range == pytest.approx(relative_range, rel=1e-12)
    assert order.block_loss == pytest.approx(block_loss, rel=1e-12)
    assert order.reordered
    assert order.permutation.tolist() == expected
    assert order.block_bounds == [(start, start + block_size) for start in range(0, cols, block_size)]


def test_rose_beats_sparsegpt_on_columnar_layer():
    # The loud block is last in original order, so SparseGPT has no later columns left to absorb
    # its pruning error; ROSE processes it first.
    weight, hessian, act_sq_norm = _layer(32, 64, seed=10, loud=slice(48, 64))
    _, sparsegpt = prune_matrix(weight, hessian, act_sq_norm, "sparsegpt", 0.5, block_size=16)
    _, rose = prune_matrix(weight, hessian, act_sq_norm, "rose", 0.5, block_size=16)
    assert rose.reordered
    assert rose.relative_error < sparsegpt.relative_error, (rose.relative_error, sparsegpt.relative_error)


# ---------------------------------------------------------------- exact counts


def _sweep_order(method: str, weight, act_sq_norm, pattern: str, sparsity, block_size: int = 128) -> ColumnOrder:
    """The processing order ``prune_matrix`` uses for a sweep method."""
    if method == "sparsegpt":
        return identity_order(weight.shape[1], block_size)
    spec = parse_pattern(pattern, sparsity)
    return rose_order(weight, act_sq_norm, spec, block_size, 0.5, ROSE_METHODS[method])


@pytest.mark.parametrize("rows,cols,kind", COUNT_CASES)
@pytest.mark.parametrize("method", SWEEP_METHODS)
def test_unstructured_count_exact_per_block(rows, cols, kind, method):
    loud = slice(cols - cols % 128, cols) if kind != "random" else None  # the short last block
    if kind == "quantised":
        weight, hessian, act_sq_norm = _quantised_layer(rows, cols, seed=11, loud=loud)
    else:
        weight, hessian, act_sq_norm = _layer(rows, cols, seed=11, loud=loud, dtype=torch.float32)
    sparsity = 0.7
    pruned, stats = prune_matrix(weight, hessian, act_sq_norm, method, sparsity)
    order = _sweep_order(method, weight, act_sq_norm, "unstructured", sparsity)
    if kind == "columnar" and method != "sparsegpt":
        assert stats.reordered

    assert stats.reordered == order.reordered
    for start, end in order.block_bounds:
        block = pruned[:, order.permutation[start:end]]
        expected = math.floor(sparsity * rows * (end - start))
        assert int((block == 0).sum()) == expected, (start, end)


@pytest.mark.parametrize("rows,cols,kind", COUNT_CASES)
@pytest.mark.parametrize("method", METHODS)
def test_nm_exact_in_original_groups(rows, cols, kind, method):
    loud = slice(cols - cols % 128, cols) if kind != "random" else None  # the short last block
    if kind == "quantised":
        weight, hessian, act_sq_norm = _quantised_layer(rows, cols, seed=12, loud=loud)
    else:
        weight, hessian, act_sq_norm = _layer(rows, cols, seed=12, loud=loud, dtype=torch.float32)
    pruned, stats = prune_matrix(weight, hessian, act_sq_norm, method, None, pattern="2:4")

    zeros = _zeros_per_nm_group(pruned, 4)
    assert torch.equal(zeros, torch.full_like(zeros, 2))
    assert stats.sparsity == 0.5


def test_nm_reordering_keeps_groups_contiguous():
    weight, hessian, act_sq_norm = _layer(32, 64, seed=13, loud=slice(16, 32))
    for method in ROSE_VARIANT_METHODS:
        pruned, stats = prune_matrix(weight, hessian, act_sq_norm, method, None, pattern="2:4", block_size=16)
        order = rose_order(weight, act_sq_norm, parse_pattern("2:4"), 16, 0.5, ROSE_METHODS[method])
        assert stats.reordered, method
        assert not torch.equal(order.permutation, torch.arange(64)), method

        # Every run of 4 processing positions is one original group of 4 contiguous columns.
        groups = order.permutation.reshape(-1, 4)
        assert torch.equal(groups - groups[:, :1], torch.arange(4).expand(16, 4)), method
        assert torch.equal(groups[:, 0] % 4, torch.zeros(16, dtype=torch.long)), method

        zeros = _zeros_per_nm_group(pruned, 4)
        assert torch.equal(zeros, torch.full_like(zeros, 2)), method


# ---------------------------------------------------------------- rejected inputs


@pytest.mark.parametrize("method", METHODS)
def test_nm_rejects_indivisible_columns(method):
    weight = torch.randn(576, 578)
    hessian = torch.eye(578)
    with pytest.raises(ValueError, match=r"multiple of 4.*578 columns"):
        prune_matrix(weight, hessian, None, method, None, pattern="2:4", name="block 0 mlp.up_proj")


@pytest.mark.parametrize("pattern", ["4:4", "5:4", "0:4"])
def test_nm_rejects_n_not_below_m(pattern):
    weight, hessian, act_sq_norm = _layer(8, 16)
    with pytest.raises(ValueError, match=re.escape(repr(pattern))):
        prune_matrix(weight, hessian, act_sq_norm, "sparsegpt", None, pattern=pattern)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_rejected(sparsity):
    weight, hessian, act_sq_norm = _layer(8, 16)
    with pytest.raises(ValueError, match=re.escape(repr(sparsity))):
        prune_matrix(weight, hessian, act_sq_norm, "sparsegpt", sparsity)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_hessian_names_matrix(bad_value, method):
    weight, hessian, act_sq_norm = _layer(8, 16)
    hessian[3, 5] = bad_value
    with pytest.raises(ValueError, match="block 3 mlp.down_proj.*NaN or inf"):
        prune_matrix(weight, hessian, act_sq_norm, method, 0.5, name="block 3 mlp.down_proj")


# ---------------------------------------------------------------- degenerate Hessians


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", None)])
@pytest.mark.parametrize("method", SWEEP_METHODS)
def test_dead_inputs_get_zero_weights(method, pattern, sparsity):
    # Features 3, 17 and 30 never fire: their rows and columns of H, and their a_j, are 0.
    dead = [3, 17, 30]
    weight, hessian, act_sq_norm = _layer(16, 64, seed=14, loud=slice(48, 64))
    hessian[dead, :] = 0.0
    hessian[:, dead] = 0.0
    act_sq_norm[dead] = 0.0
    pruned, stats = prune_matrix(weight, hessian, act_sq_norm, method, sparsity, pattern=pattern, block_size=16)

    assert bool(torch.isfinite(pruned).all())
    assert torch.equal(pruned[:, dead], torch.zeros(16, 3, dtype=pruned.dtype))
    assert math.isfinite(stats.relative_error)
    assert all(math.isfinite(point) for point in stats.error_curve)


def _indefinite_hessian(cols: int, smallest_eigenvalue: float) -> torch.Tensor:
    """A symmetric matrix with mean diagonal 1 and the given (negative) smallest eigenvalue."""
    generator = torch.Generator().manual_seed(15)
    basis, _ = torch.linalg.qr(torch.randn(cols, cols, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(0.5, 1.5, cols, dtype=torch.float64)
    eigenvalues[0] = smallest_eigenvalue
    eigenvalues *= cols / eigenvalues.sum()  # trace = cols, so mean(diag H) = 1
    return basis @ torch.diag(eigenvalues) @ basis.T


def test_cholesky_failure_retries_with_damping():
    # Smallest eigenvalue about −0.05 and mean(diag H) = 1: damping 0.01 leaves H_d indefinite,
    # damping 0.1 (one retry at ×10) makes it positive definite.
    hessian = _indefinite_hessian(16, -0.05)
    assert -0.1 < float(torch.linalg.eigvalsh(hessian)[0]) < -0.01
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    for method in SWEEP_METHODS:
        pruned, stats = prune_matrix(weight, hessian, None, method, 0.5, block_size=8, name="block 1 self_attn.k_proj")
        assert stats.cholesky_retries == 1, method
        assert stats.damping == pytest.approx(0.1), method
        assert bool(torch.isfinite(pruned).all()), method


def test_cholesky_failure_raises_named_error():
    # A negative definite H cannot be rescued: damping adds λ · mean(diag H) < 0.
    hessian = -torch.eye(16, dtype=torch.float64)
    weight = torch.randn(8, 16, dtype=torch.float64)
    for method in SWEEP_METHODS:
        with pytest.raises(CholeskyError, match="block 1 self_attn.k_proj"):
            prune_matrix(weight, hessian, torch.ones(16, dtype=torch.float64), method, 0.5, name="block 1 self_attn.k_proj")


# ---------------------------------------------------------------- results


@pytest.mark.parametrize("method", METHODS)
def test_zero_sparsity_returns_weights_unchanged(method):
    weight, hessian, act_sq_norm = _layer(16, 48, seed=17, dtype=torch.float32)
    pruned, stats = prune_matrix(weight, hessian, act_sq_norm, method, 0.0, block_size=16)
    assert torch.equal(pruned, weight)
    assert stats.sparsity == 0.0
    assert stats.relative_error == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.75), ("2:4", None)])
@pytest.mark.parametrize("method", METHODS)
def test_pruned_weights_finite_and_exact_zero(method, pattern, sparsity, dtype):
    # A rank-deficient Hessian (8 tokens for 64 features) with one outlier feature, as a short
    # calibration set gives; only damping makes it invertible.
    inputs = _calibration_inputs(64, tokens=8, seed=18, dtype=torch.float32)
    inputs[:, 5] *= 100.0
    hessian = _hessian(inputs)
    weight = (0.05 * torch.randn(48, 64, generator=torch.Generator().manual_seed(19))).to(dtype)
    pruned, stats = prune_matrix(weight, hessian, None, method, sparsity, pattern=pattern, block_size=16)

    assert pruned.dtype == dtype
    assert bool(torch.isfinite(pruned).all())
    if pattern == "2:4":
        zeros = _zeros_per_nm_group(pruned, 4)
        assert torch.equal(zeros, torch.full_like(zeros, 2))
    else:
        # Exactly the target count is zero, so pruned entries are exact zeros, not tiny values.
        assert int((pruned == 0).sum()) == 0.75 * pruned.numel()
    assert stats.sparsity == (0.75 if sparsity else 0.5)


def test_wanda_mask_matches_direct_scores():
    rows, cols = 6, 12
    weight, hessian, act_sq_norm = _layer(rows, cols, seed=20)
    score = [[abs(float(weight[i, j])) * math.sqrt(float(act_sq_norm[j])) for j in range(cols)] for i in range(rows)]

    pruned, _ = prune_matrix(weight, hessian, act_sq_norm, "wanda", 0.5)
    for i in range(rows):
        zeros = {j for j in range(cols) if pruned[i, j] == 0}
        assert zeros == _lowest_indices(score[i], 6), i
    kept = pruned != 0
    assert torch.equal(pruned[kept], weight[kept])

    pruned, _ = prune_matrix(weight, hessian, act_sq_norm, "wanda", None, pattern="2:4")
    for i in range(rows):
        for group in range(0, cols, 4):
            zeros = {j for j in range(group, group + 4) if pruned[i, j] == 0}
            lowest = {group + j for j in _lowest_indices(score[i][group : group + 4], 2)}
            assert zeros == lowest, (i, group)


def test_magnitude_mask_matches_direct_scores():
    rows, cols = 6, 12
    weight, hessian, act_sq_norm = _layer(rows, cols, seed=21)
    flat = [abs(float(value)) for value in weight.reshape(-1)]

    pruned, _ = prune_matrix(weight, hessian, act_sq_norm, "magnitude", 0.4)
    zeros = {index for index, value in enumerate(pruned.reshape(-1).tolist()) if value == 0}
    assert zeros == _lowest_indices(flat, math.floor(0.4 * rows * cols))
    kept = pruned != 0
    assert torch.equal(pruned[kept], weight[kept])

    pruned, _ = prune_matrix(weight, hessian, act_sq_norm, "magnitude", None, pattern="2:4")
    for i in range(rows):
        for group in range(0, cols, 4):
            zeros = {j for j in range(group, group + 4) if pruned[i, j] == 0}
            lowest = {group + j for j in _lowest_indices(flat[i * cols + group : i * cols + group + 4], 2)}
            assert zeros == lowest, (i, group)


@pytest.mark.parametrize("method", ["sparsegpt", "rose"])
def test_error_curve_ends_at_damped_error(method):
    weight, hessian, act_sq_norm = _layer(24, 64, seed=22, loud=slice(16, 32))
    pruned, stats = prune_matrix(weight, hessian, act_sq_norm, method, 0.6, block_size=16, damping=0.05)
    damped = _damped(hessian, stats.damping)
    delta = weight - pruned

    assert stats.damping == 0.05
    assert len(stats.error_curve) == 4
    assert stats.error_curve == sorted(stats.error_curve)
    expected_damped = _quadratic_error(delta, damped) / _quadratic_error(weight, damped)
    assert stats.error_curve[-1] == pytest.approx(expected_damped, rel=1e-9)
    expected = _quadratic_error(delta, hessian) / _quadratic_error(weight, hessian)
    assert stats.relative_error == pytest.approx(expected, rel=1e-9)
    assert stats.relative_error != pytest.approx(stats.error_curve[-1], rel=1e-6)
