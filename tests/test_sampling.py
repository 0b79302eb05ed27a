"""sample_from_logits: the right distribution, seeded, independent of the batch around it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmgen.decoding.sampling as sampling
from lmgen.errors import GenerationError
from lmgen.processors import Temperature, TopK, make_generator, sample_from_logits

INF = float("inf")
# Chi-square critical values at p = 0.001, by degrees of freedom.
CHI2_CRITICAL_0_001 = {4: 18.467, 5: 20.515}


pytestmark = pytest.mark.usefixtures("one_thread")


def chi_square(draws: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    support = probs > 0
    observed = torch.bincount(draws, minlength=probs.numel()).double()
    expected = probs.double() * draws.numel()
    stat = (((observed - expected) ** 2)[support] / expected[support]).sum().item()
    return stat, int(support.sum()) - 1


def draw_many(logits_row: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = make_generator(seed)
    return sample_from_logits(logits_row.expand(n, -1), [g] * n)


def test_chi_square_simple_distribution():
    probs = torch.tensor([0.5, 0.2, 0.0, 0.15, 0.1, 0.05])
    draws = draw_many(probs.log(), 20_000, seed=1234)
    assert not (draws == 2).any()  # the -inf token
    stat, dof = chi_square(draws, probs)
    assert dof == 4
    assert stat < CHI2_CRITICAL_0_001[dof], stat


def test_chi_square_processed_distribution():
    logits = torch.tensor([[2.0, 1.5, -0.5, 0.3, 1.0, -2.0, 0.7, -1.0, 0.0, 1.2]])
    processed = TopK(6)(None, Temperature(0.7)(None, logits))[0]
    probs = processed.softmax(-1)
    draws = draw_many(processed, 20_000, seed=99)
    assert torch.isfinite(processed[draws]).all()
    stat, dof = chi_square(draws, probs)
    assert dof == 5
    assert stat < CHI2_CRITICAL_0_001[dof], stat


def test_seeded_draws_reproduce():
    torch.manual_seed(0)
    logits = torch.randn(1, 50)

    def draws(seed: int) -> list[int]:
        g = make_generator(seed)
        return [sample_from_logits(logits, [g]).item() for _ in range(40)]

    a, b, c = draws(7), draws(7), draws(8)
    assert a == b
    assert a != c


def test_row_independent_of_batch_composition():
    torch.manual_seed(0)
    steps = [torch.randn(4, 30) for _ in range(30)]
    for step in steps:
        step[2, :5] = -INF
    g = make_generator(7)
    alone = [sample_from_logits(step[2:3], [g]).item() for step in steps]
    gens = [make_generator(1), None, make_generator(7), make_generator(123)]
    batched = [sample_from_logits(step, gens)[2].item() for step in steps]
    assert alone == batched
    # and in another slot, with a different neighbour
    gens = [make_generator(7), make_generator(5)]
    moved = [sample_from_logits(step[[2, 0]], gens)[0].item() for step in steps]
    assert alone == moved


@settings(max_examples=50, deadline=None)
@given(
    batch=st.integers(1, 4),
    vocab=st.integers(1, 60),
    seed=st.integers(0, 2**32),
    masked=st.floats(0.0, 1.0),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
)
def test_never_draws_minus_inf(batch, vocab, seed, masked, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * scale
    logits[torch.rand(batch, vocab, generator=g) < masked] = -INF
    logits[torch.arange(batch), torch.randint(0, vocab, (batch,), generator=g)] = 1.0
    gens = [make_generator(seed + r) for r in range(batch)]
    for _ in range(5):
        picked = sample_from_logits(logits, gens)
        assert picked.dtype == torch.long
        assert torch.isfinite(logits[torch.arange(batch), picked]).all()


def test_top_edge_clamped(monkeypatch):
    # u * total rounding up to the total must not select a trailing -inf token (or run off)
    monkeypatch.setattr(sampling, "_uniform", lambda g, device: torch.ones(1, dtype=torch.float64))
    logits = torch.tensor([[0.0, 1.0, -INF, -INF], [0.0, 0.0, 0.0, 0.0]])
    assert sample_from_logits(logits, [None, None]).tolist() == [1, 3]


def test_lowest_edge_skips_leading_minus_inf(monkeypatch):
    monkeypatch.setattr(sampling, "_uniform", lambda g, device: torch.zeros(1, dtype=torch.float64))
    logits = torch.tensor([[-INF, -INF, 2.0, 1.0]])
    assert sample_from_logits(logits, [None]).tolist() == [2]


def test_errors():
    with pytest.raises(GenerationError, match="rows \\[1\\]"):
        sample_from_logits(torch.tensor([[0.0, 1.0], [-INF, -INF]]), [None, None])
    with pytest.raises(ValueError, match="one generator per row"):
        sample_from_logits(torch.zeros(2, 3), [None])
    with pytest.raises(ValueError, match="batch, vocab"):
        sample_from_logits(torch.zeros(3), [None])


def test_make_generator():
    assert make_generator(None) is None
    a, b = make_generator(3), make_generator(3)
    assert torch.rand(1, generator=a).item() == torch.rand(1, generator=b).item()
    assert not math.isnan(torch.rand(1, generator=make_generator(0)).item())


def test_draw_is_the_clamped_inverse_cdf():
    # the closed form: the first token whose cdf passes u * total, clamped to the last token
    # of non-zero weight (rows with zero tails, zero heads, one weight, all zero)
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(6, 40, generator=g, dtype=torch.float64)
    probs[0, 25:] = 0
    probs[1, :30] = 0
    probs[2, :] = 0
    probs[2, 7] = 0.5
    probs[3, :] = 0
    probs[4, ::2] = 0
    for seed in range(30):
        gens = [make_generator(seed * 10 + r) for r in range(6)]
        again = [make_generator(seed * 10 + r) for r in range(6)]
        u = torch.cat([sampling._uniform(x, probs.device) for x in again])[:, None]
        cdf = probs.cumsum(-1)
        expect = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
        last = torch.tensor([max([j for j in range(40) if probs[r, j] > 0], default=39)
                             for r in range(6)])  # fmt: skip
        assert sampling.draw(probs, gens).tolist() == torch.minimum(expect, last).tolist()
