"""The block pipeline on tiny randomly initialised models of every supported family.

Each family is built from its transformers config (hidden size 64, 2 blocks, a 300-token
vocabulary), so nothing is downloaded. The families differ where the pipeline could break.
Mistral has a sliding-window mask, and Qwen2 has q/k/v biases and, in one variant, mixed layer
types. OPT keeps its blocks under ``model.decoder`` with learned positions and input and output
projections. GPT-2 has fused ``Conv1D`` sublayers with transposed weights and passes its mask by
position. Phi runs attention and MLP in parallel on one input.
GPT-Neo and GPT-1 (``openai-gpt``) have no adapter and check the generic fallback; their blocks
hold causal masks as buffers that checkpoints do not store.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoConfig,
    LlamaConfig,
    MistralConfig,
    OpenAIGPTConfig,
    OPTConfig,
    PhiConfig,
    Qwen2Config,
)

from conftest import train_tokenizer
from rose import adapters
from rose import blocks as blk
from rose.models import WEIGHTS_FILE
from rose.oneshot import prune_model
from rose.pipeline import PruneSettings

HIDDEN, INNER, LAYERS, HEADS = 64, 160, 2, 4
SEQLEN = 24


def _family_config(family: str, vocab: int):
    """Return the transformers config of a tiny model of ``family``."""
    common = {"vocab_size": vocab, "max_position_embeddings": 256, "bos_token_id": 0, "eos_token_id": 0}
    llama_like = {
        **common, "hidden_size": HIDDEN, "intermediate_size": INNER, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": 2,
    }
    if family == "llama":
        return LlamaConfig(**llama_like, tie_word_embeddings=True)
    if family == "mistral":
        # A window shorter than the sequences, so that the mask is not plain causal.
        return MistralConfig(**llama_like, sliding_window=16)
    if family == "qwen2":
        return Qwen2Config(**llama_like, tie_word_embeddings=True)
    if family == "qwen2-sliding":
        # Block 0 attends to everything, block 1 to a window of 8: the blocks need different masks.
        return Qwen2Config(**llama_like, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    if family == "opt":
        # word_embed_proj_dim below hidden_size adds project_in and project_out around the blocks.
        return OPTConfig(
            **common, hidden_size=HIDDEN, ffn_dim=INNER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            word_embed_proj_dim=32, pad_token_id=1,
        )
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_inner=INNER, n_layer=LAYERS, n_head=HEADS, n_positions=256, bos_token_id=0, eos_token_id=0)
    if family == "phi":
        return PhiConfig(**common, hidden_size=HIDDEN, intermediate_size=INNER, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
    if family == "gpt_neo":
        # Not in rose.adapters.FAMILIES. Its blocks hold causal masks as non-persistent buffers.
        return GPTNeoConfig(
            **common, hidden_size=HIDDEN, intermediate_size=INNER, num_layers=LAYERS, num_heads=HEADS,
            attention_types=[[["global", "local"], 1]], window_size=8,
        )
    if family == "openai-gpt":
        # Not in rose.adapters.FAMILIES either. Its blocks hold a floating-point causal mask buffer.
        return OpenAIGPTConfig(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=256)
    raise ValueError(f"unknown test family {family!r}")


FAMILIES = ["llama", "mistral", "qwen2", "qwen2-sliding", "opt", "gpt2", "phi"]
TIED = ["llama", "qwen2", "opt", "gpt2"]
GROUPED_QUERY = ["llama", "mistral", "qwen2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def build_family(tmp_path_factory, corpus_file):
    """Return a function that saves (once) a tiny checkpoint of a family with the given attention implementation."""
    tokenizer = train_tokenizer(corpus_file)
    vocab = tokenizer.backend_tokenizer.get_vocab_size()
    root = tmp_path_factory.mktemp("families")
    built = {}

    def build(family: str, attention: str = "sdpa"):
        if (family, attention) in built:
            return built[family, attention]
        folder = root / f"{family}-{attention}"
        if attention == "sdpa":
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(_family_config(family, vocab))
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        else:
            shutil.copytree(build(family), folder)
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, "attn_implementation": attention}))
        built[family, attention] = folder
        return folder

    return build


@pytest.fixture(scope="module")
def prune_family(build_family, corpus_file, tmp_path_factory):
    """Return a function that prunes (once) a family's checkpoint with the given method and pattern."""
    root = tmp_path_factory.mktemp("pruned")
    pruned = {}

    def prune(family: str, method: str = "rose", pattern: str = "unstructured"):
        if (family, method, pattern) not in pruned:
            sparsity = 0.5 if pattern == "unstructured" else None
            pruned[family, method, pattern] = prune_model(
                str(build_family(family)), root / f"{family}-{method}-{pattern.replace(':', 'of')}",
                PruneSettings(method, pattern, sparsity, block_size=32), calibration=str(corpus_file),
                nsamples=4, seqlen=32, device="cpu", activation_dtype="float32",
            )
        return pruned[family, method, pattern]

    return prune


