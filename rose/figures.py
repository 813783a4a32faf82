"""Figures of the kinds in the ROSE paper (Su & Wang, arXiv 2603.05878), each drawn from a tidy
table that is written next to it as CSV.

Every ``draw_*`` function takes plain frames or tensors, writes a PNG and the CSV of the numbers it
plotted, and returns that frame. Reading the workflow's files into those frames is done by the
``load_*`` functions, which the command line calls. With several calibration seeds, a value is
the mean over seeds and its spread (one standard deviation) is drawn as a band or an error bar.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rose.config import Run
from rose.io import atomic_path, read_json

log = logging.getLogger(__name__)

_CALIBRATION_TAG = re.compile(r".+_n(\d+)_l\d+_seed(\d+)")

# Column orders of the SparseGPT sweep, in the order the ordering ablation lists them. SparseGPT
# is the identity order; the rose_* variants change one part of ROSE's order.
ORDERING_METHODS = {
    "sparsegpt": "identity (SparseGPT)",
    "rose": "descending (ROSE)",
    "rose_ascending": "ascending",
    "rose_blocks_only": "blocks only",
    "rose_columns_only": "columns only",
}
SUBLAYER_ORDER = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
RELATIVE_ERROR_LABEL = "relative reconstruction error\ntr(ΔW H ΔWᵀ) / tr(W H Wᵀ)"
# Heatmaps are averaged over bins of rows and columns down to at most this many cells, so that
# a 4096 x 11008 matrix draws quickly and its CSV stays small.
HEATMAP_MAX_ROWS = 256
HEATMAP_MAX_COLS = 1024


def target_label(pattern: str, sparsity: float) -> str:
    """Name a pruning target as tables and titles show it: ``70% unstructured``, ``2:4`` or ``dense``."""
    if pattern == "dense":
        return "dense"
    if pattern == "unstructured":
        return f"{100 * sparsity:g}% unstructured"
    return pattern


def target_sort_key(label: str) -> tuple:
    """Order targets as tables list them: dense, unstructured by sparsity, then N:M patterns."""
    if label == "dense":
        return (-1, label)
    match = re.match(r"([0-9.]+)% unstructured", label)
    if match:
        return (0, float(match.group(1)))
    return (1, label)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: Path, frame: pd.DataFrame, out_csv: Path) -> pd.DataFrame:
    plt = _pyplot()
    with atomic_path(out_png) as staged:
        fig.savefig(staged, format="png", dpi=120)
    plt.close(fig)
    with atomic_path(out_csv) as staged:
        frame.to_csv(staged, index=False, float_format="%.6g")
    return frame


def _spread(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean, standard deviation (NaN for one seed) and number of seeds of ``value`` per ``keys``."""
    grouped = frame.groupby(keys, sort=True)[value]
    result = grouped.agg(mean="mean", std="std", seeds="count").reset_index()
    return result


def _seed_note(seeds: list[int]) -> str:
    if len(seeds) > 1:
        return f"mean ± std over seeds {', '.join(map(str, seeds))}"
    return f"seed {seeds[0]}" if seeds else "no seed"


def _seeds(frame: pd.DataFrame) -> list[int]:
    return sorted(int(seed) for seed in frame["seed"].dropna().unique())


