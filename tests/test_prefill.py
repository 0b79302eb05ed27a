"""The prompt's path (model/prefill.py, prefill_linear.py): oneDNN's products for many rows and
the widened float16 prefill, against transformers, float64 products and the op-by-op path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmgen
import lmgen.prefill_linear as P
from conftest import TINY_VOCAB
from lmgen import decode_linear
from lmgen.model import prefill

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

pytestmark = pytest.mark.skipif(not P.available(), reason="no oneDNN linear in this torch")

V, PROMPT = TINY_VOCAB, 70  # a prompt of more than decode_linear.MAX_ROWS rows
FAMILIES = {
    "gpt2": ("GPT2Config", dict(n_embd=48, n_layer=2, n_head=4, n_positions=128)),
    "llama": ("LlamaConfig", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory, tiny_tokenizer):
    """(lmgen model fp32, transformers model fp32) with the same random weights."""
    cls, kw = FAMILIES[request.param]
    eos = tiny_tokenizer.eos_token_id
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(
        getattr(transformers, cls)(vocab_size=V, initializer_range=0.2, bos_token_id=eos,
                                   eos_token_id=eos, **kw)
    ).eval()  # fmt: skip
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    tiny_tokenizer.save(d)
    return lmgen.load(d).model, hf


def _ids(n=PROMPT, seed=1):
    return torch.randint(0, V, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def counted(monkeypatch):
    """Counts the calls of `prefill_product` (oneDNN's path)."""
    calls = []
    real = P.prefill_product
    monkeypatch.setattr(P, "prefill_product", lambda *a: calls.append(1) or real(*a))
    return calls


# --- the products --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("in_f", "out_f"), [(48, 144), (72, 48), (33, 97)])
def test_products_equal_float64(dtype, bias, in_f, out_f, counted):
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    fn = P.PrefillLinear(lin)
    x = torch.randn(2, 40, in_f).to(dtype)
    want = F.linear(x.double(), lin.weight.double(), None if not bias else lin.bias.double())
    with torch.no_grad():
        got = fn(x)
        widened = fn(x.float())
    assert counted and got.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # float16: one rounding of the result
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    # float32 activations with a float16 weight (the widened prefill): float32 out
    assert widened.dtype == torch.float32
    torch.testing.assert_close(widened.double(), want, atol=1e-5, rtol=1e-5)


def test_few_rows_bf16_and_autograd_keep_the_decode_paths(counted):
    lin = nn.Linear(16, 24)
    fn = P.PrefillLinear(lin)
    with torch.no_grad():
        fn(torch.randn(decode_linear.MAX_ROWS, 16))  # a decode step's rows
        P.PrefillLinear(lin.to(torch.bfloat16))(torch.randn(64, 16, dtype=torch.bfloat16))
    lin.float()
    y = fn(torch.randn(64, 16))  # grad on: F.linear, so backward works
    y.sum().backward()
    assert not counted and lin.weight.grad is not None


# --- the model ----------------------------------------------------------------------------


def test_fp32_prompt_equals_transformers(pair, counted):
    model, hf = pair
    ids = _ids()
    with torch.inference_mode():
        got = model(ids, cache=model.new_cache(1, PROMPT + 1))
        want = hf(ids).logits
    assert counted  # the prompt took oneDNN's products
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_fp32_prompt_equals_op_by_op(pair, counted, monkeypatch):
    """The same forward with lmgen's fast paths off (F.linear everywhere), and the decode
    step after each prompt."""
    model, _ = pair
    ids = _ids()
    outs = []
    for enabled in (True, False):
        monkeypatch.setattr(decode_linear, "ENABLED", enabled)
        cache = model.new_cache(1, PROMPT + 1)
        with torch.inference_mode():
            a = model(ids, cache=cache)
            b = model(ids[:, :1], cache=cache)
        outs.append((a, b, cache.layers[1][0][:, :, :PROMPT].clone()))
    assert len(counted) == 8  # 4 products a block, 2 blocks, the fast run only
    for new, old in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)


