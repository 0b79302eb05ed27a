"""int8 weight-only quantization (quantize.py) against the float model."""

from __future__ import annotations

import copy

import torch

import lmgen
from lmgen.model import GPT, GPTConfig
from lmgen.quantize import Int8Linear, is_quantized, quantize_model, quantize_weight


def test_quantize_weight_round_trip_error_is_half_a_step():
    w = torch.randn(64, 48)
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


def test_int8_linear_matches_dequantized_linear():
    lin = torch.nn.Linear(48, 40)
    q = Int8Linear.from_linear(lin)
    ref_w = q.dequantized(torch.float32)
    for rows in (1, 3, 20):  # the int8 kernel (bf16 activations) and the dequantized path
        x = torch.randn(rows, 48)
        want = torch.nn.functional.linear(x, ref_w, lin.bias)
        torch.testing.assert_close(q(x), want, atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(q(torch.randn(2, 5, 48)).shape, torch.Size([2, 5, 40]))


def test_quantized_model_logits_close_and_greedy_mostly_equal():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=200, n_positions=64, n_embd=64, n_layer=2, n_head=4)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4.0)  # larger logits, so the comparison means something
    q = quantize_model(copy.deepcopy(m))
    assert is_quantized(q) and not is_quantized(m)
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        a, b = m(ids), q(ids)
        assert (a - b).abs().max() / a.abs().max() < 0.05
        ca, cb = m.new_cache(2, 20), q.new_cache(2, 20)
        m(ids, cache=ca)
        q(ids, cache=cb)
        # the int8 kernel path: bf16 activations and outputs, so a looser bound
        sa, sb = m(ids[:, :1], cache=ca), q(ids[:, :1], cache=cb)
        assert (sa - sb).abs().max() / sa.abs().max() < 0.15
        assert bool((sa.argmax(-1) == sb.argmax(-1)).all())
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    assert agree > 0.8


def test_load_with_quantize(tiny_model_dir):
    lm = lmgen.load(tiny_model_dir, quantize="int8")
    assert is_quantized(lm.model)
    plain = lmgen.load(tiny_model_dir)
    a = plain.generate("to be", max_new_tokens=8).token_ids
    b = lm.generate("to be", max_new_tokens=8).token_ids
    assert len(b) == len(a)
