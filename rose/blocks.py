"""Decoder blocks one at a time: capture their inputs, load them alone, run them, and
accumulate the Hessians of their linear sublayers."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from rose.models import WEIGHTS_FILE

log = logging.getLogger(__name__)

# Where common families keep their decoder blocks.
KNOWN_BLOCK_LISTS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")
# Keyword arguments that belong to generation caches, which one-shot pruning never uses.
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")


class _StopForward(Exception):
    """Raised by the capture hook once block 0's inputs are recorded."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the dotted name and the list of the model's decoder blocks."""
    modules = dict(model.named_modules())
    for name in KNOWN_BLOCK_LISTS:
        if isinstance(modules.get(name), nn.ModuleList):
            return name, modules[name]
    lists = [(name, m) for name, m in modules.items() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"no list of decoder blocks found in {type(model).__name__}")
    name, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    log.warning("%s: no known block list; using the largest module list %r", type(model).__name__, name)
    return name, blocks


def is_sublayer(module: nn.Module) -> bool:
    """A linear map with a 2-D weight: ``nn.Linear`` or GPT-2's ``Conv1D`` (transposed weight)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def sublayers(block: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in block.named_modules() if name and is_sublayer(module)}


def is_transposed(module: nn.Module) -> bool:
    """True when the module stores its weight as in_features × out_features (GPT-2's Conv1D)."""
    return type(module).__name__ == "Conv1D"


def load_config(checkpoint_dir: str | Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(checkpoint_dir))


def block_prefix(checkpoint_dir: str | Path) -> str:
    """Dotted name of the block list, found on a weightless (meta) copy of the model."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(checkpoint_dir))
    return find_blocks(model)[0]


def load_block(
    checkpoint_dir: str | Path,
    index: int,
    state: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    with_prefix: bool = False,
) -> nn.Module | tuple[nn.Module, str]:
    """Build decoder block ``index`` alone and load its weights.

    ``state`` holds the block's tensors under their full checkpoint names (a pruned block file);
    without it they are read from the checkpoint's safetensors file. Only this block is ever
    materialised, so the rest of the model stays on disk.
    """
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(checkpoint_dir))
    prefix, blocks = find_blocks(model)
    if not 0 <= index < len(blocks):
        raise ValueError(f"block {index} does not exist: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    block = blocks[index]
    key_prefix = f"{prefix}.{index}."
    if state is None:
        with safe_open(str(Path(checkpoint_dir) / WEIGHTS_FILE), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(key_prefix)}
    local = {key[len(key_prefix) :]: value for key, value in state.items() if key.startswith(key_prefix)}
    persistent = set(block.state_dict())
    transient = [name for name, _ in block.named_buffers() if name not in persistent]
    if transient:
        raise NotImplementedError(
            f"block {index} has buffers that are not stored in checkpoints ({', '.join(transient)}); "
            "loading such blocks one by one is not supported"
        )
    block.to_empty(device=device)
    block.load_state_dict(local, strict=True)
    block.eval()
    return (block, prefix) if with_prefix else block


def _truncated_model(checkpoint_dir: str | Path, device: str | torch.device) -> nn.Module:
    """The model with one decoder block: embeddings and position handling, without the cost of the rest."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(load_config(checkpoint_dir))
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, key):
            setattr(config, key, 1)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:1]
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), config=config, dtype=torch.float32)
    return model.to(device).eval()


