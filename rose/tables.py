"""Tables of the kinds in the ROSE paper (Su & Wang, arXiv 2603.05878), from summary.csv:
perplexity, zero-shot accuracy and pruning time.

Each table is written twice: a tidy CSV (one row per model, method, target and quantity, with
mean, standard deviation and the number of seeds) and a Markdown table of methods by targets or
tasks. With several calibration seeds a cell reads ``mean ± std``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from rose.figures import target_sort_key, target_label
from rose.io import atomic_path


def main_grid(summary: pd.DataFrame, block_size: int, nsamples: int) -> pd.DataFrame:
    """Rows of the main grid: the configured block size and number of windows (dense rows included)."""
    keep = (summary["block_size"].isna() | (summary["block_size"] == block_size)) & (summary["nsamples"] == nsamples)
    rows = summary[keep].copy()
    rows["target"] = [target_label(p, s) for p, s in zip(rows["pattern"], rows["sparsity"])]
    return rows


def _aggregate(rows: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    result = rows.groupby(keys, sort=False)[value].agg(mean="mean", std="std", seeds="count").reset_index()
    return result


def _cell(mean: float, std: float, seeds: int, digits: int) -> str:
    if mean is None or not math.isfinite(mean):
        return ""
    if seeds > 1 and math.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _markdown(frame: pd.DataFrame, title: str, group_keys: list[str], row_key: str, column_key: str, digits: int, notes: list[str]) -> str:
    """Render one Markdown table per ``group_keys`` value, ``row_key`` down and ``column_key`` across."""
    lines = [f"# {title}", "", *notes, ""]
    for group, part in frame.groupby(group_keys, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        lines += [f"## {', '.join(map(str, group))}", ""]
        columns = list(dict.fromkeys(part[column_key]))
        if column_key == "target":
            # The dense row repeats its value under every target instead of taking a column of its own.
            columns = sorted([c for c in columns if c != "dense"], key=target_sort_key) or ["dense"]
        row_names = list(dict.fromkeys(part.sort_values(row_key, key=lambda s: s != "dense")[row_key]))
        lines.append(f"| {row_key} | " + " | ".join(map(str, columns)) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for name in row_names:
            cells = []
            for column in columns:
                match = part[(part[row_key] == name) & (part[column_key] == column)]
                if match.empty and column_key == "target":
                    match = part[(part[row_key] == name) & (part[column_key] == "dense")]
                cells.append(_cell(match["mean"].iloc[0], match["std"].iloc[0], int(match["seeds"].iloc[0]), digits) if len(match) else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _write(frame: pd.DataFrame, markdown: str, out_csv: Path, out_md: Path | None) -> pd.DataFrame:
    with atomic_path(out_csv) as staged:
        frame.to_csv(staged, index=False, float_format="%.6g")
    if out_md is not None:
        with atomic_path(out_md) as staged:
            staged.write_text(markdown)
    return frame


def _seed_note(rows: pd.DataFrame) -> str:
    seeds = sorted(int(s) for s in rows["seed"].dropna().unique())
    if len(seeds) > 1:
        return f"- mean ± standard deviation over calibration seeds {', '.join(map(str, seeds))}"
    return f"- calibration seed {seeds[0]}" if seeds else "- no calibration seed recorded"


def perplexity_table(rows: pd.DataFrame, out_csv: Path, out_md: Path) -> pd.DataFrame:
    """Perplexity of every method (rows) at every target (columns), per model and dataset."""
    frame = _aggregate(rows, ["model", "dataset", "method", "target"], "perplexity")
    notes = [_seed_note(rows), f"- windows evaluated: {', '.join(map(str, sorted(rows['windows'].unique())))}"]
    markdown = _markdown(frame, "Perplexity (lower is better)", ["model", "dataset"], "method", "target", 2, notes)
    return _write(frame, markdown, out_csv, out_md)


def zeroshot_table(rows: pd.DataFrame, out_csv: Path, out_md: Path | None = None) -> pd.DataFrame:
    """Zero-shot accuracy in percent per model, method, target and task (plus their mean).

    summary.csv repeats a run's zero-shot columns on each perplexity dataset's row, so only the
    first dataset's rows are read.
    """
    columns = [c for c in rows.columns if c.startswith("zeroshot_")]
    if not columns:
        raise ValueError("summary.csv has no zeroshot_<task> columns; configure zeroshot.tasks")
    first = rows[rows["dataset"] == rows["dataset"].iloc[0]]
    long = first.melt(id_vars=["model", "method", "target", "seed"], value_vars=columns, var_name="task", value_name="accuracy")
    long = long.dropna(subset=["accuracy"])
    long["task"] = long["task"].str.removeprefix("zeroshot_")
    long["accuracy"] = 100 * long["accuracy"]
    frame = _aggregate(long, ["model", "method", "target", "task"], "accuracy")
    frame["row"] = frame["method"] + " " + frame["target"]
    notes = [_seed_note(first), "- accuracy in percent: acc_norm where the task defines it, acc otherwise; mean is over tasks"]
    markdown = _markdown(frame, "Zero-shot accuracy (%)", ["model"], "row", "task", 2, notes)
    return _write(frame.drop(columns="row"), markdown, out_csv, out_md)


def pruning_time_table(rows: pd.DataFrame, out_csv: Path, out_md: Path) -> pd.DataFrame:
    """Seconds spent in the pruning algorithm (summed over sublayers) per method and target.

    The time is the prune_block statistics' ``seconds``; loading data and computing Hessians are
    not included (the stage-cost figure has the jobs' wall time).
    """
    pruned = rows[rows["method"] != "dense"]
    pruned = pruned[pruned["dataset"] == pruned["dataset"].iloc[0]] if len(pruned) else pruned
    frame = _aggregate(pruned, ["model", "method", "target"], "pruning_seconds")
    notes = [_seed_note(pruned) if len(pruned) else "- no pruned runs", "- seconds in the pruning algorithm, summed over every sublayer"]
    markdown = _markdown(frame, "Pruning time (s)", ["model"], "method", "target", 1, notes)
    return _write(frame, markdown, out_csv, out_md)
