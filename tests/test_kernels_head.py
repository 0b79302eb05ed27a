"""lmgen.kernels.decode_head: the final norm and the head's product in one call, against a
float64 closed form (LayerNorm with and without a bias, RMSNorm, Gemma's 1 + w; float32,
bfloat16, float16 and int8 weights; ggml blocks to the rounding of the activations to int8),
each row's bits the same alone or among others, and the forward pass taking it for a decode
step and a prompt's last position."""

import pytest
import torch

import lmgen.model as M
from lmgen import kernels
from lmgen.ggml_blocks import quantize_q4_0, quantize_q8_0
from lmgen.kernels import quant
from lmgen.model import GPT, GPTConfig
from lmgen.quantize import QuantLinear, quantize_weight

pytestmark = pytest.mark.skipif(not kernels.available(), reason="lmgen's kernels not built here")
C, V = 96, 200


def _norm64(x, norm, w, b, eps):
    x = x.double()
    if norm == 0:
        var = x.var(-1, unbiased=False, keepdim=True)
        h = (x - x.mean(-1, keepdim=True)) / torch.sqrt(var + eps)
        return h * w.double() + (b.double() if b is not None else 0)
    h = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return h * ((1 + w.double()) if norm == 2 else w.double())


@pytest.mark.parametrize("norm,with_bias", [(0, True), (0, False), (1, False), (2, False)])
@pytest.mark.parametrize("wtype", ["fp32", "bf16", "fp16", "int8"])
def test_the_head_is_the_norm_then_the_product(norm, with_bias, wtype):
    g = torch.Generator().manual_seed(norm * 7 + with_bias)
    x = torch.randn(3, C, generator=g) * 2 + 0.5
    nw = torch.rand(C, generator=g) + 0.5
    nb = torch.randn(C, generator=g) * 0.1 if with_bias else None
    w = torch.randn(V, C, generator=g) * 0.05
    bias = torch.randn(V, generator=g) * 0.1
    scale = None
    if wtype == "int8":
        w, scale = quantize_weight(w)
        dense = w.double() * scale.double()[:, None]
    else:
        w = w.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[wtype])
        dense = w.double()
    got = kernels.decode_head(x, [nw, nb, w, scale, bias], 1e-5, norm)
    h = _norm64(x, norm, nw, nb, 1e-5)
    atol = 1e-4
    if wtype == "bf16":  # the product takes the normed x rounded to bfloat16 (decode.cpp); the
        # kernel's float32 norm may round an element the other way: one bfloat16 step of it
        h, atol = h.bfloat16().double(), 2e-3
    want = h @ dense.T + bias.double()
    assert got.dtype == torch.float32 and got.shape == (3, V)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_logits_come_in_the_activations_dtype(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, C, generator=g).to(dtype)
    nw, w = torch.ones(C, dtype=dtype), (torch.randn(V, C, generator=g) * 0.05).to(dtype)
    got = kernels.decode_head(x, [nw, None, w, None, None], 1e-6, 1)
    want = (_norm64(x.float(), 1, nw.float(), None, 1e-6) @ w.double().T).to(dtype)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def _blocks_head(kind: str, w: torch.Tensor) -> QuantLinear:
    return QuantLinear([{"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0}[kind](w)], None)


@pytest.mark.skipif(not quant.available(), reason="lmgen's block kernels not built here")
@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0"])
def test_a_head_of_ggml_blocks_is_their_product(kind):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, C, generator=g)
    nw = torch.rand(C, generator=g) + 0.5
    head = _blocks_head(kind, torch.randn(256, C, generator=g) * 0.05)
    blocks = ([head._buffers[n] for n in head.names], [1, quant.KINDS[head.kinds[0]]])
    got = kernels.decode_head(x, [nw, None, None, None, None], 1e-6, 1, blocks)
    h = _norm64(x, 1, nw, None, 1e-6)
    want = h @ head.parts()[0].dequantize().double().T
    # the kernel rounds the normed activations to int8 per block of 32, as llama.cpp does
    err = (got.double() - want).abs().max() / want.abs().max()
    assert err < 2e-2
    # QuantLinear's own product of (nearly: the norm's float32 rounding) the same x
    torch.testing.assert_close(got, head(h.float()), rtol=0, atol=5e-3)


@pytest.mark.parametrize("wtype", ["fp32", "int8", "Q8_0"])
def test_each_rows_logits_are_the_same_alone_or_among_others(wtype):
    if wtype == "Q8_0" and not quant.available():
        pytest.skip("lmgen's block kernels not built here")
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, C, generator=g)
    nw, nb = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g) * 0.1
    w = torch.randn(V, C, generator=g) * 0.05
    blocks, scale = ((), ()), None
    if wtype == "int8":
        w, scale = quantize_weight(w)
    elif wtype == "Q8_0":
        head = _blocks_head("Q8_0", torch.randn(256, C, generator=g) * 0.05)
        blocks, w = ([head._buffers[n] for n in head.names], [1, quant.KINDS["Q8_0"]]), None
    params = [nw, nb, w, scale, None]
    together = kernels.decode_head(x, params, 1e-5, 0, blocks)
    for r in range(6):
        alone = kernels.decode_head(x[r : r + 1].clone(), params, 1e-5, 0, blocks)
        assert torch.equal(alone[0], together[r])


def test_bad_parameters_are_refused_by_name():
    x, w = torch.randn(1, C), torch.randn(V, C)
    with pytest.raises(RuntimeError, match="decode_head: 5 parameters"):
        kernels.decode_head(x, [torch.ones(C), None, w], 1e-5, 0)
    with pytest.raises(RuntimeError, match="decode_head: an RMSNorm has no bias"):
        kernels.decode_head(x, [torch.ones(C), torch.zeros(C), w, None, None], 1e-5, 1)
    with pytest.raises(RuntimeError, match=r"decode_head: the head's weight"):
        kernels.decode_head(x, [torch.ones(C), None, w[:, :10], None, None], 1e-5, 0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_forward_pass_takes_it_for_a_step_and_a_prompts_last_position(family, monkeypatch):
    kw = dict(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    if family == "llama":
        kw.update(positions="rope", norm="rmsnorm", mlp="gated", activation_function="silu",
                  n_inner=128, norm_bias=False, mlp_bias=False, qkv_bias=False,
                  attn_out_bias=False)  # fmt: skip
    torch.manual_seed(0)
    model = GPT(GPTConfig(**kw)).eval()
    calls = []
    real = kernels.decode_head
    monkeypatch.setattr(kernels, "decode_head", lambda *a: calls.append(a[0].shape) or real(*a))
    ids = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        cache = model.new_cache(1, 16)
        first = model(ids[:, :-1], cache=cache, logits_to_keep=1)
        step = model(ids[:, -1:], cache=cache, logits_to_keep=1)
        monkeypatch.setattr(M.plan, "FUSED_DECODE_STEP", False)
        ref_cache = model.new_cache(1, 16)
        ref_first = model(ids[:, :-1], cache=ref_cache, logits_to_keep=1)
        ref_step = model(ids[:, -1:], cache=ref_cache, logits_to_keep=1)
    assert calls == [(1, 64), (1, 64)]
    torch.testing.assert_close(first, ref_first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, ref_step, rtol=1e-5, atol=1e-5)