def _tokens(seed: int, windows: int = 3) -> torch.Tensor:
    return torch.randint(1, 250, (windows, SEQLEN), generator=torch.Generator().manual_seed(seed))


def _block_sublayers(model: nn.Module) -> dict[str, nn.Module]:
    prefix, blocks = adapters.find_blocks(model)
    return {
        f"{prefix}.{index}.{name}": module
        for index, block in enumerate(blocks)
        for name, module in blk.sublayers(block).items()
    }


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_blockwise_logits_match_model(build_family, family, attention):
    folder = build_family(family, attention)
    tokens = _tokens(0)
    inputs, kwargs = blk.capture_block_inputs(folder, tokens, "cpu", torch.float32)
    hidden = inputs
    for index in range(LAYERS):
        hidden = blk.run_block(blk.load_block(folder, index), hidden, kwargs, "cpu")

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    assert model.config._attn_implementation == attention
    with torch.no_grad():
        for layer in adapters.output_layers(model):
            hidden = layer(hidden)
        reference = model(tokens, use_cache=False).logits
    assert hidden.shape == reference.shape
    assert (hidden - reference).norm() / reference.norm() < 1e-5


def test_gpt2_positional_mask_captured(build_family):
    _, kwargs = blk.capture_block_inputs(build_family("gpt2", "eager"), _tokens(1), "cpu", torch.float32)
    mask = kwargs["attention_mask"]
    assert mask.shape == (1, 1, SEQLEN, SEQLEN)
    assert "cache" not in kwargs


def test_mixed_layer_types_captured_per_type(build_family):
    folder = build_family("qwen2-sliding")
    _, kwargs = blk.capture_block_inputs(folder, _tokens(2), "cpu", torch.float32)
    by_type = kwargs[blk.PER_LAYER_TYPE]
    assert sorted(by_type) == ["full_attention", "sliding_attention"]
    assert by_type["sliding_attention"]["attention_mask"] is not None
    assert blk.block_arguments(blk.load_block(folder, 1), kwargs) is by_type["sliding_attention"]


def test_untyped_block_rejected_for_mixed_arguments(build_family):
    folder = build_family("qwen2-sliding")
    inputs, kwargs = blk.capture_block_inputs(folder, _tokens(3, windows=1), "cpu", torch.float32)
    block = blk.load_block(folder, 0)
    delattr(block, blk.LAYER_TYPE_ATTRIBUTE)
    with pytest.raises(ValueError, match="differ by layer type"):
        blk.run_block(block, inputs, kwargs, "cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_checkpoint_reloads_half_sparse(prune_family, family):
    out = prune_family(family)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    modules = _block_sublayers(model)
    report = json.loads((out / "sparsity.json").read_text())

    assert len(modules) >= 4 * LAYERS
    assert sorted(report["layers"]) == sorted(f"{name}.weight" for name in modules)
    for name, module in modules.items():
        zeros = int((module.weight == 0).sum())
        assert zeros / module.weight.numel() == pytest.approx(0.5, abs=1e-6), name
        assert zeros == report["layers"][f"{name}.weight"]["zeros"], name


def test_gpt2_conv1d_two_of_four_along_inputs(prune_family):
    out = prune_family("gpt2", "sparsegpt", "2:4")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    modules = _block_sublayers(model)
    assert modules and all(blk.is_transposed(module) for module in modules.values())
    for name, module in modules.items():
        weight = module.weight  # Conv1D stores in_features × out_features
        rows = weight.t()  # one row per output feature
        zeros_per_group = (rows.reshape(rows.shape[0], -1, 4) == 0).sum(-1)
        assert bool((zeros_per_group == 2).all()), name
        # The same count along the output axis fails, so the check above can tell the orientations apart.
        wrong_axis = (weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1)
        assert not bool((wrong_axis == 2).all()), name


@pytest.mark.parametrize("family", FAMILIES)
def test_output_head_is_not_pruned(build_family, prune_family, family):
    dense = AutoModelForCausalLM.from_pretrained(str(build_family(family)), dtype=torch.float32)
    pruned = AutoModelForCausalLM.from_pretrained(str(prune_family(family)), dtype=torch.float32)
    assert torch.equal(pruned.get_output_embeddings().weight, dense.get_output_embeddings().weight)
    assert torch.equal(pruned.get_input_embeddings().weight, dense.get_input_embeddings().weight)


@pytest.mark.parametrize("family", TIED)
def test_tied_embeddings_survive_save_and_reload(prune_family, tmp_path, family):
    out = prune_family(family)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings
    assert head.data_ptr() == embeddings.data_ptr()
    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as handle:
        assert "lm_head.weight" not in handle.keys()

    model.save_pretrained(tmp_path / "resaved")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "resaved"), dtype=torch.float32)
    assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    before, after = model.state_dict(), reloaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    for name, module in _block_sublayers(reloaded).items():
        assert int((module.weight == 0).sum()) == int((before[f"{name}.weight"] == 0).sum()), name


