"""Decoder blocks one at a time: capture their inputs, load them alone, run them, and
accumulate the Hessians of their linear sublayers."""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from rose.adapters import find_blocks
from rose.models import WEIGHTS_FILE

log = logging.getLogger(__name__)

# Keyword arguments that belong to generation caches, which one-shot pruning never uses.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")
# Key of the captured arguments of a model whose blocks differ by layer type (sliding-window
# and full attention get different masks): it maps each layer type to that type's arguments.
PER_LAYER_TYPE = "per_layer_type"
# Attribute set by `load_block` on a block of such a model: its entry of ``config.layer_types``.
LAYER_TYPE_ATTRIBUTE = "rose_layer_type"


class _StopForward(Exception):
    """Raised by the capture hook once the blocks' inputs are recorded."""


def is_sublayer(module: nn.Module) -> bool:
    """Tell whether ``module`` is a linear map with a 2-D weight: ``nn.Linear`` or GPT-2's ``Conv1D``."""
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
    block.to_empty(device=device)
    _initialise_transient_buffers(model, block, index)
    block.load_state_dict(local, strict=True)
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)):
        setattr(block, LAYER_TYPE_ATTRIBUTE, layer_types[index])
    block.eval()
    return (block, prefix) if with_prefix else block


def _initialise_transient_buffers(model: nn.Module, block: nn.Module, index: int) -> None:
    """Compute the block's buffers that checkpoints do not store, as transformers does after loading.

    GPT-Neo's and GPT-1's causal masks are such buffers. The model's ``_init_weights`` fills them
    for each module that owns one. It also draws random weights for that module, which the
    caller then overwrites with the checkpoint's.
    """
    transient = {
        f"{path}.{name}".lstrip("."): (module, name)
        for path, module in block.named_modules()
        for name in module._non_persistent_buffers_set
        if module._buffers.get(name) is not None
    }
    if not transient:
        return
    init_weights = getattr(model, "_init_weights", None)
    if init_weights is None:
        raise NotImplementedError(
            f"block {index} has buffers that are not stored in checkpoints ({', '.join(transient)}) and "
            f"{type(model).__name__} has no _init_weights to compute them; loading its blocks one by one is not supported"
        )
    # NaN marks the floating-point buffers, so that one _init_weights leaves alone is detected.
    # NOTE: integer and boolean buffers cannot be marked, so one left uninitialised goes unnoticed.
    for module, name in transient.values():
        if module._buffers[name].is_floating_point():
            module._buffers[name].fill_(float("nan"))
    owners = {id(module): module for module, _ in transient.values()}
    with torch.no_grad():
        for module in owners.values():
            init_weights(module)
    missed = [
        path
        for path, (module, name) in transient.items()
        if module._buffers[name].is_floating_point() and bool(torch.isnan(module._buffers[name]).any())
    ]
    if missed:
        raise NotImplementedError(
            f"block {index} has buffers that are not stored in checkpoints and that {type(model).__name__}._init_weights "
            f"does not compute ({', '.join(missed)}); loading its blocks one by one is not supported"
        )


def _distinct_layer_types(config) -> list[str]:
    """Return the entries of ``config.layer_types`` in order of first appearance; empty where it has none."""
    layer_types = getattr(config, "layer_types", None)
    return list(dict.fromkeys(layer_types)) if isinstance(layer_types, (list, tuple)) else []


