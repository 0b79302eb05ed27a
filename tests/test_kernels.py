"""lmgen.kernels: the decode-step kernel against a float64 product (the oracle)."""

from __future__ import annotations

import pytest
import torch

from lmgen import kernels

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"lmgen's kernel is not built here: {kernels.why_not()}"
)


def _as_product_input(x, w):
    """x as the kernel multiplies it by w: rounded to bfloat16 for bfloat16 weights."""
    return x.bfloat16() if w.dtype == torch.bfloat16 else x


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
            # float32 accumulation: error grows like sqrt(in) * |x||w|; rounding to xtype.
            # bfloat16 weights multiply x rounded to bfloat16 (pair products, decode.cpp)
            want = _reference(_as_product_input(x, w), w, scale, b)
            tol = TOLERANCE[xtype] * (1 + in_f**0.5 / 4)
            torch.testing.assert_close(y.double(), want, atol=tol, rtol=TOLERANCE[xtype])
            if scale is None:
                y0 = kernels.decode_gemv(x, w, None, None)
                torch.testing.assert_close(y0.double(), want - b.double(), atol=tol, rtol=tol)


def test_bad_arguments_are_refused_with_a_message():
    w = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="at least one row"):
        kernels.decode_gemv(torch.randn(0, 8), w)
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


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize(
    ("dtype", "act", "quantized", "tol"),
    [
        (torch.float32, "gelu_new", False, 1e-5),
        (torch.float32, "gelu", False, 1e-5),
        (torch.float32, "relu", True, 1e-5),
        (torch.bfloat16, "gelu_new", False, 3e-2),
        (torch.float16, "gelu_new", True, 4e-3),
    ],
)
@pytest.mark.parametrize("rows", [1, 3, 4])
def test_fused_step_equals_the_step_block_by_block(
    rows, dtype, act, quantized, tol, threads, monkeypatch
):
    """lmgen.kernels.decode_step (every block of a step in one call) against the same steps
    through the blocks one op at a time (FUSED_DECODE_STEP off): logits and the KV cache."""
    import lmgen.model as M
    from lmgen.model import GPT, GPTConfig
    from lmgen.quantize import quantize_model

    torch.manual_seed(rows)
    cfg = GPTConfig(vocab_size=61, n_positions=40, n_embd=48, n_layer=3, n_head=4)
    model = GPT(GPTConfig(**{**cfg.to_dict(), "activation_function": act})).eval().to(dtype)
    if quantized:
        quantize_model(model)
    calls = []
    real = kernels.decode_step
    monkeypatch.setattr(kernels, "decode_step", lambda *a: calls.append(1) or real(*a))
    ids = torch.randint(0, 61, (rows, 12))
    results = {}
    with torch.inference_mode():
        for fused in (True, False):
            monkeypatch.setattr(M.plan, "FUSED_DECODE_STEP", fused)
            cache = model.new_cache(rows, 20)
            model(ids[:, :6], cache=cache)
            steps = [model(ids[:, i : i + 1], cache=cache) for i in range(6, 12)]
            results[fused] = (torch.cat(steps, 1), cache.k[:, :, :, :12], cache.v[:, :, :, :12])
    assert len(calls) == 6  # the fused run's six steps, and only those
    for got, want in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def test_fused_step_is_left_for_what_it_does_not_do(monkeypatch):
    """Padding, five rows or more, gradients and hooks keep the block-by-block step."""
    from lmgen.model import GPT, GPTConfig

    calls = []
    real = kernels.decode_step
    monkeypatch.setattr(kernels, "decode_step", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()

    def step(rows, mask=None, grad=False):
        with torch.set_grad_enabled(grad):
            c = m.new_cache(rows, 8)
            m(torch.zeros(rows, 3, dtype=torch.long), cache=c, attention_mask=mask)
            m(torch.zeros(rows, 1, dtype=torch.long), cache=c)

    step(2)
    assert calls == [1]
    step(5)
    step(2, mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    step(1, grad=True)
    handle = m.h[0].mlp.register_forward_hook(lambda *a: None)
    step(1)
    handle.remove()
    assert calls == [1]


def test_fused_step_sees_replaced_parameters_and_layers(monkeypatch):
    """The fused step's tensor list is gathered again after a parameter is replaced (not just
    edited in place), e.g. by load_state_dict(assign=True), or a layer is swapped."""
    import lmgen.model as M
    from lmgen.model import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=30, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    m, other = GPT(cfg).eval(), GPT(cfg).eval()
    ids = torch.randint(0, 30, (1, 5))

    def last_logits(model, fused):
        monkeypatch.setattr(M.plan, "FUSED_DECODE_STEP", fused)
        with torch.inference_mode():
            c = model.new_cache(1, 8)
            model(ids[:, :4], cache=c)
            return model(ids[:, 4:], cache=c)

    last_logits(m, True)  # builds the plan and its list
    m.load_state_dict(other.state_dict(), assign=True)
    torch.testing.assert_close(last_logits(m, True), last_logits(other, False))
    m.h[1].mlp.c_fc = torch.nn.Linear(16, 64)
    torch.testing.assert_close(last_logits(m, True), last_logits(m, False))


def test_fused_step_refuses_mismatched_tensors():
    from lmgen.model import GPT, GPTConfig

    m = GPT(GPTConfig(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    params = list(m.inference_plan().step_params)
    cache = m.new_cache(1, 8)
    x = torch.randn(1, 16)
    args = (cache.k, cache.v, 0, 2, 1e-5, 0)
    kernels.decode_step(x, params, *args)  # as given: fine
    bad = params.copy()
    bad[5] = torch.randn(16, 8)  # attention c_proj of the wrong shape
    with pytest.raises(RuntimeError, match="layer 0 weight 1 must be a contiguous"):
        kernels.decode_step(x, bad, *args)
    bad = params.copy()
    bad[0] = torch.ones(8)  # ln_1 weight
    with pytest.raises(RuntimeError, match="n_embd values"):
        kernels.decode_step(x, bad, *args)
    with pytest.raises(RuntimeError, match="16 parameters per layer"):
        kernels.decode_step(x, params[:-1], *args)
    with pytest.raises(RuntimeError, match="position outside the KV cache"):
        kernels.decode_step(x, params, cache.k, cache.v, 8, 2, 1e-5, 0)


def test_one_process_builds_at_a_time_and_a_killed_builds_lock_goes(tmp_path):
    """kernels.build_lock: a second process waits while one holds the build directory (two
    pytest workers building the first time), the lock goes with a process killed while holding
    it, and torch's own lock file left by a killed build is removed rather than waited on."""
    import subprocess
    import sys
    import time

    hold = (
        "import sys, time; from pathlib import Path; from lmgen import kernels\n"
        "with kernels.build_lock(Path(sys.argv[1])):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path), "1.5"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    t0 = time.perf_counter()
    with kernels.build_lock(tmp_path):
        waited = time.perf_counter() - t0
    holder.wait()
    assert waited > 0.5  # it waited for the holder to finish
    killed = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path), "60"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert killed.stdout.readline().strip() == "held"
    (tmp_path / "lock").touch()  # what torch's build leaves when it is killed midway
    killed.kill()
    killed.wait()
    with kernels.build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