@pytest.mark.parametrize("family", GROUPED_QUERY)
def test_grouped_query_hessians_span_inputs(build_family, family):
    folder = build_family(family)
    inputs, kwargs = blk.capture_block_inputs(folder, _tokens(4, windows=2), "cpu", torch.float32)
    block = blk.load_block(folder, 0)
    statistics = blk.accumulate_hessians(block, inputs, kwargs, "cpu")
    attention = block.self_attn
    assert attention.k_proj.out_features < attention.q_proj.out_features
    assert attention.v_proj.out_features < attention.q_proj.out_features

    shared = statistics["self_attn.q_proj"]
    assert shared.sublayers == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert shared.hessian.shape == (HIDDEN, HIDDEN)
    assert shared.act_sq_norm.shape == (HIDDEN,)


def test_phi_attention_and_mlp_share_one_hessian(build_family):
    folder = build_family("phi")
    inputs, kwargs = blk.capture_block_inputs(folder, _tokens(5, windows=2), "cpu", torch.float32)
    statistics = blk.accumulate_hessians(blk.load_block(folder, 0), inputs, kwargs, "cpu")
    groups = {leader: stats.sublayers for leader, stats in statistics.items()}
    assert groups == {
        "self_attn.q_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1"],
        "self_attn.dense": ["self_attn.dense"],
        "mlp.fc2": ["mlp.fc2"],
    }


@pytest.mark.parametrize(("family", "final_layers"), [("gpt_neo", ["transformer.ln_f"]), ("openai-gpt", [])])
def test_unknown_family_uses_fallback_and_logs(build_family, monkeypatch, caplog, family, final_layers):
    monkeypatch.setattr(adapters, "_warned_model_types", set())
    folder = build_family(family)
    tokens = _tokens(6, windows=2)
    inputs, kwargs = blk.capture_block_inputs(folder, tokens, "cpu", torch.float32)
    assert f"model type '{family}' has no adapter" in caplog.text
    assert "'transformer.h'" in caplog.text

    hidden = inputs
    for index in range(LAYERS):
        hidden = blk.run_block(blk.load_block(folder, index), hidden, kwargs, "cpu")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        for name in final_layers:
            hidden = model.get_submodule(name)(hidden)
        logits = model.lm_head(hidden)
        reference = model(tokens, use_cache=False).logits
    assert (logits - reference).norm() / reference.norm() < 1e-5
    with pytest.raises(ValueError, match="supported families: gpt2, llama, mistral, opt, phi, qwen2"):
        adapters.output_layers(model)


def test_block_buffer_left_uncomputed_rejected(build_family, monkeypatch):
    from transformers.models.openai import modeling_openai

    folder = build_family("openai-gpt")
    monkeypatch.setattr(modeling_openai.OpenAIGPTPreTrainedModel, "_init_weights", lambda self, module: None)
    with pytest.raises(NotImplementedError, match=r"does not compute \(attn\.bias\)"):
        blk.load_block(folder, 0)


def test_model_without_block_list_rejected():
    with pytest.raises(ValueError, match="no list of decoder blocks.*supported families"):
        adapters.find_blocks(nn.Sequential(nn.Linear(4, 4)))
