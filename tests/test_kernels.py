"""lmgen.kernels: the decode-step kernel against a float64 product (the oracle)."""

from __future__ import annotations

import pytest
import torch

from lmgen import kernels

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"lmgen's kernel is not built here: {kernels.why_not()}"
)


def _reference(x, w, scale, bias):
    y = x.double() @ w.double().T
    if scale is not None:
        y = y * scale.double()
    return y + bias.double() if bias is not None else y


# in_features: a multiple of 32, of 8 only, and with a scalar tail; out_features odd and wide
SHAPES = [(64, 5), (40, 17), (13, 3), (768, 2304)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("wtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
@pytest.mark.parametrize(("in_f", "out_f"), SHAPES)
def test_products_equal_a_float64_product(in_f, out_f, wtype, threads):
    g = torch.Generator().manual_seed(in_f * out_f)
    if wtype == torch.int8:
        w = torch.randint(-127, 128, (out_f, in_f), dtype=torch.int8, generator=g)
        scale = torch.rand(out_f, generator=g) / 100
    else:
        w, scale = torch.randn(out_f, in_f, generator=g).to(wtype), None
    bias = torch.randn(out_f, generator=g)
    for rows in (1, 2, 3, 4):
        for xtype in {torch.float32, wtype if wtype != torch.int8 else torch.float32}:
            x = torch.randn(rows, in_f, generator=g).to(xtype)
            b = bias.to(xtype)
            y = kernels.decode_gemv(x, w, scale, b)
            assert y.shape == (rows, out_f) and y.dtype == xtype
            # float32 accumulation: error grows like sqrt(in) * |x||w|; rounding to xtype
            want = _reference(x, w, scale, b)
            tol = TOLERANCE[xtype] * (1 + in_f**0.5 / 4)
            torch.testing.assert_close(y.double(), want, atol=tol, rtol=TOLERANCE[xtype])
            if scale is None:
                y0 = kernels.decode_gemv(x, w, None, None)
                torch.testing.assert_close(y0.double(), want - b.double(), atol=tol, rtol=tol)


def test_bad_arguments_are_refused_with_a_message():
    w = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="1 to 4 rows"):
        kernels.decode_gemv(torch.randn(5, 8), w)
    with pytest.raises(RuntimeError, match="disagree on in_features"):
        kernels.decode_gemv(torch.randn(1, 7), w)
    with pytest.raises(RuntimeError, match="float32, float16, bfloat16 or int8"):
        kernels.decode_gemv(torch.randn(1, 8), w.double())
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.decode_gemv(torch.randn(1, 4), w.t())
    with pytest.raises(RuntimeError, match="one scale per output row"):
        kernels.decode_gemv(torch.randn(1, 8), w, torch.ones(3))


def test_lmgen_kernels_0_keeps_torch_products(monkeypatch):
    monkeypatch.setenv("LMGEN_KERNELS", "0")
    monkeypatch.setitem(kernels._state, "ok", None)
    assert not kernels.available()
    assert kernels.why_not() == "LMGEN_KERNELS=0"
    monkeypatch.setitem(kernels._state, "ok", None)
    monkeypatch.delenv("LMGEN_KERNELS")
    assert kernels.available()  # built already: loads again


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("B", "H", "L", "D"), [(1, 3, 1, 8), (2, 4, 37, 64), (3, 2, 130, 20)])
def test_one_query_attention_equals_a_float64_softmax(B, H, L, D, dtype, threads):
    g = torch.Generator().manual_seed(L)
    # keys and values as a decode step sees them: the filled prefix of a longer cache
    cache_k = (torch.randn(B, H, L + 9, D, generator=g) * 2).to(dtype)
    cache_v = torch.randn(B, H, L + 9, D, generator=g).to(dtype)
    k, v = cache_k[:, :, :L], cache_v[:, :, :L]
    q = torch.randn(B, 1, 3, H, D, generator=g).to(dtype).permute(2, 0, 3, 1, 4)[0]  # a view
    scores = q.double() @ k.double().transpose(-1, -2) / D**0.5
    want = scores.softmax(-1) @ v.double()
    got = kernels.decode_attention(q, k, v)
    assert got.shape == (B, H, 1, D) and got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_attention_refuses_what_it_does_not_do():
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(RuntimeError, match="one query per row"):
        kernels.decode_attention(torch.randn(1, 2, 2, 8), k, k)
    with pytest.raises(RuntimeError, match="disagree in shape"):
        kernels.decode_attention(q, k, torch.randn(1, 2, 4, 8))
    with pytest.raises(RuntimeError, match="of one dtype"):
        kernels.decode_attention(q, k, k.half())
    with pytest.raises(RuntimeError, match="last dimension must be contiguous"):
        kernels.decode_attention(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), k)
