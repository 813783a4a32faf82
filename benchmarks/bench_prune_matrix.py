"""Time `rose.prune_matrix` for SparseGPT and ROSE on SmolLM2-135M's sublayer shapes.

The weights are random float32 and each Hessian comes from random activations, so the timings
measure the arithmetic only and tell nothing about pruning quality. The ``reordered`` column
shows which ROSE runs took the reordered path. With random activations the 1536-column layer is
not columnar, but the 576-column layers often are. Their last sweep block has 64 columns, so its
block loss is about half of the others and the relative range sits near the threshold 0.5.
``--columnar`` makes one block of input features larger, so that every ROSE run is reordered.

On a machine whose cores are busy with other work, pass ``--threads 1``. On a 2-core machine
running another job, 2 threads made single cases 10 to 100 times slower and erratic (the
whole run took 6.5 minutes in place of 17 seconds).

Usage:
    python benchmarks/bench_prune_matrix.py --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from rose import prune_matrix

# SmolLM2-135M (hidden size 576, 9 query heads and 3 key/value heads of 64, MLP size 1536):
# (sublayers, out_features, in_features). Sublayers in one entry have the same shape.
SHAPES = [
    ("q_proj, o_proj", 576, 576),
    ("k_proj, v_proj", 192, 576),
    ("gate_proj, up_proj", 1536, 576),
    ("down_proj", 576, 1536),
]
# How many sublayers of one SmolLM2 block have each shape, for the whole-block total.
SUBLAYERS_PER_BLOCK = {"q_proj, o_proj": 2, "k_proj, v_proj": 2, "gate_proj, up_proj": 2, "down_proj": 1}
PATTERNS = [("unstructured", 0.5), ("2:4", None)]
METHODS = ("sparsegpt", "rose")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the median is reported (default 3)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--tokens", type=int, default=4096, help="random activation vectors per Hessian (default 4096)"
    )
    parser.add_argument(
        "--columnar",
        action="store_true",
        help="make input features 0-127 four times larger, so ROSE reorders every sublayer",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and activations")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"invalid --repeats {args.repeats}: expected at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"invalid --threads {args.threads}: expected at least 1")
    return args


def input_statistics(cols: int, tokens: int, columnar: bool, generator: torch.Generator):
    """Return the Hessian H = (2/T) XᵀX and the activation norms a = mean(X²) of random inputs X."""
    inputs = torch.randn(tokens, cols, generator=generator)
    if columnar:
        inputs[:, :128] *= 4.0
    hessian = 2.0 * inputs.T @ inputs / tokens
    return hessian, (inputs**2).mean(dim=0)


def median_seconds(repeats: int, *args, **kwargs) -> tuple[float, bool]:
    """Return the median wall time of ``prune_matrix(*args, **kwargs)`` and whether it reordered.

    One untimed run comes first, so one-off costs (library loading, allocator growth) are left out.
    """
    _, stats = prune_matrix(*args, **kwargs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        prune_matrix(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return statistics.median(times), stats.reordered


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    statistics_by_cols = {
        cols: input_statistics(cols, args.tokens, args.columnar, generator) for cols in sorted({c for _, _, c in SHAPES})
    }

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} CPU, "
        f"float32, {args.tokens} tokens, median of {args.repeats}, "
        f"{'columnar' if args.columnar else 'random'} activations"
    )
    header = f"{'sublayers':<20} {'shape':>10} {'pattern':<12} {'method':<10} {'seconds':>8} {'rose/sparsegpt':>14} {'reordered':>9}"
    print(header)
    print("-" * len(header))
    block_seconds: dict[tuple[str, str], float] = {}
    for sublayers, rows, cols in SHAPES:
        weight = 0.02 * torch.randn(rows, cols, generator=generator)
        hessian, act_sq_norm = statistics_by_cols[cols]
        for pattern, sparsity in PATTERNS:
            sparsegpt_seconds = None
            for method in METHODS:
                seconds, reordered = median_seconds(
                    args.repeats, weight, hessian, act_sq_norm, method, sparsity, pattern=pattern, name=sublayers
                )
                key = (pattern, method)
                block_seconds[key] = block_seconds.get(key, 0.0) + SUBLAYERS_PER_BLOCK[sublayers] * seconds
                if method == "sparsegpt":
                    sparsegpt_seconds = seconds
                    ratio = ""
                else:
                    ratio = f"{seconds / sparsegpt_seconds:.2f}"
                shape = f"{rows}x{cols}"
                print(
                    f"{sublayers:<20} {shape:>10} {pattern:<12} {method:<10} {seconds:>8.3f} {ratio:>14} "
                    f"{'yes' if reordered else 'no':>9}"
                )
    print("-" * len(header))
    for pattern, _ in PATTERNS:
        total = block_seconds[(pattern, "sparsegpt")]
        for method in METHODS:
            seconds = block_seconds[(pattern, method)]
            ratio = "" if method == "sparsegpt" else f"{seconds / total:.2f}"
            print(f"{'whole block (7)':<20} {'':>10} {pattern:<12} {method:<10} {seconds:>8.3f} {ratio:>14} {'':>9}")


if __name__ == "__main__":
    main()
