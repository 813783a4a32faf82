"""Figures and tables: each draws a PNG and writes the numbers it plotted, from synthetic inputs,
and the workflow's figure rules run and bundle into a Snakemake report on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import snakemake, tiny_config
from rose import figures, tables
from rose.config import Run
from test_workflow import write_config

SUBLAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")


def write_stats(path: Path, method: str, run: Run, block: int, error: float, curve: list[float], reordered: bool) -> Path:
    """A prune_block statistics file with the fields the figures read."""
    sublayers = [
        {
            "sublayer": name,
            "method": method,
            "pattern": run.pattern,
            "target_sparsity": run.sparsity,
            "sparsity": run.sparsity,
            "reordered": reordered,
            "relative_range": 0.7 if reordered else 0.2,
            "block_loss": [3.0, 1.0],
            "relative_error": error * (index + 1),
            "error_curve": curve,
            "seconds": 0.5,
        }
        for index, name in enumerate(SUBLAYERS)
    ]
    record = {"block": block, "settings": {"method": method, "block_size": 32, "threshold": 0.5}, "sublayers": sublayers}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def stats(tmp_path) -> pd.DataFrame:
    """Two seeds, two blocks, SparseGPT, ROSE and ascending at 50%; ROSE halves SparseGPT's error."""
    entries = []
    errors = {"sparsegpt": 0.02, "rose": 0.01, "rose_ascending": 0.03}
    run = Run("x", "unstructured-0.5")
    for seed in (0, 1):
        calibration = f"corpus_n4_l32_seed{seed}"
        for method, error in errors.items():
            for block in (0, 1):
                curve = [error / 2 + seed * 1e-3, error + seed * 1e-3]
                path = write_stats(tmp_path / calibration / method / f"block_{block}.json", method, run, block, error, curve, method != "sparsegpt")
                entries.append((calibration, Run(method, run.target), path))
    return figures.load_block_stats(entries)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_error_curve_table_holds_seed_means(stats, tmp_path):
    frame = figures.draw_error_curve(stats, "tiny", "self_attn.o_proj", 0, tmp_path / "curve.png", tmp_path / "curve.csv")
    written = pd.read_csv(tmp_path / "curve.csv")
    assert_png(tmp_path / "curve.png")
    assert len(written) == len(frame) == 3 * 2
    rose_end = written[(written["method"] == "rose") & (written["sweep_block"] == 2)].iloc[0]
    # self_attn.o_proj's curve is the same for every sublayer here: [e/2 + s/1000, e + s/1000] over seeds 0 and 1.
    assert rose_end["relative_error_mean"] == pytest.approx(0.01 + 0.0005)
    assert rose_end["relative_error_std"] == pytest.approx(0.000707107, rel=1e-4)
    assert rose_end["seeds"] == 2


def test_error_curve_rejects_unknown_sublayer(stats, tmp_path):
    with pytest.raises(ValueError, match="figures.block and figures.sublayer"):
        figures.draw_error_curve(stats, "tiny", "self_attn.nope", 0, tmp_path / "curve.png", tmp_path / "curve.csv")


def test_columnar_table_holds_block_losses(tmp_path):
    weight = torch.ones(8, 80)
    weight[:, 32:64] = 3.0
    act_sq_norm = torch.full((80,), 4.0)
    layer = {
        "sublayer": "self_attn.o_proj", "pattern": "unstructured", "target_sparsity": 0.5, "block_size": 32,
        "block_loss": [1.0, 5.0, 2.0], "relative_range": 0.8, "reordered": True,
    }
    figures.draw_columnar(
        weight, act_sq_norm, layer, "tiny", 0, "score", tmp_path / "c.png", tmp_path / "c.csv", tmp_path / "heat.csv"
    )
    assert_png(tmp_path / "c.png")
    written = pd.read_csv(tmp_path / "c.csv")
    assert written["block_loss"].tolist() == [1.0, 5.0, 2.0]
    assert written["first_column"].tolist() == [0, 32, 64]
    assert written["last_column"].tolist() == [31, 63, 79]
    # score = |W| * sqrt(a) = |W| * 2.
    assert written["mean_score"].tolist() == pytest.approx([2.0, 6.0, 2.0])
    heatmap = pd.read_csv(tmp_path / "heat.csv")
    assert heatmap.shape == (8, 1 + 80)
    assert heatmap["col_40"].tolist() == pytest.approx([6.0] * 8)