def capture_block_inputs(
    checkpoint_dir: str | Path, tokens: torch.Tensor, device: str | torch.device, storage_dtype: torch.dtype
) -> tuple[torch.Tensor, dict]:
    """Run the model up to block 0 on every window and record what block 0 receives.

    Returns the hidden states (nsamples × seqlen × hidden, in ``storage_dtype``) and the keyword
    arguments the model passes to its blocks (masks, position ids, rotary embeddings), taken from
    a real forward pass. Every window has the same length, so those arguments are the same for
    all of them; that is checked rather than assumed.
    """
    model = _truncated_model(checkpoint_dir, device)
    _, blocks = find_blocks(model)
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        rest = {key: value for key, value in kwargs.items() if key not in _CACHE_KWARGS}
        if "use_cache" in rest:
            rest["use_cache"] = False
        captured.append((hidden.detach(), rest))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    inputs = torch.empty(tokens.shape[0], tokens.shape[1], model.config.hidden_size, dtype=storage_dtype)
    reference: dict | None = None
    try:
        with torch.no_grad():
            for i in tqdm(range(tokens.shape[0]), desc="capture block 0 inputs", mininterval=5):
                try:
                    model(tokens[i : i + 1].to(device), use_cache=False)
                except _StopForward:
                    pass
                hidden, kwargs = captured.pop()
                inputs[i] = hidden[0].to("cpu", storage_dtype)
                if reference is None:
                    reference = kwargs
                elif not _same_kwargs(reference, kwargs):
                    raise RuntimeError(
                        f"window {i} received different block arguments than window 0; "
                        "per-window masks are not supported"
                    )
    finally:
        handle.remove()
    return inputs, _to_device(reference or {}, "cpu")


def _same_kwargs(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_kwargs(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_kwargs(x, y) for x, y in zip(a, b))
    return a == b


def _to_device(value: object, device: str | torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def run_block(
    block: nn.Module,
    inputs: torch.Tensor,
    kwargs: dict,
    device: str | torch.device,
    out_dtype: torch.dtype | None = None,
    desc: str = "run block",
) -> torch.Tensor:
    """Run ``block`` window by window with the captured keyword arguments."""
    kwargs = _to_device(kwargs, device)
    dtype = next(block.parameters()).dtype
    outputs = torch.empty(inputs.shape, dtype=out_dtype or inputs.dtype)
    with torch.no_grad():
        for i in tqdm(range(inputs.shape[0]), desc=desc, mininterval=5):
            result = block(inputs[i : i + 1].to(device, dtype), **kwargs)
            hidden = result[0] if isinstance(result, (tuple, list)) else result
            outputs[i] = hidden[0].to("cpu", outputs.dtype)
    return outputs


@dataclass
class InputStatistics:
    """H and activation norms of one distinct sublayer input, shared by ``sublayers``."""

    sublayers: list[str]
    hessian: torch.Tensor
    act_sq_norm: torch.Tensor
    nsamples: int


def accumulate_hessians(
    block: nn.Module, inputs: torch.Tensor, kwargs: dict, device: str | torch.device
) -> dict[str, InputStatistics]:
    """Run the block and accumulate H = (2/N) Σ x xᵀ and a = (1/N) Σ x² per distinct sublayer input.

    N counts calibration windows, as SparseGPT does. Sublayers that receive the very same input
    tensor (q/k/v, gate/up) are grouped in the first window and share one accumulation.
    Statistics are keyed by the first sublayer of each group.
    """
    modules = sublayers(block)
    leader_of: dict[str, str] = {}
    seen_inputs: list[tuple[torch.Tensor, str]] = []  # kept alive so that identities stay unique
    sums: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args, output):
            x = args[0]
            if name not in leader_of:
                leader = next((owner for tensor, owner in seen_inputs if tensor is x), name)
                leader_of[name] = leader
                seen_inputs.append((x, name))
            if leader_of[name] != name:
                return
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            if name not in sums:
                sums[name] = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float32, device=flat.device)
            sums[name].addmm_(flat.t(), flat)

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        kwargs = _to_device(kwargs, device)
        dtype = next(block.parameters()).dtype
        with torch.no_grad():
            for i in tqdm(range(inputs.shape[0]), desc="accumulate Hessians", mininterval=5):
                block(inputs[i : i + 1].to(device, dtype), **kwargs)
                seen_inputs.clear()
    finally:
        for handle in handles:
            handle.remove()

    nsamples = inputs.shape[0]
    statistics = {}
    for leader, total in sums.items():
        members = [name for name in modules if leader_of.get(name) == leader]
        statistics[leader] = InputStatistics(
            members, (2.0 / nsamples) * total, torch.diagonal(total).clone() / nsamples, nsamples
        )
    missing = [name for name in modules if name not in leader_of]
    if missing:
        raise RuntimeError(f"sublayers {', '.join(missing)} were never called during the block's forward pass")
    return statistics
