"""The results table and the perplexity-versus-sparsity figure."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd

from rose.config import Run
from rose.io import atomic_path, read_json
from rose.zeroshot import summary_columns

log = logging.getLogger(__name__)

_CALIBRATION_TAG = re.compile(r".+_n(\d+)_l\d+_seed(\d+)")

COLUMNS = [
    "model",
    "method",
    "pattern",
    "sparsity",
    "block_size",
    "calibration",
    "nsamples",
    "seed",
    "dataset",
    "perplexity",
    "windows",
    "sparsity_reached",
    "pruning_seconds",
]


def summary_row(
    model: str,
    run: Run,
    calibration: str,
    block_size: int,
    perplexity_file: Path,
    sparsity_file: Path,
    zeroshot_file: Path | None = None,
) -> dict:
    """Build one row of summary.csv; a zero-shot record adds a column per task headline and their mean.

    ``block_size`` is the configured sweep block size, used unless the run overrides it.
    """
    evaluation = read_json(perplexity_file)
    report = read_json(sparsity_file)
    zeroshot = summary_columns(read_json(zeroshot_file)) if zeroshot_file is not None else {}
    settings = _CALIBRATION_TAG.fullmatch(calibration)
    return {
        "model": model,
        "method": run.method,
        "pattern": run.pattern,
        "sparsity": run.sparsity,
        "block_size": (run.block_size or block_size) if run.method != "dense" else None,
        "calibration": calibration,
        "nsamples": int(settings.group(1)) if settings else None,
        "seed": int(settings.group(2)) if settings else None,
        "dataset": evaluation["dataset"],
        "perplexity": evaluation["perplexity"],
        "windows": evaluation["windows"],
        "sparsity_reached": report["overall"],
        "pruning_seconds": report["pruning_seconds"],
        **zeroshot,
    }


def write_table(rows: list[dict], out: Path) -> pd.DataFrame:
    # Columns beyond COLUMNS (the zero-shot ones) follow in the order the rows first name them.
    extra = list(dict.fromkeys(key for row in rows for key in row if key not in COLUMNS))
    frame = pd.DataFrame(rows, columns=COLUMNS + extra).sort_values(["model", "dataset", "pattern", "sparsity", "method"])
    with atomic_path(out) as staged:
        frame.to_csv(staged, index=False, float_format="%.6g")
    return frame


def plot_perplexity_vs_sparsity(frame: pd.DataFrame, out: Path, block_size: int, nsamples: int) -> None:
    """One panel per (model, dataset): a line per method over unstructured sparsities, dense dashed.

    Only the main grid is drawn (sweep rows with other block sizes or window counts are left
    out). With several seeds a line is the mean and the band spans ± one standard deviation.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = frame[(frame["block_size"].isna() | (frame["block_size"] == block_size)) & (frame["nsamples"] == nsamples)]
    panels = list(main.groupby(["model", "dataset"], sort=True))
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6.4 * max(len(panels), 1), 4.8), squeeze=False)
    for ax, ((model, dataset), group) in zip(axes[0], panels):
        seeds = sorted(group["seed"].dropna().unique())
        pruned = group[(group["pattern"] == "unstructured") & (group["method"] != "dense")]
        for method, rows in pruned.groupby("method"):
            stats = rows.groupby("sparsity")["perplexity"].agg(["mean", "std"]).reset_index().sort_values("sparsity")
            ax.plot(stats["sparsity"] * 100, stats["mean"], marker="o", label=method)
            if len(seeds) > 1:
                ax.fill_between(stats["sparsity"] * 100, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
        dense = group[group["method"] == "dense"]["perplexity"]
        if len(dense) and math.isfinite(dense.mean()):
            ax.axhline(dense.mean(), color="grey", linestyle="--", label=f"dense ({dense.mean():.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("unstructured sparsity (%)")
        ax.set_ylabel(f"perplexity on {dataset} (log scale)")
        windows = int(group["windows"].max())
        seed_note = f"mean ± std over seeds {', '.join(str(int(s)) for s in seeds)}" if len(seeds) > 1 else f"seed {int(seeds[0])}"
        ax.set_title(
            f"{model}: perplexity vs sparsity\n{nsamples} calibration windows, {seed_note}, {windows} eval windows", fontsize=10
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(out) as staged:
        fig.savefig(staged, format="png", dpi=120)
    plt.close(fig)
