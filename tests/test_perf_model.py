"""The inference fast path (model.py) against the module path."""

from __future__ import annotations

import copy

import pytest
import torch

from lmgen.model import GPT, GPTConfig


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=97, n_positions=64, n_embd=32, n_layer=3, n_head=4, dropout=0.0, **kw
    )
    m = GPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _module_path(m):
    """Train mode with dropout 0 runs the modules one by one: the reference path."""
    m.train()
    for b in m.h:
        b.attn.attn_dropout = 0.0
    return m


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("products", [False, True])
@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_fast_path_equals_module_path(padded, serial, products, threads, monkeypatch):
    """Bitwise equal with `F.linear` products on one thread. The decode products
    (decode_linear.py) sum in another order, and so may the one-thread decode attention with
    more threads: then equal to float32 rounding."""
    import lmgen.decode_linear as D
    import lmgen.model as M

    monkeypatch.setattr(M.plan, "SERIAL_DECODE_ATTENTION", serial)
    monkeypatch.setattr(D, "ENABLED", products)
    same = (
        (lambda a, b: torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5))
        if (products or threads > 1)
        else (lambda a, b: torch.equal(a, b) or pytest.fail("not bitwise equal"))
    )
    fast = _model().eval()
    slow = _module_path(copy.deepcopy(fast))
    ids = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :3] = 0
        mask[2, :1] = 0
    outs = []
    with torch.no_grad():
        for m in (fast, slow):
            cache = m.new_cache(3, 20)
            steps = [m(ids, attention_mask=mask, cache=cache)]
            for i in range(5):
                steps.append(m(ids[:, i : i + 1], cache=cache))
            steps.append(m(ids[:, :3], cache=cache))  # a multi-token step after the prompt
            steps.append(
                m(ids[:, :1], attention_mask=torch.ones(3, 1, dtype=torch.long), cache=cache)
            )
            outs.append(steps)
            assert cache.length == 7 + 5 + 3 + 1
    for a, b in zip(*outs, strict=True):
        same(a, b)
    with torch.no_grad():  # no cache, and logits_to_keep
        same(fast(ids, attention_mask=mask), slow(ids, attention_mask=mask))
        same(fast(ids, logits_to_keep=2), slow(ids, logits_to_keep=2))


def test_cache_reorder_gathers_rows():
    m = _model().eval()
    ids = torch.randint(0, 97, (4, 5))
    for index in ([0, 1, 2, 3], [1, 1, 2, 0], [3, 2, 1, 0]):
        c = m.new_cache(4, 10)
        with torch.no_grad():
            m(ids, cache=c)
        k, v, mask = c.k.clone(), c.v.clone(), c.mask.clone()
        c.reorder(torch.tensor(index))
        assert torch.equal(c.k[:, :, :, :5], k[:, index, :, :5])
        assert torch.equal(c.v[:, :, :, :5], v[:, index, :, :5])
        assert torch.equal(c.mask, mask[index])
        assert all(lk.data_ptr() == c.k[i].data_ptr() for i, (lk, _) in enumerate(c.layers))
        with torch.no_grad():  # a step on the reordered cache, then a second reorder
            step = m(ids[:, :1], cache=c)
        k2 = c.k.clone()
        c.reorder(torch.tensor([2, 0, 0, 1]))
        assert torch.equal(c.k[:, :, :, :6], k2[:, [2, 0, 0, 1], :, :6])
        fresh = m.new_cache(4, 10)
        with torch.no_grad():
            m(ids[index], cache=fresh)
            nxt = ids[:1, :1].expand(4, 1)
            torch.testing.assert_close(m(nxt, cache=fresh), m(nxt, cache=_reordered(m, ids, index)))
        assert step.shape == (4, 1, 97)


def _reordered(m, ids, index):
    c = m.new_cache(4, 10)
    with torch.no_grad():
        m(ids, cache=c)
    c.reorder(torch.tensor(index))
    return c


def test_hooks_still_fire_and_copies_work():
    m = _model().eval()
    seen = []
    h = m.wte.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    ids = torch.randint(0, 97, (1, 4))
    with torch.no_grad():
        m(ids)
    h.remove()
    assert seen == [(1, 4, 32)]
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        assert torch.equal(m2(ids), m(ids))
        m(ids)  # builds the plan
        m3 = copy.deepcopy(m)
        assert m3.inference_plan().layers[0][0].__self__ is m3.h[0].ln_1
        assert torch.equal(m3(ids), m(ids))
