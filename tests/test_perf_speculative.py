"""Speculative decoding (speculative.py): greedy gives the plain tokens; sampling follows the
target's distribution (chi-square over two-token continuations)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from bench.benchmark import IdTokenizer
from lmgen.decoding.speculative import SpeculativeStats
from lmgen.errors import ConfigError
from lmgen.lm import LM
from lmgen.model import GPT, GPTConfig


def _lm(seed, vocab=64, layers=2, scale=6.0):
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=vocab,
        n_positions=128,
        n_embd=32,
        n_layer=layers,
        n_head=2,
        bos_token_id=None,
        eos_token_id=None,
    )
    m = GPT(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return LM(m, IdTokenizer(vocab))


def _truncated_draft(lm):
    d = copy.deepcopy(lm.model)
    d.h = d.h[:1]
    d.config = copy.copy(d.config)
    d.config.n_layer = 1
    d.reset_plan()
    return LM(d, lm.tokenizer)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_tokens_equal_plain_greedy(k):
    target = _lm(0)
    for draft in (_lm(1), _truncated_draft(target), target):
        stats = SpeculativeStats()
        kw = dict(max_new_tokens=30, ignore_eos=True)
        plain = target.generate("1 2 3", **kw)
        spec = target.generate("1 2 3", draft=draft, speculative_k=k, spec_stats=stats, **kw)
        assert spec.token_ids == plain.token_ids
        assert spec.choices[0].logprobs == pytest.approx(plain.choices[0].logprobs, abs=1e-4)
        if draft is target:
            assert stats.acceptance == 1.0


def _p_value(observed, expected):
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    dof = len(expected) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def test_accept_or_resample_gives_the_target_distribution_chi_square():
    from lmgen.decoding.speculative import _draw, accept_or_resample

    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0], dtype=torch.float64)
    q = torch.tensor([0.1, 0.4, 0.1, 0.0, 0.2, 0.2], dtype=torch.float64)  # a poor draft
    n = 20000
    counts = [0] * 6
    kept = 0
    for _ in range(n):
        t, ok = accept_or_resample(p, q, _draw(q, g), g)
        counts[t] += 1
        kept += ok
    assert counts[5] == 0
    assert _p_value(counts[:5], [n * float(x) for x in p[:5]]) > 1e-3
    # the acceptance rate is sum(min(p, q))
    assert abs(kept / n - float(torch.minimum(p, q).sum())) < 0.02


@pytest.mark.slow
def test_sampling_follows_the_target_distribution():
    vocab = 6
    target, draft = _lm(0, vocab=vocab, scale=3.0), _lm(5, vocab=vocab, scale=3.0)
    prompt = "1 2"
    ids = torch.tensor([[1, 2]])
    # exact p(t1, t2) under the target with temperature 0.9 and top-k 4
    from lmgen.generation_config import GenerationConfig
    from lmgen.processors import build_chain

    cfg = GenerationConfig(strategy="sample", temperature=0.9, top_k=4)
    chain = build_chain(cfg, prompt_length=2, eos_token_ids=[])
    with torch.no_grad():
        p1 = chain(ids, target.model(ids)[:, -1]).softmax(-1)[0]
        exact = {}
        for a in range(vocab):
            x = torch.tensor([[1, 2, a]])
            p2 = chain(x, target.model(x)[:, -1]).softmax(-1)[0]
            for b in range(vocab):
                exact[(a, b)] = float(p1[a] * p2[b])
    n = 1500
    counts = dict.fromkeys(itertools.product(range(vocab), repeat=2), 0)
    stats = SpeculativeStats()
    for seed in range(n):
        out = target.generate(
            prompt,
            strategy="sample",
            temperature=0.9,
            top_k=4,
            seed=seed,
            max_new_tokens=2,
            ignore_eos=True,
            draft=draft,
            speculative_k=2,
            spec_stats=stats,
        )
        counts[tuple(out.token_ids)] += 1
    assert 0 < stats.acceptance < 1  # both the accept and the reject branches ran
    support = [c for c in exact if exact[c] > 0]
    assert all(counts[c] == 0 for c in exact if exact[c] == 0)
    assert _p_value([counts[c] for c in support], [n * exact[c] for c in support]) > 1e-3


def test_bad_drafts_are_refused():
    target = _lm(0)
    # a draft with a vocabulary of its own is universal assisted decoding (issue 29): lossless
    plain = target.generate("1 2", max_new_tokens=4)
    other = target.generate("1 2", draft=_lm(1, vocab=32), max_new_tokens=4)
    assert other.token_ids == plain.token_ids
    with pytest.raises(ConfigError):
        target.generate("1 2", draft=_lm(1), strategy="beam", num_beams=2, max_new_tokens=4)
