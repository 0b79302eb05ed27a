"""lmgen.kernels' steps for rows that each have a KV cache of their own (the server's running
batch): `decode_step_rows` and `decode_step_rope_rows` through `InferencePlan.rows_step`.

Two oracles: the same step through the blocks one op at a time (`FUSED_DECODE_STEP` off, each
row alone with its own cache) to float rounding; and each row run alone through the same
kernel, bitwise, whatever the other rows are, how many there are and where the row sits
(batch invariance)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmgen  # noqa: E402
import lmgen.model as M  # noqa: E402
from lmgen import kernels  # noqa: E402
from lmgen.model import GPT, GPTConfig  # noqa: E402
from lmgen.tokenizers import BPETokenizer  # noqa: E402
from test_families import _hf_model  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.skipif(not kernels.available(), reason="lmgen.kernels not built here")

LENGTHS = [3, 9, 1, 14, 6, 2, 11]  # each row's tokens already in its cache: all different


def _gpt2():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, n_positions=40, n_embd=48, n_layer=3, n_head=4)
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def rope_models(tmp_path_factory):
    tok = BPETokenizer.train(texts=["to be or not to be, that is the question. " * 40],
                             vocab_size=300)  # fmt: skip
    out = {}
    for name in ("gemma3-local-global", "qwen2-bias-tied-mixed-window"):
        d = tmp_path_factory.mktemp(name)
        _hf_model(name, tok).save_pretrained(d)
        tok.save(d)
        out[name] = lmgen.load(d).model
    return out


def _prefilled(model, lengths, seed=1):
    """One 1-row cache per row, prefilled with its own tokens; each row's next token."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(model.config.vocab_size, 290)
    caches, nxt = [], []
    with torch.inference_mode():
        for n in lengths:
            ids = torch.randint(0, vocab, (1, n + 1), generator=g)
            c = model.new_cache(1, 24)
            model(ids[:, :n], cache=c)
            caches.append(c)
            nxt.append(int(ids[0, n]))
    return caches, nxt


def _copy(c):
    return c.repeat_rows(1)  # the same filled prefix in buffers of its own


def _rows_step(model, caches, tokens):
    plan = model.inference_plan()
    positions = [c.length for c in caches]
    with torch.inference_mode():
        x = model.embed(torch.tensor([tokens]), torch.tensor([positions])).view(len(tokens), -1)
        assert plan.fuses_rows(x)
        return plan.rows_step(x, caches, positions)


def _logits(model, h):
    with torch.inference_mode():
        return model.cap_logits(model.lm_head(model.ln_f(h)))


def _check(model, monkeypatch):
    caches, tokens = _prefilled(model, LENGTHS)
    together = [_copy(c) for c in caches]
    h = _rows_step(model, together, tokens)
    # bitwise: each row alone, and the rows in another order
    for b, c in enumerate(caches):
        alone = _copy(c)
        assert torch.equal(_rows_step(model, [alone], [tokens[b]])[0], h[b]), f"row {b}"
        n = c.length
        assert torch.equal(alone.k[:, :, :, : n + 1], together[b].k[:, :, :, : n + 1])
    order = [4, 0, 6, 2, 1, 5, 3]
    h2 = _rows_step(model, [_copy(caches[b]) for b in order], [tokens[b] for b in order])
    assert all(torch.equal(h2[i], h[b]) for i, b in enumerate(order))
    # against the step through the blocks op by op, each row alone
    monkeypatch.setattr(M.plan, "FUSED_DECODE_STEP", False)
    got = _logits(model, h)
    for b, c in enumerate(caches):
        ref_cache = _copy(c)
        with torch.inference_mode():
            ref = model(torch.tensor([[tokens[b]]]), cache=ref_cache)[0, -1]
        torch.testing.assert_close(got[b], ref, atol=1e-4, rtol=1e-4)
        n = c.length
        torch.testing.assert_close(together[b].k[:, :, :, n], ref_cache.k[:, :, :, n],
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def test_gpt2_rows_with_caches_of_their_own(monkeypatch):
    _check(_gpt2(), monkeypatch)


@pytest.mark.parametrize("name", ["gemma3-local-global", "qwen2-bias-tied-mixed-window"])
def test_rotary_rows_with_caches_of_their_own(rope_models, name, monkeypatch):
    """Grouped-query heads, sliding windows shorter than some rows' caches, Gemma's norms."""
    _check(rope_models[name], monkeypatch)


def _weight(wtype, out, inp, g):
    """A weight of `wtype` (int8 with a scale per output row) and a bias."""
    w = torch.randn(out, inp, generator=g)
    scale = None
    if wtype == torch.int8:
        w, scale = (w * 40).clamp(-127, 127).to(torch.int8), torch.rand(out, generator=g)
    else:
        w = w.to(wtype)
    return w, scale, torch.randn(out, generator=g)


WTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]