def test_reordering_table_marks_reordered_layers(stats, tmp_path):
    figures.draw_reordering(stats, "tiny", 0.5, tmp_path / "r.png", tmp_path / "r.csv")
    assert_png(tmp_path / "r.png")
    written = pd.read_csv(tmp_path / "r.csv")
    assert len(written) == 2 * len(SUBLAYERS)  # first seed only
    assert written["reordered"].all()
    assert written["relative_range"].tolist() == pytest.approx([0.7] * len(written))


def test_layer_error_table_pairs_methods(stats, tmp_path):
    figures.draw_layer_error(stats, "tiny", tmp_path / "l.png", tmp_path / "l.csv")
    assert_png(tmp_path / "l.png")
    written = pd.read_csv(tmp_path / "l.csv")
    assert len(written) == 2 * len(SUBLAYERS)
    assert (written["rose_error_mean"] * 2).tolist() == pytest.approx(written["sparsegpt_error_mean"].tolist())


def test_ordering_ablation_table_has_error_and_perplexity(stats, tmp_path):
    summary = pd.DataFrame({
        "dataset": ["wiki"] * 4,
        "method": ["sparsegpt", "rose", "sparsegpt", "rose"],
        "pattern": ["unstructured"] * 4,
        "sparsity": [0.5] * 4,
        "seed": [0, 0, 1, 1],
        "perplexity": [20.0, 18.0, 22.0, 18.0],
    })
    figures.draw_ordering_ablation(stats, summary, "tiny", tmp_path / "a.png", tmp_path / "a.csv")
    assert_png(tmp_path / "a.png")
    written = pd.read_csv(tmp_path / "a.csv").set_index(["quantity", "method"])
    # Mean over the three sublayers of e, 2e, 3e.
    assert written.loc[("mean_relative_error", "rose"), "mean"] == pytest.approx(0.02)
    assert written.loc[("mean_relative_error", "rose_ascending"), "mean"] == pytest.approx(0.06)
    assert written.loc[("perplexity_wiki", "sparsegpt"), "mean"] == pytest.approx(21.0)
    assert written.loc[("perplexity_wiki", "sparsegpt"), "std"] == pytest.approx(2 ** 0.5, rel=1e-5)


def sweep_summary() -> pd.DataFrame:
    rows = []
    for method, offset in (("sparsegpt", 2.0), ("rose", 0.0)):
        for block_size in (32, 64):
            rows.append((method, block_size, 4, 10 + offset + block_size / 32))
        rows.append((method, 32, 8, 9 + offset))
    frame = pd.DataFrame(rows, columns=["method", "block_size", "nsamples", "perplexity"])
    return frame.assign(model="tiny", dataset="wiki", pattern="unstructured", sparsity=0.5, seed=0)


def test_sensitivity_table_holds_both_sweeps(tmp_path):
    figures.draw_sensitivity(sweep_summary(), "tiny", 32, 4, ["sparsegpt", "rose"], tmp_path / "s.png", tmp_path / "s.csv")
    assert_png(tmp_path / "s.png")
    written = pd.read_csv(tmp_path / "s.csv")
    rose_blocks = written[(written["sweep"] == "block_size") & (written["method"] == "rose")]
    assert rose_blocks["value"].tolist() == [32, 64]
    assert rose_blocks["perplexity_mean"].tolist() == pytest.approx([11.0, 12.0])
    rose_windows = written[(written["sweep"] == "nsamples") & (written["method"] == "rose")]
    assert rose_windows["value"].tolist() == [4, 8]
    assert rose_windows["perplexity_mean"].tolist() == pytest.approx([11.0, 9.0])