def _truncated_model(checkpoint_dir: str | Path, device: str | torch.device, layer_types: list[str]) -> nn.Module:
    """Load the model with one block per entry of ``layer_types`` (one block when it is empty).

    That keeps the embeddings and the position and mask handling of the whole model without the
    cost of all its blocks.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(load_config(checkpoint_dir))
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, key):
            setattr(config, key, max(1, len(layer_types)))
    if layer_types:
        config.layer_types = list(layer_types)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), config=config, dtype=torch.float32)
    return model.to(device).eval()


def _name_arguments(module: nn.Module, args: tuple, kwargs: dict) -> tuple[object, dict]:
    """Split a block call into its hidden states (the first parameter) and every other argument by name.

    Some families pass arguments by position (GPT-2 passes its attention mask third), so positional
    arguments are named after the parameters of the block's ``forward`` they bind to.
    """
    signature = inspect.signature(module.forward)
    bound = signature.bind(*args, **kwargs)
    named = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise NotImplementedError(
                    f"{type(module).__name__} received {len(value)} positional arguments beyond its named "
                    "parameters; such calls cannot be replayed by name"
                )
        else:
            named[name] = value
    hidden = named.pop(next(iter(signature.parameters)))
    return hidden, named


def capture_block_inputs(
    checkpoint_dir: str | Path, tokens: torch.Tensor, device: str | torch.device, storage_dtype: torch.dtype
) -> tuple[torch.Tensor, dict]:
    """Run the model up to block 0 on every window and record what its blocks receive.

    Returns the hidden states (nsamples × seqlen × hidden, in ``storage_dtype``) and the keyword
    arguments the model passes to its blocks (masks, position ids, rotary embeddings), taken from
    a real forward pass. Every window has the same length, so those arguments are the same for
    all of them; that is checked rather than assumed.

    Where ``config.layer_types`` mixes types (sliding-window and full attention) and the arguments
    differ between them, the result maps `PER_LAYER_TYPE` to the arguments of each type, which
    `run_block` and `accumulate_hessians` pick by the block's layer type.
    """
    layer_types = _distinct_layer_types(load_config(checkpoint_dir))
    model = _truncated_model(checkpoint_dir, device, layer_types)
    _, blocks = find_blocks(model)
    # One block of each layer type; their arguments are recorded and the forward pass stops at the last.
    hooked = list(blocks[: max(1, len(layer_types))])
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hidden, named = _name_arguments(module, args, kwargs)
        rest = {key: value for key, value in named.items() if key not in _CACHE_KWARGS}
        if "use_cache" in rest:
            rest["use_cache"] = False
        captured.append((hidden.detach(), rest))
        if module is hooked[-1]:
            raise _StopForward

    handles = [block.register_forward_pre_hook(hook, with_kwargs=True) for block in hooked]
    inputs = torch.empty(tokens.shape[0], tokens.shape[1], model.config.hidden_size, dtype=storage_dtype)
    reference: list[dict] | None = None
    try:
        with torch.no_grad():
            for i in tqdm(range(tokens.shape[0]), desc="capture block 0 inputs", mininterval=5):
                captured.clear()
                try:
                    model(tokens[i : i + 1].to(device), use_cache=False)
                except _StopForward:
                    pass
                inputs[i] = captured[0][0][0].to("cpu", storage_dtype)
                arguments = [kwargs for _, kwargs in captured]
                if reference is None:
                    reference = arguments
                elif not _same_kwargs(reference, arguments):
                    raise RuntimeError(
                        f"window {i} received different block arguments than window 0; "
                        "per-window masks are not supported"
                    )
    finally:
        for handle in handles:
            handle.remove()
    if reference is None:
        return inputs, {}
    if all(_same_kwargs(reference[0], other) for other in reference[1:]):
        return inputs, _to_device(reference[0], "cpu")
    return inputs, {PER_LAYER_TYPE: _to_device(dict(zip(layer_types, reference)), "cpu")}


def block_arguments(block: nn.Module, kwargs: dict) -> dict:
    """Return the captured arguments for ``block``: those of its layer type where they differ by type."""
    if PER_LAYER_TYPE not in kwargs:
        return kwargs
    by_type = kwargs[PER_LAYER_TYPE]
    layer_type = getattr(block, LAYER_TYPE_ATTRIBUTE, None)
    if layer_type not in by_type:
        raise ValueError(
            f"the captured block arguments differ by layer type ({', '.join(by_type)}), but the block's "
            f"layer type is {layer_type!r}; load blocks with rose.blocks.load_block, which records it"
        )
    return by_type[layer_type]


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
    kwargs = _to_device(block_arguments(block, kwargs), device)
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
        kwargs = _to_device(block_arguments(block, kwargs), device)
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