@pytest.mark.parametrize("wtype", WTYPES)
def test_a_rows_product_is_the_same_in_any_batch(wtype):
    """decode_gemv for 1 to 17 rows: each row's result is bitwise its result alone, at every
    place in the batch. The shapes reach every path of the tiling: `in` not a multiple of 8
    (the tail), output rows not a multiple of a tile, more than one tile of x (16 and 17 rows)
    and several blocks of W (so the prefetching tiles run too)."""
    g = torch.Generator().manual_seed(3)
    w, scale, bias = _weight(wtype, 70, 1003, g)
    x = torch.randn(17, 1003, generator=g)
    alone = torch.cat([kernels.decode_gemv(x[i : i + 1], w, scale, bias) for i in range(17)])
    for n in range(1, 18):
        for shift in range(n):  # every row of the first n at every place
            order = torch.arange(n).roll(shift)
            got = kernels.decode_gemv(x[order], w, scale, bias)
            assert torch.equal(got, alone[order]), f"{n} rows, shift {shift}"


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("rows", [1, 3, 7, 16])
def test_a_rows_product_is_torchs_matmul(wtype, rows):
    """Against torch's matmul in float64 on the same (converted) weights, to float rounding."""
    g = torch.Generator().manual_seed(rows)
    w, scale, bias = _weight(wtype, 45, 771, g)
    x = torch.randn(rows, 771, generator=g)
    wf = w.double() * (scale.double()[:, None] if scale is not None else 1.0)
    # bfloat16 weights multiply x rounded to bfloat16 (pair products, decode.cpp)
    xin = x.bfloat16() if wtype == torch.bfloat16 else x
    ref = xin.double() @ wf.T + bias.double()
    got = kernels.decode_gemv(x, w, scale, bias)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-3 * ref.abs().max().item())
    if wtype != torch.int8:  # half-precision activations in, the same dtype out
        got = kernels.decode_gemv(x.to(wtype), w, scale, bias)
        ref = x.to(wtype).double() @ wf.T + bias.double()
        assert got.dtype == wtype
        torch.testing.assert_close(got.double(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_rows_step_refuses_mismatched_caches():
    model = _gpt2()
    plan = model.inference_plan()
    caches, tokens = _prefilled(model, [2, 3])
    x = torch.randn(2, 48)
    args = (plan.step_params,)
    with pytest.raises(RuntimeError, match="one k cache, one v cache and one position per row"):
        kernels.decode_step_rows(x, *args, [caches[0].k], [caches[0].v], [2], 4, 1e-5, 0)
    with pytest.raises(RuntimeError, match="row 1's position is outside its KV cache"):
        kernels.decode_step_rows(x, *args, [c.k for c in caches], [c.v for c in caches],
                                 [2, 24], 4, 1e-5, 0)  # fmt: skip
    both = model.new_cache(2, 24)
    with pytest.raises(RuntimeError, match=r"\(n_layer, rows, heads, max_length, head_dim\)"):
        kernels.decode_step_rows(x, *args, [both.k, both.k], [both.v, both.v], [2, 3], 4,
                                 1e-5, 0)  # fmt: skip


@pytest.mark.parametrize("name", ["gpt2", "gpt2-bf16", "gemma3-local-global",
                                  "qwen2-bias-tied-mixed-window"])  # fmt: skip
def test_a_step_is_the_same_at_any_thread_count(rope_models, name):
    """A step runs in one parallel region, each thread a share of every product's outputs and
    of the attention heads (decode.cpp's Team): the bits, and what the step writes to the
    caches, do not depend on how many threads share it (3: shares of unequal sizes)."""
    model = {"gpt2": _gpt2, "gpt2-bf16": lambda: _gpt2().to(torch.bfloat16)}.get(
        name, lambda: rope_models[name]
    )()
    caches, tokens = _prefilled(model, LENGTHS)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            mine = [_copy(c) for c in caches]
            runs.append((_rows_step(model, mine, tokens), mine))
    finally:
        torch.set_num_threads(threads)
    h1, caches1 = runs[0]
    for h, mine in runs[1:]:
        assert torch.equal(h, h1)
        for a, b in zip(mine, caches1, strict=True):
            assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
