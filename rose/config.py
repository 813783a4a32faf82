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
_TARGET = re.compile(r"^(dense|unstructured-[0-9.]+|[0-9]+of[0-9]+)(?:-b([0-9]+))?$")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key, the value and what is accepted."""


@dataclass(frozen=True)
class Run:
    """One pruned (or dense) model to produce: a method and a target.

    Targets read ``dense``, ``unstructured-0.5`` or ``2of4``, with ``-b64`` appended when the run
    overrides the sweep block size (block-size sensitivity sweeps).
    """

    method: str
    target: str

    @property
    def _parts(self) -> tuple[str, int | None]:
        match = _TARGET.match(self.target)
        if not match:
            raise ValueError(f"invalid run target {self.target!r}: expected dense, unstructured-<p> or <N>of<M>, optionally -b<B>")
        return match.group(1), int(match.group(2)) if match.group(2) else None

    @property
    def pattern(self) -> str:
        base = self._parts[0]
        if base == "dense":
            return "dense"
        if base.startswith("unstructured-"):
            return "unstructured"
        n, m = base.split("of")
        return f"{n}:{m}"

    @property
    def sparsity(self) -> float:
        base = self._parts[0]
        if base == "dense":
            return 0.0
        if base.startswith("unstructured-"):
            return float(base.split("-", 1)[1])
        n, m = base.split("of")
        return int(n) / int(m)

    @property
    def block_size(self) -> int | None:
        """The block size this run overrides, or None for the configured ``pruning.block_size``."""
        return self._parts[1]


@dataclass(frozen=True)
class Calibration:
    """One calibration setting; ``tag`` names its folder, e.g. ``c4-sample_n32_l512_seed0``."""

    dataset: str
    nsamples: int
    seqlen: int
    seed: int

    @property
    def tag(self) -> str:
        dataset = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(self.dataset).name).strip("-")
        return f"{dataset}_n{self.nsamples}_l{self.seqlen}_seed{self.seed}"


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

    if raw.get("seeds") is not None and "seed" in (raw.get("calibration") or {}):
        raise ConfigError("calibration.seed and seeds are mutually exclusive: give one seed in calibration.seed or a list in seeds")
    block_sizes = [config["pruning"]["block_size"], *config["sweeps"].get("block_size", [])]
    for pattern in config["patterns"]:
        match = _NM.match(pattern)
        if not match:
            continue
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ConfigError(f"invalid pattern {pattern!r} in 'patterns': an N:M pattern needs 0 < N < M, e.g. '2:4'")
        for block_size in block_sizes:
            if block_size % m:
                raise ConfigError(
                    f"block size {block_size} (pruning.block_size or sweeps.block_size) is not a multiple of "
                    f"M={m} from pattern {pattern!r}; N:M groups must not straddle sweep blocks"
                )
    pruning_methods = [m for m in config["methods"] if m != "dense"]
    if pruning_methods and "unstructured" in config["patterns"] and not config["sparsities"]:
        raise ConfigError("'sparsities' is empty but unstructured pruning is configured; give at least one value in [0, 1)")

    unknown_models = sorted(set(config["num_blocks"]) - set(config["models"]))
    if unknown_models:
        raise ConfigError(
            f"num_blocks names model(s) {', '.join(map(repr, unknown_models))} that 'models' does not define; "
            f"defined models: {', '.join(config['models'])}"
        )

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


def runs(config: dict, methods: list[str] | None = None, block_size: int | None = None) -> list[Run]:
    """List every (method, target) pair the configuration requests, with ``dense`` once if listed.

    ``methods`` restricts the list (sweeps), ``block_size`` marks every pruned target with a
    block-size override.
    """
    suffix = f"-b{block_size}" if block_size is not None else ""
    result = []
    for method in methods if methods is not None else config["methods"]:
        if method == "dense":
            result.append(Run("dense", "dense"))
            continue
        for pattern in config["patterns"]:
            if pattern == "unstructured":
                result.extend(Run(method, f"unstructured-{float(s)!r}{suffix}") for s in config["sparsities"])
            else:
                n, m = pattern.split(":")
                result.append(Run(method, f"{n}of{m}{suffix}"))
    return result


def seeds(config: dict) -> list[int]:
    """Calibration seeds: the ``seeds`` list, or ``calibration.seed`` alone."""
    return list(config.get("seeds") or [config["calibration"]["seed"]])


def main_calibrations(config: dict) -> list[Calibration]:
    """The calibration settings of the main grid, one per seed."""
    calibration = config["calibration"]
    return [Calibration(calibration["dataset"], calibration["nsamples"], calibration["seqlen"], seed) for seed in seeds(config)]


def experiments(config: dict) -> list[tuple[Calibration, Run]]:
    """Every (calibration, run) pair to produce: the main grid for every seed, then the sweeps.

    Sweeps vary one setting of the main grid for the sweep methods (SparseGPT and ROSE by
    default): ``sweeps.nsamples`` the number of calibration windows, ``sweeps.block_size`` the
    sweep block size. Duplicates of the main grid are listed once.
    """
    sweeps = config.get("sweeps") or {}
    sweep_methods = [m for m in sweeps.get("methods", ["sparsegpt", "rose"]) if m != "dense"]
    default_block = config["pruning"]["block_size"]
    result: list[tuple[Calibration, Run]] = []
    for calibration in main_calibrations(config):
        result.extend((calibration, run) for run in runs(config))
        for nsamples in sweeps.get("nsamples", []):
            varied = Calibration(calibration.dataset, nsamples, calibration.seqlen, calibration.seed)
            result.extend((varied, run) for run in runs(config, sweep_methods))
        for block_size in sweeps.get("block_size", []):
            override = None if block_size == default_block else block_size
            result.extend((calibration, run) for run in runs(config, sweep_methods, override))
    unique = list(dict.fromkeys(result))
    return unique


def calibration_tag(config: dict) -> str:
    """Folder name of the main calibration setting (first seed), e.g. ``c4-sample_n32_l512_seed0``."""
    return main_calibrations(config)[0].tag


def dataset_tag(dataset: str) -> str:
    """Folder-safe name of an evaluation text source."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", Path(dataset).name).strip("-")