def test_decode_steps_never_take_the_prefill_products(pair, counted):
    """A one-token step of more than MAX_ROWS rows keeps the decode paths (and their bits)."""
    model, _ = pair
    rows = decode_linear.MAX_ROWS + 8
    ids = _ids(2 * rows).view(rows, 2)
    cache = model.new_cache(rows, 3)
    with torch.inference_mode():
        model(ids[:, :1], cache=cache)
        model(ids[:, 1:], cache=cache)
    assert not counted


def _fp16_runs(model, ids, monkeypatch):
    """(prompt logits, next step's logits, a layer's cached keys) for the widened prefill and
    the float16 op-by-op path."""
    out = {}
    for widened in (True, False):
        monkeypatch.setattr(decode_linear, "ENABLED", widened)
        cache = model.new_cache(1, ids.shape[1] + 1)
        with torch.inference_mode():
            assert prefill.widens(model, model.embed(ids, torch.arange(PROMPT)[None])) is widened
            a = model(ids, cache=cache).float()
            b = model(ids[:, :1], cache=cache).float()
        out[widened] = (a, b, cache.layers[1][0][:, :, : ids.shape[1]].float())
    return out


def test_fp16_prompt_is_widened_within_fp16_rounding(pair, monkeypatch):
    """The widened float16 prefill equals the op-by-op float16 path within float16 rounding,
    and is no further from the float32 model (transformers) than that path is."""
    model32, hf = pair
    model = type(model32)(model32.config)
    model.load_state_dict(model32.state_dict())
    model = model.eval().half()
    ids = _ids()
    runs = _fp16_runs(model, ids, monkeypatch)
    with torch.inference_mode():
        want = hf(ids).logits
    scale = want.abs().max().item()
    for new, old in zip(runs[True], runs[False], strict=True):
        torch.testing.assert_close(new, old, atol=8e-3 * max(1.0, old.abs().max().item()),
                                   rtol=0)  # fmt: skip
    err_new = (runs[True][0] - want).abs().max().item()
    err_old = (runs[False][0] - want).abs().max().item()
    assert err_new <= err_old * 1.05 + 1e-4 * scale
    assert runs[True][0].dtype == torch.float32  # (cast by the test)


def test_fp16_short_prompts_and_bf16_are_not_widened(pair):
    model, _ = pair
    short = torch.zeros(1, decode_linear.MAX_ROWS, 48, dtype=torch.float16)
    long = torch.zeros(1, PROMPT, 48, dtype=torch.float16)
    assert not prefill.widens(model, long)  # float32 weights
    half = type(model)(model.config).eval().half()
    assert prefill.widens(half, long) and not prefill.widens(half, short)
    assert not prefill.widens(half.bfloat16(), long.bfloat16())


def test_short_fp32_prompt_takes_the_row_kernel(pair, counted, monkeypatch):
    """A prompt of at most decode_linear.MAX_ROWS float32 rows multiplies by lmgen's row kernel
    (faster than oneDNN there), and its logits and cached keys equal the op-by-op path's."""
    from lmgen import kernels

    if not kernels.available():
        pytest.skip("lmgen.kernels is not built here")
    model, hf = pair
    ids = _ids(decode_linear.MAX_ROWS - 12)
    rows = []
    real = kernels.decode_gemv
    monkeypatch.setattr(kernels, "decode_gemv", lambda x, *a: rows.append(len(x)) or real(x, *a))
    outs = []
    for enabled in (True, False):
        monkeypatch.setattr(decode_linear, "ENABLED", enabled)
        cache = model.new_cache(1, ids.shape[1])
        with torch.inference_mode():
            outs.append((model(ids, cache=cache), cache.layers[1][0].clone()))
    assert rows == [ids.shape[1]] * 8 and not counted  # 4 products a block, 2 blocks
    for new, old in zip(*outs, strict=True):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(outs[0][0], hf(ids).logits, atol=1e-4, rtol=1e-4)