def _grid(count: int, max_columns: int, width: float, height: float):
    plt = _pyplot()
    columns = min(max(count, 1), max_columns)
    rows = -(-max(count, 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


# Reading the workflow's files.


def parse_stats_entry(entry: str) -> tuple[str, Run, Path]:
    """Split a ``CALIBRATION,METHOD,TARGET,PATH`` command-line entry."""
    parts = entry.split(",", 3)
    if len(parts) != 4:
        raise ValueError(f"invalid stats entry {entry!r}: expected CALIBRATION,METHOD,TARGET,PATH")
    calibration, method, target, path = parts
    return calibration, Run(method, target), Path(path)


def load_block_stats(entries: list[tuple[str, Run, Path]]) -> pd.DataFrame:
    """Read prune_block statistics files into one row per (calibration, run, decoder block, sublayer)."""
    rows = []
    for calibration, run, path in entries:
        record = read_json(path)
        settings = _CALIBRATION_TAG.fullmatch(calibration)
        for item in record["sublayers"]:
            rows.append({
                "calibration": calibration,
                "nsamples": int(settings.group(1)) if settings else None,
                "seed": int(settings.group(2)) if settings else 0,
                "method": run.method,
                "target": target_label(run.pattern, run.sparsity),
                "pattern": run.pattern,
                "sparsity": run.sparsity,
                "block_size": record["settings"]["block_size"],
                "threshold": record["settings"].get("threshold"),
                "block": int(record["block"]),
                "sublayer": item["sublayer"],
                "relative_error": item["relative_error"],
                "relative_range": item["relative_range"],
                "reordered": bool(item["reordered"]),
                "block_loss": item["block_loss"],
                "error_curve": item["error_curve"],
                "seconds": item["seconds"],
            })
    if not rows:
        raise ValueError("no sublayer statistics found in the given files; pass at least one prune_block JSON file")
    return pd.DataFrame(rows)


def load_benchmarks(folder: Path, rules: list[str] | None = None) -> pd.DataFrame:
    """Read every Snakemake benchmark file under ``folder`` into a row: rule, job, wall seconds, max RSS in MB.

    The rule is the first folder below ``folder``. ``rules`` keeps only those rules, so that files
    of rules no longer in the workflow are left out.
    """
    rows = []
    for path in sorted(Path(folder).rglob("*.tsv")):
        rule = path.relative_to(folder).parts[0]
        if rules is not None and rule not in rules:
            continue
        table = pd.read_csv(path, sep="\t")
        if table.empty or "s" not in table or "max_rss" not in table:
            log.warning("skipping benchmark file %s: it has no s or max_rss column", path)
            continue
        # Benchmarks with --benchmark-repeats have one line per repeat; the first is the real job.
        max_rss = pd.to_numeric(table["max_rss"], errors="coerce").iloc[0]
        rows.append({"rule": rule, "job": str(path.relative_to(folder)), "seconds": float(table["s"].iloc[0]), "max_rss_mb": max_rss})
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb"])


def load_columnar_inputs(model_dir: Path, hessian_file: Path, sublayer: str, block: int):
    """Return the dense weight of ``sublayer`` in ``block`` (out x in) and its inputs' squared norms.

    The weight comes from the imported checkpoint, the activation norms from the Hessian file of
    that block (tensor ``act_sq_norm/<first sublayer of the group that shares the input>``).
    """
    import torch
    from safetensors import safe_open

    from rose.io import load_tensors

    _, header = load_tensors(hessian_file, names=[])
    leader = next((name for name, members in header["groups"].items() if sublayer in members), None)
    if leader is None:
        known = ", ".join(member for members in header["groups"].values() for member in members)
        raise ValueError(f"sublayer {sublayer!r} is not in {hessian_file}; known sublayers: {known}")
    tensors, _ = load_tensors(hessian_file, names=[f"act_sq_norm/{leader}"])
    act_sq_norm = tensors[f"act_sq_norm/{leader}"].float()

    name = f"{header['prefix']}.{block}.{sublayer}.weight"
    weight_file = Path(model_dir) / "model.safetensors"
    with safe_open(str(weight_file), framework="pt") as handle:
        if name not in handle.keys():
            raise ValueError(f"weight {name!r} not found in {weight_file}")
        weight = handle.get_tensor(name).float()
    if header.get("transposed", {}).get(sublayer):
        weight = weight.T  # Conv1D stores in x out
    if weight.shape[1] != act_sq_norm.numel():
        raise ValueError(f"{name} has {weight.shape[1]} input columns but {hessian_file} has {act_sq_norm.numel()} activation norms")
    return weight, act_sq_norm.to(torch.float32)


# Figures.


def draw_error_curve(stats: pd.DataFrame, model: str, sublayer: str, block: int, out_png: Path, out_csv: Path) -> pd.DataFrame:
    """Draw the cumulative reconstruction error of one sublayer after each sweep block.

    One panel per target, one line per sweep method (SparseGPT, ROSE and configured variants).
    """
    chosen = stats[(stats["block"] == block) & (stats["sublayer"] == sublayer) & stats["method"].isin(ORDERING_METHODS)]
    if chosen.empty:
        raise ValueError(f"no sweep-method statistics for block {block}, sublayer {sublayer!r}; check figures.block and figures.sublayer")
    points = chosen[["target", "method", "seed", "error_curve"]].explode("error_curve").dropna(subset=["error_curve"])
    points["sweep_block"] = points.groupby(["target", "method", "seed"]).cumcount() + 1
    points["error_curve"] = points["error_curve"].astype(float)
    frame = _spread(points, ["target", "method", "sweep_block"], "error_curve")
    frame = frame.rename(columns={"mean": "relative_error_mean", "std": "relative_error_std"})

    targets = sorted(frame["target"].unique(), key=target_sort_key)
    fig, axes = _grid(len(targets), 3, 5.2, 4.0)
    for ax, target in zip(axes, targets):
        for method in [m for m in ORDERING_METHODS if m in set(frame["method"])]:
            line = frame[(frame["target"] == target) & (frame["method"] == method)]
            if line.empty:
                continue
            ax.plot(line["sweep_block"], line["relative_error_mean"], marker="o", markersize=3, label=ORDERING_METHODS[method])
            if (line["seeds"] > 1).any():
                low = line["relative_error_mean"] - line["relative_error_std"]
                ax.fill_between(line["sweep_block"], low, line["relative_error_mean"] + line["relative_error_std"], alpha=0.2)
        ax.set_title(f"{target}", fontsize=10)
        ax.set_xlabel("sweep blocks processed")
        ax.set_ylabel(RELATIVE_ERROR_LABEL + ", damped H", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{model}: reconstruction error during the sweep, block {block} {sublayer}\n{_seed_note(_seeds(chosen))}", fontsize=11
    )
    fig.tight_layout()
    return _save(fig, out_png, frame, out_csv)


def _bin_mean(matrix: np.ndarray, max_rows: int, max_cols: int) -> tuple[np.ndarray, int, int]:
    """Average ``matrix`` over bins of whole rows and columns; return it and the two bin widths."""
    row_bin = -(-matrix.shape[0] // max_rows)
    col_bin = -(-matrix.shape[1] // max_cols)
    rows = -(-matrix.shape[0] // row_bin) * row_bin
    cols = -(-matrix.shape[1] // col_bin) * col_bin
    padded = np.full((rows, cols), np.nan)
    padded[: matrix.shape[0], : matrix.shape[1]] = matrix
    binned = np.nanmean(padded.reshape(rows // row_bin, row_bin, cols // col_bin, col_bin), axis=(1, 3))
    return binned, row_bin, col_bin


def draw_columnar(
    weight,
    act_sq_norm,
    layer_stats: dict,
    model: str,
    block: int,
    quantity: str,
    out_png: Path,
    out_csv: Path,
    out_heatmap_csv: Path,
) -> pd.DataFrame:
    """Draw a heatmap of |W| or the ROSE score |W|·sqrt(a), with sweep blocks and block losses.

    ``layer_stats`` is the ROSE statistics record of the sublayer (its ``block_loss`` per sweep
    block, or per N:M group, in the original column order). Returns the block-loss frame; the
    binned heatmap goes to ``out_heatmap_csv`` as a matrix (rows: output rows, columns: inputs).
    """
    plt = _pyplot()
    if quantity not in ("score", "magnitude"):
        raise ValueError(f"invalid heatmap quantity {quantity!r}: expected score or magnitude")
    magnitude = weight.abs().numpy().astype(np.float64)
    values = magnitude * np.sqrt(act_sq_norm.numpy().astype(np.float64))[None, :] if quantity == "score" else magnitude
    rows, cols = values.shape
    binned, row_bin, col_bin = _bin_mean(values, HEATMAP_MAX_ROWS, HEATMAP_MAX_COLS)

    block_size = int(layer_stats["block_size"])
    pattern = layer_stats["pattern"]
    unit = int(pattern.split(":")[1]) if ":" in pattern else block_size
    starts = np.arange(0, cols, unit)
    block_loss = np.asarray(layer_stats["block_loss"], dtype=float)
    if len(block_loss) != len(starts):
        raise ValueError(f"{len(block_loss)} block losses do not match {cols} columns in units of {unit}")
    ends = np.minimum(starts + unit, cols)
    frame = pd.DataFrame({
        "unit": np.arange(len(starts)),
        "first_column": starts,
        "last_column": ends - 1,
        "block_loss": block_loss,
        f"mean_{quantity}": [values[:, s:e].mean() for s, e in zip(starts, ends)],
    })

    fig, (heat_ax, bar_ax) = plt.subplots(
        2, 1, figsize=(10, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    vmax = float(np.nanpercentile(binned, 99))
    image = heat_ax.imshow(
        binned, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest",
        extent=(0, binned.shape[1] * col_bin, binned.shape[0] * row_bin, 0),
    )
    for boundary in range(block_size, cols, block_size):
        heat_ax.axvline(boundary, color="cyan", linewidth=0.8)
    label = "|W|·sqrt(a)  (ROSE score)" if quantity == "score" else "|W|"
    fig.colorbar(image, ax=heat_ax, label=f"{label}, clipped at 99th percentile", shrink=0.9)
    heat_ax.set_ylabel("output row")
    binning = f", mean over {row_bin}x{col_bin} bins" if row_bin * col_bin > 1 else ""
    heat_ax.set_title(f"{label} of the dense weight{binning}; cyan lines: sweep blocks of {block_size} columns", fontsize=9)

    bar_ax.bar(starts, block_loss, width=ends - starts, align="edge", color="tab:orange", edgecolor="black", linewidth=0.3)
    for boundary in range(block_size, cols, block_size):
        bar_ax.axvline(boundary, color="grey", linewidth=0.8)
    bar_ax.set_xlim(0, cols)
    bar_ax.set_xlabel("input column (original order)")
    unit_name = f"group of {unit} columns" if ":" in pattern else "sweep block"
    bar_ax.set_ylabel(f"block loss\nper {unit_name}", fontsize=9)
    target = target_label(pattern, layer_stats["target_sparsity"])
    reordered = "reordered" if layer_stats["reordered"] else "not reordered"
    fig.suptitle(
        f"{model}: block {block} {layer_stats['sublayer']}, ROSE at {target}\n"
        f"relative range of block loss r = {layer_stats['relative_range']:.3f} ({reordered})",
        fontsize=11,
    )
    plt_frame = pd.DataFrame(binned, columns=[f"col_{i * col_bin}" for i in range(binned.shape[1])])
    plt_frame.insert(0, "row", np.arange(binned.shape[0]) * row_bin)
    with atomic_path(out_heatmap_csv) as staged:
        plt_frame.to_csv(staged, index=False, float_format="%.5g")
    log.info("heatmap of %d x %d weights drawn as %d x %d bins", rows, cols, *binned.shape)
    return _save(fig, out_png, frame, out_csv)


def draw_reordering(stats: pd.DataFrame, model: str, threshold: float, out_png: Path, out_csv: Path) -> pd.DataFrame:
    """Draw ROSE's relative range of block loss for every decoder block and sublayer type.

    One heatmap per target; the colour scale is centred on the threshold τ, and a dot marks the
    layers ROSE reordered. Only the first seed is drawn, because the decisions differ per seed.
    """
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    rose = stats[stats["method"] == "rose"]
    if rose.empty:
        raise ValueError("no ROSE statistics given; the reordering figure needs method rose")
    seed = _seeds(rose)[0]
    rose = rose[rose["seed"] == seed]
    frame = rose[["target", "sublayer", "block", "relative_range", "reordered"]].sort_values(["target", "block", "sublayer"])
    targets = sorted(frame["target"].unique(), key=target_sort_key)
    sublayers = [s for s in SUBLAYER_ORDER if s in set(frame["sublayer"])] + sorted(set(frame["sublayer"]) - set(SUBLAYER_ORDER))
    blocks = sorted(frame["block"].unique())

    width = min(max(6.0, 0.32 * len(blocks) + 3.0), 18.0)
    fig, axes = plt.subplots(len(targets), 1, figsize=(width, 0.38 * len(sublayers) * len(targets) + 1.4 * len(targets) + 0.6), squeeze=False)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=min(max(threshold, 1e-6), 1 - 1e-6), vmax=1.0)
    for ax, target in zip(axes[:, 0], targets):
        part = frame[frame["target"] == target]
        ranges = part.pivot(index="sublayer", columns="block", values="relative_range").reindex(index=sublayers, columns=blocks)
        image = ax.imshow(ranges.to_numpy(dtype=float), aspect="auto", cmap="coolwarm", norm=norm, interpolation="nearest")
        marks = part[part["reordered"]]
        ax.scatter(
            [blocks.index(b) for b in marks["block"]], [sublayers.index(s) for s in marks["sublayer"]],
            s=10, color="black",
        )
        ax.set_yticks(range(len(sublayers)), sublayers, fontsize=8)
        step = max(1, len(blocks) // 20)
        ax.set_xticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]], fontsize=8)
        ax.set_xlabel("decoder block")
        count = int(part["reordered"].sum())
        ax.set_title(f"ROSE at {target}: {count} of {len(part)} sublayers reordered", fontsize=10)
        colorbar = fig.colorbar(image, ax=ax, pad=0.01)
        colorbar.set_label("relative range r", fontsize=8)
        colorbar.ax.axhline(threshold, color="black", linewidth=1.5)
        colorbar.set_ticks(sorted({0.0, 0.25, 0.5, 0.75, 1.0, threshold}))
        colorbar.ax.tick_params(labelsize=7)
    fig.suptitle(
        f"{model}: relative range r of ROSE's block loss, seed {seed}\ndots: reordered (r > τ = {threshold:g})", fontsize=11
    )
    fig.tight_layout()
    return _save(fig, out_png, frame, out_csv)


def draw_layer_error(stats: pd.DataFrame, model: str, out_png: Path, out_csv: Path) -> pd.DataFrame:
    """Draw the reconstruction error of every pruned sublayer, SparseGPT against ROSE.

    One scatter panel per target, one colour per sublayer type. Filled markers are layers that
    ROSE reordered. ROSE prunes the other layers in SparseGPT's order, so they lie on the diagonal.
    """
    plt = _pyplot()
    pair = stats[stats["method"].isin(["sparsegpt", "rose"])]
    keys = ["target", "block", "sublayer"]
    errors = _spread(pair, keys + ["method"], "relative_error").pivot(index=keys, columns="method", values=["mean", "std"])
    if "sparsegpt" not in errors["mean"] or "rose" not in errors["mean"]:
        raise ValueError("the per-layer error figure needs statistics of both sparsegpt and rose")
    frame = pd.DataFrame({
        "sparsegpt_error_mean": errors["mean"]["sparsegpt"],
        "sparsegpt_error_std": errors["std"]["sparsegpt"],
        "rose_error_mean": errors["mean"]["rose"],
        "rose_error_std": errors["std"]["rose"],
    }).reset_index()
    reordered = pair[pair["method"] == "rose"].groupby(keys)["reordered"].mean().rename("rose_reordered_fraction").reset_index()
    frame = frame.merge(reordered, on=keys, how="left").dropna(subset=["sparsegpt_error_mean", "rose_error_mean"])

    targets = sorted(frame["target"].unique(), key=target_sort_key)
    fig, axes = _grid(len(targets), 3, 5.0, 4.6)
    colors = plt.get_cmap("tab10")
    sublayers = [s for s in SUBLAYER_ORDER if s in set(frame["sublayer"])] + sorted(set(frame["sublayer"]) - set(SUBLAYER_ORDER))
    several_seeds = len(_seeds(pair)) > 1
    for ax, target in zip(axes, targets):
        part = frame[frame["target"] == target]
        for index, sublayer in enumerate(sublayers):
            points = part[part["sublayer"] == sublayer]
            filled = points["rose_reordered_fraction"] >= 0.5
            for mask, face in ((filled, colors(index)), (~filled, "none")):
                if not mask.any():
                    continue
                ax.errorbar(
                    points["sparsegpt_error_mean"][mask], points["rose_error_mean"][mask],
                    xerr=points["sparsegpt_error_std"][mask] if several_seeds else None,
                    yerr=points["rose_error_std"][mask] if several_seeds else None,
                    fmt="o", markersize=4, color=colors(index), markerfacecolor=face, elinewidth=0.6,
                    label=sublayer if face == "none" or not (~filled).any() else None,
                )
        low = float(part[["sparsegpt_error_mean", "rose_error_mean"]].min().min())
        high = float(part[["sparsegpt_error_mean", "rose_error_mean"]].max().max())
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        better = int((part["rose_error_mean"] < part["sparsegpt_error_mean"]).sum())
        ax.set_title(f"{target}: ROSE lower on {better} of {len(part)} sublayers", fontsize=9)
        ax.set_xlabel("SparseGPT relative reconstruction error")
        ax.set_ylabel("ROSE relative reconstruction error")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(
        f"{model}: per-sublayer error, SparseGPT vs ROSE (filled: reordered by ROSE; dashed: equal)\n{_seed_note(_seeds(pair))}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.03 * (-(-len(labels) // 4)), 1, 1))
    return _save(fig, out_png, frame, out_csv)


def _grouped_bars(ax, frame: pd.DataFrame, methods: list[str], targets: list[str], ylabel: str) -> None:
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        rows = frame[frame["method"] == method].set_index("target").reindex(targets)
        positions = np.arange(len(targets)) + (index - (len(methods) - 1) / 2) * width
        errors = rows["std"].fillna(0).to_numpy() if (rows["seeds"] > 1).any() else None
        ax.bar(positions, rows["mean"].to_numpy(), width, yerr=errors, capsize=3, label=ORDERING_METHODS[method])
    ax.set_xticks(range(len(targets)), targets, fontsize=8)
    ax.set_xlabel("target")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)


def draw_ordering_ablation(stats: pd.DataFrame, summary: pd.DataFrame | None, model: str, out_png: Path, out_csv: Path) -> pd.DataFrame:
    """Draw the column-order ablation, one bar per order and target.

    Left: the reconstruction error averaged over every pruned sublayer. Right, when ``summary``
    (rows of summary.csv for this model's main grid) is given: perplexity on its first dataset.
    """
    plt = _pyplot()
    methods = [m for m in ORDERING_METHODS if m in set(stats["method"])]
    ordering = stats[stats["method"].isin(methods)]
    per_seed = ordering.groupby(["target", "method", "seed"])["relative_error"].mean().rename("value").reset_index()
    error = _spread(per_seed, ["target", "method"], "value").assign(quantity="mean_relative_error")
    parts = [error]
    dataset = None
    if summary is not None and not summary.empty:
        dataset = summary["dataset"].iloc[0]
        rows = summary[(summary["dataset"] == dataset) & summary["method"].isin(methods)].copy()
        rows["target"] = [target_label(p, s) for p, s in zip(rows["pattern"], rows["sparsity"])]
        parts.append(_spread(rows, ["target", "method"], "perplexity").assign(quantity=f"perplexity_{dataset}"))
    frame = pd.concat(parts, ignore_index=True)[["quantity", "target", "method", "mean", "std", "seeds"]]

    targets = sorted(error["target"].unique(), key=target_sort_key)
    fig, axes = plt.subplots(1, len(parts), figsize=(max(5.0, 1.3 * len(targets) + 3) * len(parts), 4.6), squeeze=False)
    _grouped_bars(axes[0, 0], error, methods, targets, "mean relative reconstruction error\nover all pruned sublayers")
    axes[0, 0].set_title("reconstruction error", fontsize=10)
    if len(parts) > 1:
        _grouped_bars(axes[0, 1], parts[1], methods, targets, f"perplexity on {dataset}")
        axes[0, 1].set_yscale("log")
        axes[0, 1].set_title("perplexity (log scale)", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{model}: column order ablation of the SparseGPT sweep, {_seed_note(_seeds(ordering))}", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, out_png, frame, out_csv)


def draw_sensitivity(
    summary: pd.DataFrame, model: str, block_size: int, nsamples: int, methods: list[str], out_png: Path, out_csv: Path
) -> pd.DataFrame:
    """Draw perplexity against the sweep block size and against the number of calibration windows.

    ``summary`` contains the summary.csv rows of one model; the first dataset is drawn. The block-size
    sweep keeps ``nsamples`` windows and the window sweep keeps ``block_size``, as the workflow
    runs them. One row of panels per target, one line per method.
    """
    plt = _pyplot()
    dataset = summary["dataset"].iloc[0]
    rows = summary[(summary["dataset"] == dataset) & summary["method"].isin(methods)].copy()
    rows["target"] = [target_label(p, s) for p, s in zip(rows["pattern"], rows["sparsity"])]
    parts = []
    block_rows = rows[rows["nsamples"] == nsamples]
    if block_rows["block_size"].nunique() > 1:
        parts.append(_spread(block_rows, ["target", "method", "block_size"], "perplexity").rename(columns={"block_size": "value"}).assign(sweep="block_size"))
    window_rows = rows[rows["block_size"] == block_size]
    if window_rows["nsamples"].nunique() > 1:
        parts.append(_spread(window_rows, ["target", "method", "nsamples"], "perplexity").rename(columns={"nsamples": "value"}).assign(sweep="nsamples"))
    if not parts:
        raise ValueError("no sweep found in the summary: configure sweeps.block_size or sweeps.nsamples with two or more values")
    frame = pd.concat(parts, ignore_index=True)[["sweep", "target", "method", "value", "mean", "std", "seeds"]]
    frame = frame.rename(columns={"mean": "perplexity_mean", "std": "perplexity_std"})

    sweeps = list(dict.fromkeys(frame["sweep"]))
    targets = sorted(frame["target"].unique(), key=target_sort_key)
    fig, axes = plt.subplots(len(targets), len(sweeps), figsize=(5.2 * len(sweeps), 3.6 * len(targets)), squeeze=False)
    xlabels = {"block_size": f"sweep block size B (columns), {nsamples} windows", "nsamples": f"calibration windows, B = {block_size}"}
    for row, target in enumerate(targets):
        for column, sweep in enumerate(sweeps):
            ax = axes[row, column]
            for method in methods:
                line = frame[(frame["sweep"] == sweep) & (frame["target"] == target) & (frame["method"] == method)].sort_values("value")
                if line.empty:
                    continue
                errors = line["perplexity_std"] if (line["seeds"] > 1).any() else None
                ax.errorbar(line["value"], line["perplexity_mean"], yerr=errors, marker="o", capsize=3, label=ORDERING_METHODS.get(method, method))
            ax.set_xscale("log", base=2)
            values = sorted(frame[frame["sweep"] == sweep]["value"].unique())
            ax.set_xticks(values, [str(int(v)) for v in values])
            ax.minorticks_off()
            ax.set_xlabel(xlabels[sweep], fontsize=9)
            ax.set_ylabel(f"perplexity on {dataset}", fontsize=9)
            ax.set_title(target, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    seeds = sorted(int(s) for s in rows["seed"].dropna().unique())
    fig.suptitle(f"{model}: sensitivity of perplexity, {_seed_note(seeds)}", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_png, frame, out_csv)


def draw_stage_costs(benchmarks: pd.DataFrame, out_png: Path, out_csv: Path) -> pd.DataFrame:
    """Draw the wall time summed over a rule's jobs and the largest resident memory of one job."""
    plt = _pyplot()
    if benchmarks.empty:
        raise ValueError("no Snakemake benchmark files found; run the workflow first")
    frame = (
        benchmarks.groupby("rule")
        .agg(jobs=("job", "count"), total_seconds=("seconds", "sum"), max_seconds=("seconds", "max"), max_rss_mb=("max_rss_mb", "max"))
        .reset_index()
        .sort_values("total_seconds")
    )
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 0.45 * len(frame) + 1.8), sharey=True)
    time_ax.barh(frame["rule"], frame["total_seconds"], color="tab:blue")
    for y, (total, jobs) in enumerate(zip(frame["total_seconds"], frame["jobs"])):
        time_ax.text(total, y, f" {jobs} job{'s' if jobs > 1 else ''}", va="center", fontsize=8)
    time_ax.set_xlabel("wall time summed over jobs (s)")
    time_ax.set_xlim(0, frame["total_seconds"].max() * 1.25)
    time_ax.set_title("time per stage", fontsize=10)
    memory_ax.barh(frame["rule"], frame["max_rss_mb"], color="tab:green")
    memory_ax.set_xlabel("largest resident memory of one job (MB)")
    memory_ax.set_title("memory per stage", fontsize=10)
    for ax in (time_ax, memory_ax):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Stage time and memory from Snakemake benchmark files", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_png, frame, out_csv)
