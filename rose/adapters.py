"""Model family adapters: the dotted names of the parts that block-by-block pruning touches.

Capture, Hessians and pruning need only the list of decoder blocks. The modules after the last
block (final norm, OPT's output projection, the output head) are listed so that a blockwise run
can be checked against the whole model's logits. Sublayers that share an input (q/k/v, gate/up,
and Phi's attention and MLP input) are found at run time by `rose.blocks.accumulate_hessians`,
so they need no entry here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """Dotted module names of one family, keyed in `FAMILIES` by the config's ``model_type``.

    ``final_layers`` are applied in order between the last block and the output head. An entry
    that is None in a given model (OPT without a final norm or projection) is skipped.
    """

    blocks: str
    final_layers: tuple[str, ...]
    head: str = "lm_head"


FAMILIES = {
    "llama": Family("model.layers", ("model.norm",)),
    "mistral": Family("model.layers", ("model.norm",)),
    "qwen2": Family("model.layers", ("model.norm",)),
    "phi": Family("model.layers", ("model.final_layernorm",)),
    "opt": Family("model.decoder.layers", ("model.decoder.final_layer_norm", "model.decoder.project_out")),
    "gpt2": Family("transformer.h", ("transformer.ln_f",)),
}
# Block lists tried, in order, for a model type that is not in FAMILIES.
FALLBACK_BLOCK_LISTS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")

_warned_model_types: set[str] = set()


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def family_of(model: nn.Module) -> Family:
    """Return the `Family` entry of ``model``, or raise ValueError naming the supported families."""
    name = model_type(model)
    if name not in FAMILIES:
        raise ValueError(f"model type {name!r} has no adapter; supported families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the dotted name and the list of the model's decoder blocks.

    A model type without an entry in `FAMILIES` falls back to the common block list names, then
    to the module list with the most parameters, and logs a warning once per process.
    """
    modules = dict(model.named_modules())
    name = model_type(model)
    if name in FAMILIES:
        blocks = modules.get(FAMILIES[name].blocks)
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError(f"{type(model).__name__} has no decoder block list at {FAMILIES[name].blocks!r}")
        return FAMILIES[name].blocks, blocks

    found = next((path for path in FALLBACK_BLOCK_LISTS if isinstance(modules.get(path), nn.ModuleList)), None)
    if found is None:
        lists = [(path, m) for path, m in modules.items() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if not lists:
            raise ValueError(
                f"no list of decoder blocks found in {type(model).__name__} (model type {name!r}); "
                f"supported families: {', '.join(sorted(FAMILIES))}"
            )
        found = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))[0]
    if name not in _warned_model_types:
        _warned_model_types.add(name)
        log.warning(
            "model type %r has no adapter (supported: %s); using the block list %r found by the generic fallback",
            name, ", ".join(sorted(FAMILIES)), found,
        )
    return found, modules[found]


def output_layers(model: nn.Module) -> list[nn.Module]:
    """Return the modules that turn the last block's output into logits, in order, the head last."""
    family = family_of(model)
    layers = [_submodule(model, path) for path in (*family.final_layers, family.head)]
    return [layer for layer in layers if layer is not None]


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    """Follow a dotted name; None where an attribute on the way is None (an absent optional layer)."""
    module = model
    for part in path.split("."):
        module = getattr(module, part)
        if module is None:
            return None
    return module
