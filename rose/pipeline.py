"""The pipeline's stages as functions over files; the Snakemake rules and `rose prune` call them.

Every stage reads its inputs, verifies them, computes, and writes its outputs atomically with
a record of how they were made. The mathematics lives in `rose.prune` and `rose.blocks`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rose import blocks as blk
from rose import planning
from rose.data import calibration_text, eval_text, load_corpus, sample_windows, text_sha256, tokenize_stream
from rose.evaluate import perplexity
from rose.io import atomic_path, file_digest, load_object, load_tensors, read_json, save_object, save_tensors, write_json
from rose.models import WEIGHTS_FILE
from rose.prune import PruneStats, prune_matrix

log = logging.getLogger(__name__)

HIDDEN = "hidden_states"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PruneSettings:
    """One pruning configuration: method and pattern plus the sweep's knobs."""

    method: str
    pattern: str = "unstructured"
    sparsity: float | None = None
    block_size: int = 128
    damping: float = 0.01
    threshold: float = 0.5


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from error


def resolve_activation_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` stores activations as bfloat16 on GPUs and float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"invalid activation dtype {name!r}: expected 'auto' or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def provenance(inputs: dict[str, Path | None] | None = None, **fields) -> dict:
    """Build the provenance record of an output: the caller's settings, the sha256 of each input
    file (``inputs`` maps a role to a path; None entries are skipped) and the software versions."""
    from importlib.metadata import version

    from rose import __version__

    digests = {role: {"path": str(path), "sha256": file_digest(path)} for role, path in (inputs or {}).items() if path}
    return {
        **fields,
        "inputs": digests,
        "versions": {"rose": __version__, "torch": torch.__version__, "transformers": version("transformers")},
        "python": platform.python_version(),
    }


def check_finite(tensor: torch.Tensor, description: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise FloatingPointError(f"{description} contains {bad} NaN or inf values")


# Stage 2: calibration windows.


def calibrate(model_dir: Path, dataset: str, nsamples: int, seqlen: int, seed: int, out: Path) -> None:
    from transformers import AutoTokenizer

    config = blk.load_config(model_dir)
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and seqlen > context:
        raise ValueError(f"seqlen {seqlen} exceeds the model's context length of {context} tokens")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    corpus = load_corpus(dataset)
    text = calibration_text(corpus, nsamples, seqlen)
    stream = tokenize_stream(tokenizer, text)
    tokens = sample_windows(stream, nsamples, seqlen, seed)
    record = provenance(
        dataset=dataset,
        source=corpus.source,
        text_sha256=text_sha256(text),
        text_chars=len(text),
        stream_tokens=stream.numel(),
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        sampling="random windows from the concatenated documents (joined by blank lines)",
    )
    save_tensors(out, {"tokens": tokens}, record)
    log.info("calibration: %d windows of %d tokens from %s (%d tokens)", nsamples, seqlen, dataset, stream.numel())


# Stage 3: block 0 inputs and the arguments every block receives.


def capture(model_dir: Path, calibration: Path, out_inputs: Path, out_kwargs: Path, device: str, activation_dtype: str) -> None:
    """Record block 0's inputs and the keyword arguments the model passes to its blocks."""
    torch_device = resolve_device(device)
    storage = resolve_activation_dtype(activation_dtype, torch_device)
    tokens = load_tensors(calibration, ["tokens"])[0]["tokens"]
    plan = planning.estimate_block_plan(
        json.loads((model_dir / "config.json").read_text()), (model_dir / WEIGHTS_FILE).stat().st_size,
        tokens.shape[0], tokens.shape[1], torch.finfo(storage).bits // 8,
    )
    planning.check_memory(
        2 * plan.activations, "holding the calibration activations",
        "lower calibration.nsamples or calibration.seqlen, or store activations as bfloat16 (activation_dtype)",
    )
    inputs, kwargs = blk.capture_block_inputs(model_dir, tokens, torch_device, storage)
    check_finite(inputs, "block 0 inputs")
    save_object(out_kwargs, kwargs)
    save_tensors(out_inputs, {HIDDEN: inputs}, provenance({"calibration": calibration}, block=0))


# Stage 4: Hessians of one block.


def hessians(
    model_dir: Path,
    index: int,
    source_inputs: Path,
    kwargs_file: Path,
    out: Path,
    device: str,
    previous_weights: Path | None = None,
    out_inputs: Path | None = None,
) -> None:
    """Write H and activation norms per distinct sublayer input of block ``index``.

    For block 0, ``source_inputs`` are the block's own inputs. For a later block they are the
    inputs of block ``index - 1``, which is first run (stage 6, propagation) with
    ``previous_weights`` (its pruned weights; None for dense ones) to get this block's inputs.
    Folding propagation into this job saves one Python start-up per block, about a third of
    the pipeline's time for small models. The inputs are saved to ``out_inputs`` for the next block.

    The header records the block list's name and every sublayer's weight orientation, so that
    pruning can work on the raw tensors without building the model.
    """
    torch_device = resolve_device(device)
    kwargs = load_object(kwargs_file)
    if index == 0:
        inputs = load_tensors(source_inputs, [HIDDEN])[0][HIDDEN]
        if out_inputs is not None:
            link_file(source_inputs, out_inputs)
    else:
        inputs = propagate_tensors(model_dir, index - 1, previous_weights, source_inputs, kwargs, torch_device)
        if out_inputs is not None:
            record = provenance({"previous_inputs": source_inputs, "previous_weights": previous_weights}, block=index)
            save_tensors(out_inputs, {HIDDEN: inputs}, record)
    block, prefix = blk.load_block(model_dir, index, device=torch_device, with_prefix=True)
    statistics = blk.accumulate_hessians(block, inputs, kwargs, torch_device)
    tensors, groups = {}, {}
    for leader, stats in statistics.items():
        check_finite(stats.hessian, f"block {index} Hessian of {leader}")
        tensors[f"hessian/{leader}"] = stats.hessian
        tensors[f"act_sq_norm/{leader}"] = stats.act_sq_norm
        groups[leader] = stats.sublayers
    transposed = {name: blk.is_transposed(module) for name, module in blk.sublayers(block).items()}
    record = provenance(
        {"source_inputs": source_inputs, "previous_weights": previous_weights},
        block=index, prefix=prefix, groups=groups, transposed=transposed, nsamples=inputs.shape[0],
        propagated_with="dense weights" if previous_weights is None else "pruned weights",
    )
    save_tensors(out, tensors, record)


def link_file(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy where links are impossible), atomically."""
    with atomic_path(target) as staged:
        try:
            os.link(source, staged)
        except OSError:
            shutil.copy2(source, staged)


# Stage 5: prune one block.


def prune_sublayers(
    weights: dict[str, torch.Tensor],
    statistics: dict[str, blk.InputStatistics],
    settings: PruneSettings,
    index: int,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Prune the weight matrices (out × in, keyed by sublayer name) of one block.

    Returns the pruned matrices and one statistics record per sublayer.
    """
    pruned_weights, records = {}, []
    for leader, stats in statistics.items():
        hessian = stats.hessian.to(device)
        act_sq_norm = stats.act_sq_norm.to(device)
        for name in stats.sublayers:
            pruned, record = prune_matrix(
                weights[name].to(device),
                hessian,
                act_sq_norm,
                settings.method,
                settings.sparsity,
                settings.pattern,
                settings.block_size,
                settings.damping,
                settings.threshold,
                name=f"block {index} {name}",
            )
            check_finite(pruned, f"block {index} {name} pruned weights")
            pruned_weights[name] = pruned.to("cpu")
            records.append({"sublayer": name, **record.to_dict()})
            log.info(
                "block %d %s: sparsity %.4f, relative error %.4g, reordered %s, %.2f s",
                index, name, record.sparsity, record.relative_error or 0.0, record.reordered, record.seconds,
            )
    return pruned_weights, records


def read_statistics(hessian_file: Path) -> tuple[dict[str, blk.InputStatistics], dict]:
    """Read the per-input statistics of a Hessian file, and its header."""
    tensors, header = load_tensors(hessian_file)
    statistics = {
        leader: blk.InputStatistics(
            members, tensors[f"hessian/{leader}"], tensors[f"act_sq_norm/{leader}"], header["nsamples"]
        )
        for leader, members in header["groups"].items()
    }
    return statistics, header


def read_block_tensors(model_dir: Path, prefix: str, index: int) -> dict[str, torch.Tensor]:
    """Read all tensors of block ``index`` from the checkpoint, under their full names."""
    from safetensors import safe_open

    key_prefix = f"{prefix}.{index}."
    with safe_open(str(model_dir / WEIGHTS_FILE), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(key_prefix)}


def prune(model_dir: Path, index: int, hessian_file: Path, settings: PruneSettings, out_weights: Path, out_stats: Path, device: str) -> None:
    """Prune block ``index`` from its Hessian file; works on raw tensors, no model is built."""
    torch_device = resolve_device(device)
    started = time.perf_counter()
    statistics, header = read_statistics(hessian_file)
    if header["block"] != index:
        raise ValueError(f"{hessian_file} contains the Hessians of block {header['block']}, not of block {index}; the file does not belong to this job")
    prefix, transposed = header["prefix"], header["transposed"]
    state = read_block_tensors(model_dir, prefix, index)
    key = {name: f"{prefix}.{index}.{name}.weight" for name in transposed}
    weights = {name: state[key[name]].t() if transposed[name] else state[key[name]] for name in transposed}
    pruned, records = prune_sublayers(weights, statistics, settings, index, torch_device)
    for name, matrix in pruned.items():
        state[key[name]] = (matrix.t() if transposed[name] else matrix).contiguous().to(state[key[name]].dtype)
    seconds = time.perf_counter() - started
    record = provenance({"hessians": hessian_file}, block=index, settings=asdict(settings), seconds=seconds)
    save_tensors(out_weights, state, record)
    write_json(out_stats, {**record, "sublayers": records})


# Stage 6: propagation.


def propagate_tensors(
    model_dir: Path, index: int, weights_file: Path | None, inputs_file: Path, kwargs: dict, device: torch.device
) -> torch.Tensor:
    """Outputs of block ``index`` (pruned weights, or dense ones when ``weights_file`` is None)."""
    inputs = load_tensors(inputs_file, [HIDDEN])[0][HIDDEN]
    state = load_tensors(weights_file)[0] if weights_file is not None else None
    block = blk.load_block(model_dir, index, state, device)
    outputs = blk.run_block(block, inputs, kwargs, device, desc=f"propagate block {index}")
    check_finite(outputs, f"outputs of block {index}")
    return outputs


def propagate(model_dir: Path, index: int, weights_file: Path | None, inputs_file: Path, kwargs_file: Path, out: Path, device: str) -> None:
    """Write the outputs of block ``index``, which are the inputs of block ``index + 1``."""
    outputs = propagate_tensors(model_dir, index, weights_file, inputs_file, load_object(kwargs_file), resolve_device(device))
    save_tensors(out, {HIDDEN: outputs}, provenance({"inputs": inputs_file, "weights": weights_file}, block=index + 1))


# Stage 7: checkpoint assembly.


def assemble(model_dir: Path, weight_files: list[Path], stats_files: list[Path], out_dir: Path) -> None:
    """Merge pruned blocks into a Hugging Face checkpoint and write ``sparsity.json`` beside it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(model_dir / WEIGHTS_FILE), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata() or {}
    pruned_names = set()
    for path in weight_files:
        tensors, _ = load_tensors(path)
        for key, value in tensors.items():
            if key not in state:
                raise KeyError(f"{path}: tensor {key!r} is not part of the model in {model_dir}")
            state[key] = value
        pruned_names.update(key for key in tensors if key.endswith(".weight"))

    prefix = blk.block_prefix(model_dir)
    sublayer_names = _sublayer_weight_names(model_dir, prefix)
    report = _sparsity_report(state, sublayer_names)
    report["pruned_blocks"] = len(weight_files)
    report["pruning_seconds"] = sum(read_json(path)["seconds"] for path in stats_files)
    report["provenance"] = provenance({f"block_{index:03d}": path for index, path in enumerate(weight_files)})

    with atomic_path(out_dir) as staged:
        staged.mkdir()
        save_file(state, str(staged / WEIGHTS_FILE), metadata={"format": "pt", **metadata})
        for item in model_dir.iterdir():
            if item.is_file() and item.name not in (WEIGHTS_FILE, "import.json"):
                shutil.copy2(item, staged / item.name)
        (staged / "sparsity.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("assembled %s: overall sparsity %.4f over %d linear layers", out_dir, report["overall"], len(report["layers"]))


def _sublayer_weight_names(model_dir: Path, prefix: str) -> list[str]:
    """Full weight names of every linear sublayer in every block, found on a meta copy of the model."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(blk.load_config(model_dir))
    _, block_list = blk.find_blocks(model)
    return [
        f"{prefix}.{index}.{name}.weight"
        for index, block in enumerate(block_list)
        for name in blk.sublayers(block)
    ]


def _sparsity_report(state: dict[str, torch.Tensor], names: list[str]) -> dict:
    layers = {}
    zeros = total = 0
    for name in names:
        weight = state[name]
        count = int((weight == 0).sum())
        layers[name] = {"zeros": count, "numel": weight.numel(), "sparsity": count / weight.numel()}
        zeros += count
        total += weight.numel()
    return {"overall": zeros / total if total else 0.0, "zeros": zeros, "numel": total, "layers": layers}


# Stage 8: perplexity.


def evaluate_perplexity(
    checkpoint: Path,
    dataset: str,
    seqlen: int,
    max_chars: int | None,
    max_windows: int | None,
    batch_size: int,
    out: Path,
    device: str,
) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    text, corpus = eval_text(dataset, max_chars)
    stream = tokenize_stream(tokenizer, text)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).to(torch_device)
    result = perplexity(model, stream, seqlen, max_windows, batch_size, torch_device)
    # The checkpoint is not hashed here: its sparsity.json records the digests of the pruned blocks.
    record = provenance(
        checkpoint=str(checkpoint),
        dataset=dataset,
        source=corpus.source,
        text_sha256=text_sha256(text),
        text_chars=len(text),
        max_chars=max_chars,
        max_windows=max_windows,
        **asdict(result),
    )
    write_json(out, record)
    log.info("perplexity on %s: %.3f over %d windows of %d tokens", dataset, result.perplexity, result.windows, seqlen)
    return record
