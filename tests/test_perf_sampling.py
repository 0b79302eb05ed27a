"""The fused top-k/top-p sampler (fast_sampling.py) against the processor chain + the
inverse-CDF sampler: identical kept sets, the same seeded draws, and a chi-square test."""

from __future__ import annotations

import math

import pytest
import torch

from lmgen.decoding.sampling import FusedSampler
from lmgen.generation_config import GenerationConfig
from lmgen.processors import build_chain, sample_from_logits

SETTINGS = [
    dict(temperature=0.8, top_k=50, top_p=0.9),
    dict(temperature=1.0, top_k=10),
    dict(temperature=0.7, top_p=0.95),
    dict(top_p=0.5),
    dict(temperature=1.3, top_k=20, top_p=0.7, temperature_last=True),
    dict(top_k=5, top_p=0.6, min_tokens_to_keep=3),
]


def _chain(**kw):
    cfg = GenerationConfig(strategy="sample", **kw)
    return build_chain(cfg, prompt_length=1, eos_token_ids=[0])


def _logits(seed, batch=4, vocab=50257, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * scale


@pytest.mark.parametrize("kw", SETTINGS)
def test_kept_sets_equal_the_chain(kw):
    chain = _chain(**kw)
    fused = FusedSampler.from_chain(chain)
    assert fused is not None
    ids = torch.zeros(4, 1, dtype=torch.long)
    checked = 0
    for seed in range(12):
        for scale in (0.5, 3.0, 8.0):
            logits = _logits(seed, scale=scale)
            cand = fused.candidates(logits)
            if cand is None:
                continue
            ref = chain(ids, logits)
            c_ids, c_scores = cand
            for b in range(4):
                kept = set(c_ids[b][torch.isfinite(c_scores[b])].tolist())
                assert kept == set(torch.isfinite(ref[b]).nonzero().flatten().tolist())
                # and the processed probabilities over the kept set agree
                p = ref[b].softmax(-1)[c_ids[b]]
                torch.testing.assert_close(c_scores[b].softmax(-1), p, atol=1e-6, rtol=1e-5)
            checked += 1
    # With top-k a fallback needs a tie or a mass within ~1e-4 of p: rare. Top-p alone falls
    # back to the chain's sort when the nucleus is wide (flat logits, scale 0.5): by design.
    assert checked >= (34 if "top_k" in kw else 10)


@pytest.mark.parametrize("kw", SETTINGS[:3])
def test_same_seed_same_draws_as_the_chain(kw):
    chain = _chain(**kw)
    fused = FusedSampler.from_chain(chain)
    ids = torch.zeros(4, 1, dtype=torch.long)
    for seed in range(10):
        logits = _logits(100 + seed, scale=4.0)
        g1 = [torch.Generator().manual_seed(seed + i) for i in range(4)]
        g2 = [torch.Generator().manual_seed(seed + i) for i in range(4)]
        got = fused(logits, g1)
        if got is None:
            continue
        ref = chain(ids, logits)
        want = sample_from_logits(ref, g2)
        assert torch.equal(got[0], want)
        lp = ref.gather(1, want[:, None])[:, 0] - torch.logsumexp(ref, -1)
        torch.testing.assert_close(got[1], lp, atol=1e-5, rtol=1e-5)


def _chi_square_p(observed, expected, dof):
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


def test_draws_follow_the_processed_distribution_chi_square():
    chain = _chain(temperature=0.9, top_k=12, top_p=0.85)
    fused = FusedSampler.from_chain(chain)
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(7)) * 2
    probs = chain(torch.zeros(1, 1, dtype=torch.long), logits).softmax(-1)[0].double()
    support = probs.nonzero().flatten().tolist()
    n = 12000
    g = [torch.Generator().manual_seed(123)]
    counts = torch.zeros(300)
    for _ in range(n):
        t, _ = fused(logits, g)
        counts[t] += 1
    assert set(counts.nonzero().flatten().tolist()) <= set(support)
    observed = [float(counts[i]) for i in support]
    expected = [float(probs[i]) * n for i in support]
    assert _chi_square_p(observed, expected, len(support) - 1) > 1e-3


def test_ties_and_other_chains_fall_back():
    assert FusedSampler.from_chain(_chain(top_k=5, repetition_penalty=1.2)) is None
    assert FusedSampler.from_chain(_chain(min_p=0.1)) is None
    assert FusedSampler.from_chain(_chain(temperature=0.5)) is None  # nothing to prefilter
    fused = FusedSampler.from_chain(_chain(top_k=3))
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 2.0, 0.0]])  # 4 tie with the 3rd value
    assert fused.candidates(logits) is None


def test_generation_uses_the_fused_sampler_with_the_same_tokens(tiny_lm):
    from lmgen import Session

    cfg = GenerationConfig(
        strategy="sample", temperature=0.8, top_k=50, top_p=0.9, seed=5, max_new_tokens=30
    )
    fast_session = Session(tiny_lm, "to be or not", cfg, record=())
    assert fast_session._stepper.fused is not None
    (fast,) = fast_session.results()
    # recording the step's logits needs the whole processed distribution: the chain's path
    slow_session = Session(tiny_lm, "to be or not", cfg, record=("logits",))
    assert slow_session._stepper.fused is None
    (slow,) = slow_session.results()
    assert fast.token_ids == slow.token_ids
    assert all(
        math.isclose(a, b, abs_tol=1e-5)
        for a, b in zip(
            fast.choices[0].processed_logprobs, slow.choices[0].processed_logprobs, strict=True
        )
    )
