"""The results table and the perplexity-versus-sparsity figure."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from rose.io import atomic_path, read_json
from rose.zeroshot import summary_columns

log = logging.getLogger(__name__)

COLUMNS = [
    "model",
    "method",
    "pattern",
    "sparsity",
    "calibration",
    "dataset",
    "perplexity",
    "windows",
    "sparsity_reached",
    "pruning_seconds",
]


def summary_row(
    model: str,
    method: str,
    pattern: str,
    sparsity: float,
    calibration: str,
    perplexity_file: Path,
    sparsity_file: Path,
    zeroshot_file: Path | None = None,
) -> dict:
    """Build one row of summary.csv; a zero-shot record adds a column per task headline and their mean."""
    evaluation = read_json(perplexity_file)
    report = read_json(sparsity_file)
    zeroshot = summary_columns(read_json(zeroshot_file)) if zeroshot_file is not None else {}
    return {
        "model": model,
        "method": method,
        "pattern": pattern,
        "sparsity": sparsity,
        "calibration": calibration,
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


def plot_perplexity_vs_sparsity(frame: pd.DataFrame, out: Path) -> None:
    """One panel per (model, dataset): a line per method over unstructured sparsities, dense dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(frame.groupby(["model", "dataset", "calibration"], sort=True))
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6.4 * max(len(panels), 1), 4.8), squeeze=False)
    for ax, ((model, dataset, calibration), group) in zip(axes[0], panels):
        dense = group[group["method"] == "dense"]
        for method, rows in group[(group["pattern"] == "unstructured") & (group["method"] != "dense")].groupby("method"):
            rows = rows.sort_values("sparsity")
            ax.plot(rows["sparsity"] * 100, rows["perplexity"], marker="o", label=method)
        for _, row in dense.iterrows():
            if math.isfinite(row["perplexity"]):
                ax.axhline(row["perplexity"], color="grey", linestyle="--", label=f"dense ({row['perplexity']:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("unstructured sparsity (%)")
        ax.set_ylabel(f"perplexity on {dataset} (log scale)")
        ax.set_title(f"{model}: perplexity vs sparsity\ncalibration {calibration}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(out) as staged:
        fig.savefig(staged, format="png", dpi=120)
    plt.close(fig)