def test_stage_costs_table_sums_jobs(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, job, seconds, rss in (("hessian", "a", 2.0, 300.0), ("hessian", "b", 3.0, 500.0), ("perplexity", "c", 7.0, 900.0), ("gone", "d", 1.0, 1.0)):
        path = tmp_path / "benchmarks" / rule / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:0{int(seconds)}\t{rss}\t0\t0\t0\t0\t0\t0\t0\n")
    benchmarks = figures.load_benchmarks(tmp_path / "benchmarks", ["hessian", "perplexity"])
    figures.draw_stage_costs(benchmarks, tmp_path / "t.png", tmp_path / "t.csv")
    assert_png(tmp_path / "t.png")
    written = pd.read_csv(tmp_path / "t.csv").set_index("rule")
    assert sorted(written.index) == ["hessian", "perplexity"]
    assert written.loc["hessian", "total_seconds"] == pytest.approx(5.0)
    assert written.loc["hessian", "jobs"] == 2
    assert written.loc["hessian", "max_rss_mb"] == pytest.approx(500.0)


def test_tables_show_mean_and_std_over_seeds(tmp_path):
    summary = pd.DataFrame({
        "model": "tiny", "dataset": "wiki", "method": ["dense", "dense", "rose", "rose"], "pattern": ["dense", "dense", "unstructured", "unstructured"],
        "sparsity": [0.0, 0.0, 0.5, 0.5], "block_size": [None, None, 32, 32], "nsamples": 4, "seed": [0, 1, 0, 1],
        "perplexity": [10.0, 10.0, 20.0, 24.0], "windows": 8, "pruning_seconds": [0.0, 0.0, 3.0, 5.0],
        "zeroshot_boolq": [0.6, 0.6, 0.5, 0.7], "zeroshot_mean": [0.6, 0.6, 0.5, 0.7],
    })
    rows = tables.main_grid(summary, 32, 4)
    tables.perplexity_table(rows, tmp_path / "p.csv", tmp_path / "p.md")
    tables.pruning_time_table(rows, tmp_path / "t.csv", tmp_path / "t.md")
    tables.zeroshot_table(rows, tmp_path / "z.csv", tmp_path / "z.md")
    assert "| rose | 22.00 ± 2.83 |" in (tmp_path / "p.md").read_text()
    assert "60.00 ± 14.14" in (tmp_path / "z.md").read_text()
    assert "| dense | 10.00 ± 0.00 |" in (tmp_path / "p.md").read_text()
    assert "| rose | 4.0 ± 1.4 |" in (tmp_path / "t.md").read_text()
    zeroshot = pd.read_csv(tmp_path / "z.csv").set_index(["method", "task"])
    assert zeroshot.loc[("rose", "boolq"), "mean"] == pytest.approx(60.0)
    assert zeroshot.loc[("rose", "boolq"), "seeds"] == 2


def test_workflow_draws_figures_and_report(tmp_path, tiny_model, corpus_file):
    workdir = write_config(tmp_path, tiny_config(tiny_model, corpus_file, methods=["sparsegpt", "rose"], figures={"block": 1, "sublayer": "mlp.down_proj"}))
    snakemake(workdir)
    results = workdir / "results"
    model_figures = ["error_curve", "reordering", "layer_error", "columnar_unstructured-0.5"]
    for name in model_figures:
        assert_png(results / "figures" / "tiny" / f"{name}.png")
        assert len(pd.read_csv(results / "figures" / "tiny" / f"{name}.csv")) > 0
    assert_png(results / "figures" / "stage_costs.png")
    curve = pd.read_csv(results / "figures" / "tiny" / "error_curve.csv")
    # down_proj has 160 columns: 5 sweep blocks of 32.
    assert sorted(curve["sweep_block"].unique()) == [1, 2, 3, 4, 5]
    assert "| rose |" in (results / "tables" / "perplexity.md").read_text()
    snakemake(workdir, "--report", str(results / "report.html"))
    assert (results / "report.html").stat().st_size > 100_000
