"""Blocks run one at a time with the captured arguments behave like the whole model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rose import blocks as blk


def _blockwise_logits(model_dir, tokens):
    inputs, kwargs = blk.capture_block_inputs(model_dir, tokens, "cpu", torch.float32)
    hidden = inputs
    for index in range(blk.load_config(model_dir).num_hidden_layers):
        hidden = blk.run_block(blk.load_block(model_dir, index), hidden, kwargs, "cpu")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        blockwise = model.lm_head(model.model.norm(hidden))
        reference = model(tokens, use_cache=False).logits
    return blockwise, reference


def test_blockwise_run_matches_full_model(tiny_model):
    tokens = torch.randint(0, 250, (3, 24), generator=torch.Generator().manual_seed(0))
    blockwise, reference = _blockwise_logits(tiny_model, tokens)
    relative = (blockwise - reference).norm() / reference.norm()
    assert relative < 1e-5


def test_captured_kwargs_hold_rotary_embeddings(tiny_model):
    tokens = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(1))
    inputs, kwargs = blk.capture_block_inputs(tiny_model, tokens, "cpu", torch.float32)
    assert inputs.shape == (2, 16, 64)
    cos, sin = kwargs["position_embeddings"]
    assert cos.shape[-2] == 16
    assert "past_key_values" not in kwargs


def test_hessians_shared_by_sublayers_with_one_input(tiny_model):
    tokens = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(2))
    inputs, kwargs = blk.capture_block_inputs(tiny_model, tokens, "cpu", torch.float32)
    statistics = blk.accumulate_hessians(blk.load_block(tiny_model, 0), inputs, kwargs, "cpu")
    groups = {leader: stats.sublayers for leader, stats in statistics.items()}
    assert groups == {
        "self_attn.q_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "self_attn.o_proj": ["self_attn.o_proj"],
        "mlp.gate_proj": ["mlp.gate_proj", "mlp.up_proj"],
        "mlp.down_proj": ["mlp.down_proj"],
    }
    assert statistics["mlp.down_proj"].hessian.shape == (160, 160)


def test_hessian_equals_direct_formula(tiny_model):
    tokens = torch.randint(0, 250, (3, 16), generator=torch.Generator().manual_seed(3))
    inputs, kwargs = blk.capture_block_inputs(tiny_model, tokens, "cpu", torch.float32)
    block = blk.load_block(tiny_model, 0)
    statistics = blk.accumulate_hessians(block, inputs, kwargs, "cpu")
    with torch.no_grad():
        normed = torch.cat([block.input_layernorm(inputs[i : i + 1]) for i in range(3)]).reshape(-1, 64)
    expected = 2.0 / 3 * normed.T @ normed
    stats = statistics["self_attn.q_proj"]
    torch.testing.assert_close(stats.hessian, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.act_sq_norm, (normed**2).sum(0) / 3, rtol=1e-4, atol=1e-5)


def test_missing_block_index_rejected(tiny_model):
    with pytest.raises(ValueError, match="block 7 does not exist"):
        blk.load_block(tiny_model, 7)
