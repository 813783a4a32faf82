"""Validate a workflow configuration and expand it into runs.

Imported by the Snakefile while the DAG is built, so it stays light: no torch, no transformers.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from rose.data import NAMED_SOURCES

_NM = re.compile(r"^(\d+):(\d+)$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key, the value and what is accepted."""


@dataclass(frozen=True)
class Run:
    """One pruned (or dense) model to produce: a method and a target such as ``unstructured-0.5`` or ``2of4``."""

    method: str
    target: str

    @property
    def pattern(self) -> str:
        if self.target == "dense":
            return "dense"
        if self.target.startswith("unstructured-"):
            return "unstructured"
        n, m = self.target.split("of")
        return f"{n}:{m}"

    @property
    def sparsity(self) -> float:
        if self.target == "dense":
            return 0.0
        if self.target.startswith("unstructured-"):
            return float(self.target.split("-", 1)[1])
        n, m = self.target.split("of")
        return int(n) / int(m)


def load_schema() -> dict:
    return yaml.safe_load(resources.files("rose").joinpath("config.schema.yaml").read_text())


def _fill_defaults(config: dict, schema: dict) -> None:
    for key, rule in schema.get("properties", {}).items():
        if key not in config and "default" in rule:
            config[key] = copy.deepcopy(rule["default"])
        if isinstance(config.get(key), dict) and rule.get("type") == "object":
            _fill_defaults(config[key], rule)


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "top level"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"unknown config key(s) {', '.join(map(repr, unknown))} at {where}; accepted keys: {', '.join(allowed)}"
    description = _description_at(schema, list(error.absolute_path))
    accepted = f" (accepted: {' '.join(description.split())})" if description else ""
    return f"invalid config value at '{where}': {error.message}{accepted}"


def _description_at(schema: dict, path: list) -> str | None:
    """Description of the deepest schema node along ``path`` that has one."""
    node, description = schema, None
    for part in path:
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            break
        description = node.get("description", description)
    return description


def validate(raw: dict, check_paths: bool = True) -> dict:
    """Return a copy of ``raw`` with defaults filled in, or raise `ConfigError` on the first problem.

    Checks the schema (types, ranges, enumerations, unknown keys) and then what a schema cannot
    express: N < M, block size versus M, that local model and text paths exist, that zero-shot tasks
    are known and, for the local source, installed.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"the configuration must be a mapping of keys to values, got {type(raw).__name__}")
    schema = load_schema()
    config = copy.deepcopy(raw)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("\n".join(_describe(error, schema) for error in errors))
    _fill_defaults(config, schema)

    for pattern in config["patterns"]:
        match = _NM.match(pattern)
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if not 0 < n < m:
                raise ConfigError(f"invalid pattern {pattern!r} in 'patterns': an N:M pattern needs 0 < N < M, e.g. '2:4'")
            if config["pruning"]["block_size"] % m:
                raise ConfigError(
                    f"pruning.block_size {config['pruning']['block_size']} is not a multiple of M={m} "
                    f"from pattern {pattern!r}; N:M groups must not straddle sweep blocks"
                )
    pruning_methods = [m for m in config["methods"] if m != "dense"]
    if pruning_methods and "unstructured" in config["patterns"] and not config["sparsities"]:
        raise ConfigError("'sparsities' is empty but unstructured pruning is configured; give at least one value in [0, 1)")

    _check_zeroshot(config["zeroshot"], check_paths)

    if check_paths:
        from rose.models import ModelSpecError, resolve_model_spec

        for name, spec in config["models"].items():
            try:
                resolve_model_spec(spec)
            except ModelSpecError as error:
                raise ConfigError(f"models.{name}: {error}") from error
        _check_text_source("calibration.dataset", config["calibration"]["dataset"])
        for dataset in config["perplexity"]["datasets"]:
            _check_text_source("perplexity.datasets", dataset)
    return config


def _check_zeroshot(zeroshot: dict, check_paths: bool) -> None:
    """Task names must be known; with the local source (and ``check_paths``) their data must be installed."""
    from rose.zeroshot import check_tasks

    try:
        check_tasks(zeroshot["tasks"], zeroshot["source"], check_data=check_paths)
    except ValueError as error:
        raise ConfigError(f"zeroshot.tasks: {error}") from error


def _check_text_source(key: str, value: str) -> None:
    if value in NAMED_SOURCES or Path(value).expanduser().is_file():
        return
    raise ConfigError(
        f"{key}: {value!r} is neither a named source ({', '.join(NAMED_SOURCES)}) nor an existing text file"
    )


def load(path: str | Path, check_paths: bool = True) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    return validate(raw or {}, check_paths)


def runs(config: dict) -> list[Run]:
    """List every (method, target) pair the configuration requests, with ``dense`` once if listed."""
    result = []
    for method in config["methods"]:
        if method == "dense":
            result.append(Run("dense", "dense"))
            continue
        for pattern in config["patterns"]:
            if pattern == "unstructured":
                result.extend(Run(method, f"unstructured-{float(s)!r}") for s in config["sparsities"])
            else:
                n, m = pattern.split(":")
                result.append(Run(method, f"{n}of{m}"))
    return result


def calibration_tag(config: dict) -> str:
    """Folder name of a calibration setting, e.g. ``c4-sample_n32_l512_seed0``."""
    calibration = config["calibration"]
    dataset = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(calibration["dataset"]).name).strip("-")
    return f"{dataset}_n{calibration['nsamples']}_l{calibration['seqlen']}_seed{calibration['seed']}"


def dataset_tag(dataset: str) -> str:
    """Folder-safe name of an evaluation text source."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", Path(dataset).name).strip("-")
