"""decode_linear.py: the decode-step products against F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmgen.decode_linear as D
from lmgen.decode_linear import MAX_ROWS, DecodeLinear, split_parts


def _linear(in_f, out_f, bias, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        if bias:
            lin.bias.normal_()
    return lin


# wide, narrow, square, a prime number of outputs (no split), outputs split in 29 blocks
SHAPES = [(24, 48), (48, 24), (32, 32), (24, 97), (33, 58), (7, 9)]
ROWS = [(1,), (1, 5), (2, 5), (3, 1, 2), (4, 5), (MAX_ROWS + 1, 1)]


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("in_f", "out_f"), SHAPES)
def test_decode_products_equal_f_linear(in_f, out_f, bias, threads):
    lin = _linear(in_f, out_f, bias)
    fn = DecodeLinear(lin)
    for lead in ROWS:
        x = torch.randn(*lead, in_f)
        want = F.linear(x, lin.weight, lin.bias)
        with torch.no_grad():
            got = fn(x)
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_each_path_is_taken(threads, monkeypatch):
    """Without lmgen's kernel: one or two rows: the turned-around split; three or more rows of
    a down projection: oneDNN; more than MAX_ROWS, or oneDNN missing: F.linear. Each gives
    F.linear's numbers."""
    monkeypatch.setattr(D.kernels, "available", lambda: False)
    calls = []
    real_baddbmm, real_linear = torch.baddbmm, F.linear
    monkeypatch.setattr(torch, "baddbmm", lambda *a: calls.append("split") or real_baddbmm(*a))
    monkeypatch.setattr(D.F, "linear", lambda *a: calls.append("linear") or real_linear(*a))
    narrow = _linear(48, 24, True)
    fn = DecodeLinear(narrow)
    with torch.no_grad():
        for rows, path in ((1, "split"), (2, "split"), (3, "onednn"), (MAX_ROWS + 1, "linear")):
            calls.clear()
            x = torch.randn(rows, 48)
            torch.testing.assert_close(fn(x), real_linear(x, narrow.weight, narrow.bias))
            assert calls == ([] if path == "onednn" else [path])
        monkeypatch.setitem(D._onednn, "ok", False)
        calls.clear()
        fn(torch.randn(3, 48))
        assert calls == ["linear"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_up_to_four_rows_go_to_the_kernel_where_it_builds(dtype, monkeypatch):
    if not D.kernels.available():
        pytest.skip(f"lmgen's kernel is not built here: {D.kernels.why_not()}")
    calls = []
    real = D.kernels.decode_gemv
    monkeypatch.setattr(D.kernels, "decode_gemv", lambda *a: calls.append(1) or real(*a))
    lin = _linear(40, 24, True).to(dtype)
    fn = DecodeLinear(lin)
    with torch.no_grad():
        for rows in (1, 2, 3, 4, 5):
            calls.clear()
            x = torch.randn(rows, 40).to(dtype)
            want = F.linear(x.double(), lin.weight.double(), lin.bias.double())
            got = fn(x)
            assert got.dtype == dtype and calls == ([1] if rows <= 4 else [])
            tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
            torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_split_parts():
    assert split_parts(768, 1) == 2 and split_parts(768, 2) == 2 and split_parts(768, 3) == 3
    assert split_parts(50257, 2) == 29  # 29 * 1733
    assert split_parts(97, 2) == 0  # prime: no split
    assert split_parts(9, 4) == 9


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_new_weights_and_dtypes_are_seen(threads):
    lin = _linear(24, 48, True)
    fn = DecodeLinear(lin)
    x = torch.randn(1, 24)
    with torch.no_grad():
        fn(x)
        lin.load_state_dict(_linear(24, 48, True, seed=5).state_dict())
        torch.testing.assert_close(fn(x), lin(x), atol=1e-5, rtol=1e-5)
        lin.double()
        xd = x.double()
        assert torch.equal(fn(xd), F.linear(xd, lin.weight, lin.bias))
        lin.bfloat16()
        xb = x.bfloat16()
        torch.testing.assert_close(fn(xb), F.linear(xb, lin.weight, lin.bias))


def test_with_autograd_it_is_f_linear_and_gradients_flow():
    """An eval-mode forward with gradients on (saliency, say) must give F.linear's gradients."""
    lin = _linear(48, 24, True)
    x = torch.randn(3, 48, requires_grad=True)
    DecodeLinear(lin)(x).square().sum().backward()
    want_x = torch.autograd.grad(F.linear(x, lin.weight, lin.bias).square().sum(), x)[0]
    assert torch.equal(x.grad, want_x)
    assert lin.weight.grad is not None
