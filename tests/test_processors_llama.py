"""llama.cpp's samplers (top-nσ, XTC, DRY, dynamic temperature, Mirostat v2) against
llama.cpp's own expected values.

The cases marked "llama.cpp" are the hand-computed ones of llama.cpp's tests/test-sampling.cpp
(its `test_top_n_sigma`, `test_xtc`, `test_dry`, `test_temp_ext` calls), ported with their
inputs, parameters and expected probabilities (tolerance 1e-5, as there). llama.cpp's tester
builds logits as log(p); XTC's expected values there are the untouched probabilities of the
survivors (its test does not renormalise), so they are compared before renormalising.
Mirostat v2 has no case there: it is checked against a hand-worked example and a plain
step-by-step restatement of llama.cpp's algorithm.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmgen
from lmgen.errors import ConfigError
from lmgen.generation_config import GenerationConfig
from lmgen.processors import (
    DRY,
    XTC,
    DynamicTemperature,
    MirostatV2,
    Temperature,
    TopK,
    TopNSigma,
    TopP,
    build_chain,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = settings(max_examples=60, deadline=None)
NO_HISTORY = torch.zeros((1, 1), dtype=torch.long)


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def probs_after(processor, probs, ids=NO_HISTORY) -> list[float]:
    return processor(ids, logits_of(probs)).softmax(-1)[0].tolist()


def close(ours: list[float], expected: list[float], tol: float = 1e-5) -> bool:
    if len(ours) != len(expected):
        return False
    return all(abs(a - b) < tol for a, b in zip(ours, expected, strict=True))


# -- top-nσ ------------------------------------------------------------------------------------


def test_top_n_sigma_llama_cpp_cases():
    p = [0.1, 0.2, 0.3, 0.4]
    assert close(probs_after(TopNSigma(1.0), p), [0.0, 0.0, 0.428571, 0.571429])  # llama.cpp
    assert close(probs_after(TopNSigma(3.0), p), p)  # llama.cpp
    # llama.cpp: n = 0 is a no-op; here 0 is "off" and builds no processor
    chain = build_chain(GenerationConfig(strategy="sample", top_n_sigma=0.0), prompt_length=1,
                        eos_token_ids=[])  # fmt: skip
    assert not chain


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.floats(0.1, 4.0), t=st.floats(0.2, 5.0))
def test_top_n_sigma_keeps_the_same_set_at_any_temperature(seed, n, t):
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(seed)) * 3
    plain = torch.isfinite(TopNSigma(n)(NO_HISTORY, logits))
    scaled = torch.isfinite(TopNSigma(n)(NO_HISTORY, logits / t))
    # the cut is max - n*std in both cases; only a logit within float rounding of it may flip
    cut = logits.amax(-1, keepdim=True) - n * logits.std(-1, correction=0, keepdim=True)
    near = (logits - cut).abs() < 1e-4
    assert torch.equal(plain | near, scaled | near)
    assert bool(plain[logits == logits.amax(-1, keepdim=True)].all())


def test_top_n_sigma_ignores_removed_tokens():
    logits = logits_of([0.1, 0.2, 0.3, 0.4])
    logits = torch.cat([logits, torch.full((1, 3), float("-inf"))], dim=1)
    out = TopNSigma(1.0)(NO_HISTORY, logits).softmax(-1)[0].tolist()
    assert close(out, [0.0, 0.0, 0.428571, 0.571429, 0.0, 0.0, 0.0])


# -- XTC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.09, [0.1]),  # llama.cpp "XTC should"
        (0.19, [0.2, 0.1]),
        (0.29, [0.3, 0.2, 0.1]),
        (0.39, [0.4, 0.3, 0.2, 0.1]),  # llama.cpp "XTC should not"
    ],
)
def test_xtc_llama_cpp_cases(threshold, expected):
    # llama.cpp's cases use probability 0.99 with its own seeded RNG; 1.0 always applies
    p = [0.4, 0.3, 0.2, 0.1]
    out = XTC(1.0, threshold)(NO_HISTORY, logits_of(p))[0]
    survivors = [q for q, x in zip(p, out.tolist(), strict=True) if math.isfinite(x)]
    assert close(survivors, expected)
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], logits_of(p)[0][kept])  # survivors untouched


def test_xtc_applies_with_its_probability_and_draws_per_row():
    xtc = XTC(0.3, 0.2, seed=7)
    ids = torch.randint(0, 100, (4000, 5), generator=torch.Generator().manual_seed(0))
    chances = xtc.chances(ids)
    rate = float((chances <= 0.3).double().mean())
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    # a row's chance depends on its own tokens and the seed, not on its batch or position
    assert torch.equal(xtc.chances(ids[7:8]), chances[7:8])
    assert torch.equal(xtc.chances(ids.flip(0))[-8:], chances[:8].flip(0))
    assert not torch.equal(XTC(0.3, 0.2, seed=8).chances(ids), chances)


def test_xtc_probability_zero_and_ties():
    p = [0.3, 0.3, 0.3, 0.1]
    assert torch.equal(XTC(0.0, 0.1)(NO_HISTORY, logits_of(p)), logits_of(p))
    out = XTC(1.0, 0.2)(NO_HISTORY, logits_of(p))[0]
    assert torch.isfinite(out).tolist() == [False, False, True, True]  # the largest id stays


# -- DRY ---------------------------------------------------------------------------------------

# llama.cpp's: probs, last tokens, expected, multiplier, base, allowed length, last n, breakers
DRY_CASES = [
    ([0.25] * 4, [0, 1], [0.25] * 4, 1.0, 1.1, 2, 4, []),
    ([0.25] * 4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, []),
    ([0.2] * 5, [0, 1, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 2, 6, [[3]]),
    ([0.2] * 5, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1,
     2, 5, []),
    ([0.2] * 5, [0, 1, 2, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 4, 7, []),
]  # fmt: skip


@pytest.mark.parametrize("case", DRY_CASES)
def test_dry_llama_cpp_cases(case):
    probs, last, expected, multiplier, base, allowed, last_n, breakers = case
    dry = DRY(multiplier, base, allowed, last_n, breakers)
    assert close(probs_after(dry, probs, torch.tensor([last])), expected)


def naive_dry(window, multiplier, base, allowed, breakers):
    """DRY from its definition, O(n^2): the most recent breaker bounds every repeat; a token is
    penalised by the longest earlier repeat of the sequence's end that it followed."""
    n = len(window)
    if n <= allowed:
        return {}
    limit = n
    for i in range(n - 1, -1, -1):  # newest first
        ends = [b for b in breakers if len(b) <= n - i and list(window[i : i + len(b)]) == b]
        if ends:  # the breaker starting here that reaches furthest towards the end
            limit = n - i - max(len(b) for b in ends)
            break
    if limit < allowed:
        return {}
    best = {}
    for j in range(n - 1):  # an earlier occurrence ending at j, followed by window[j + 1]
        length = 0
        while length < j + 1 and window[j - length] == window[n - 1 - length]:
            length += 1
        length = min(length, limit)
        if length >= allowed:
            t = window[j + 1]
            best[t] = max(best.get(t, 0), length)
    single = {b[0] for b in breakers if len(b) == 1}
    cap = int(88.7228391 / math.log(base)) if base > 1.000001 else 0
    return {
        t: multiplier * base ** (min(run - allowed, cap) if cap else run - allowed)
        for t, run in best.items()
        if t not in single
    }


@SETTINGS
@given(
    window=st.lists(st.integers(0, 3), min_size=0, max_size=40),
    allowed=st.integers(1, 4),
    base=st.sampled_from([1.0, 1.1, 1.75, 3.0]),
    breakers=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=3), max_size=2),
)
def test_dry_equals_its_definition(window, allowed, base, breakers):
    dry = DRY(0.8, base, allowed, -1, breakers)
    ours = dry.penalties(window)
    theirs = naive_dry(window, 0.8, base, allowed, [list(b) for b in breakers])
    assert ours.keys() == theirs.keys()
    for t in ours:
        assert ours[t] == pytest.approx(theirs[t], rel=1e-12)


def test_dry_exponent_is_capped_and_last_n_window():
    dry = DRY(1.0, 1.75, 1, -1)
    window = [5] * 400  # a 398-token repeat: 1.75 ** 397 would overflow float32
    cap = int(88.7228391 / math.log(1.75))
    assert dry.penalties(window) == {5: pytest.approx(1.75**cap)}
    assert DRY(1.0, 1.1, 2, 4)(torch.tensor([[0, 1, 2, 9, 0, 1]]), torch.zeros(1, 10)).equal(
        torch.zeros(1, 10)  # the repeat of "0 1" starts outside the last 4 tokens
    )


def test_dry_text_breakers_become_token_sequences():
    tok = lmgen.load().tokenizer
    breaker = "ROMEO:"
    seqs = DRY.from_strings(1.0, 1.75, 2, -1, ["\n", breaker], tok).breakers
    assert () in seqs[tok.encode("\n")[0]]  # a token holding the breaker: a breaker alone
    multi = [(h, t) for h, tails in seqs.items() for t in tails if t]
    assert multi
    for head, tail in multi:
        # the head's text ends with the start of the breaker; the tail is the rest, tokenised
        text = tok.decode([head])
        overlaps = [o for o in range(1, len(breaker)) if text.endswith(breaker[:o])]
        assert any(list(tail) == tok.encode(breaker[o:]) for o in overlaps)
    assert tok.encode(breaker)[0] in seqs  # the tokenised breaker itself is among them


# -- dynamic temperature -----------------------------------------------------------------------


def test_dynatemp_llama_cpp_cases():
    p = [0.1, 0.2, 0.3, 0.4]
    assert close(probs_after(DynamicTemperature(1.0, 0.0, 1.0), p), p)  # llama.cpp
    # llama.cpp's temp_ext(0, 0, 1) is greedy; in lmgen temperature 0 is the greedy strategy
    cfg = GenerationConfig(strategy="sample", temperature=0, dynatemp_range=0.0)
    assert cfg.effective_strategy() == "greedy"


def test_dynatemp_hand_worked():
    # H = -(0.1 ln 0.1 + 0.2 ln 0.2 + 0.3 ln 0.3 + 0.4 ln 0.4) = 1.279854, H / ln 4 = 0.923220
    # range 0.5 around 1: T = 0.5 + 1.0 * 0.923220 = 1.423220; p_i ~ p_i ** (1 / T)
    p = [0.1, 0.2, 0.3, 0.4]
    dyn = DynamicTemperature(1.0, 0.5, 1.0)
    assert float(dyn.temperatures(logits_of(p))) == pytest.approx(1.423220, abs=1e-5)
    assert close(probs_after(dyn, p), [0.134408, 0.218745, 0.290847, 0.356001])
    # exponent 2: T = 0.5 + 0.923220 ** 2 = 1.352335
    assert float(DynamicTemperature(1.0, 0.5, 2.0).temperatures(logits_of(p))) == pytest.approx(
        1.352335, abs=1e-5
    )
    # range above the temperature: the low end is 0, T = 0 + 1.6 * 0.923220 = 1.477151
    assert float(DynamicTemperature(0.6, 1.0).temperatures(logits_of(p))) == pytest.approx(
        1.477151, abs=1e-5
    )


def test_dynatemp_one_candidate_is_unchanged():
    logits = torch.tensor([[1.5, float("-inf"), float("-inf")]])
    assert torch.equal(DynamicTemperature(1.0, 0.9)(NO_HISTORY, logits), logits)


# -- Mirostat v2 -------------------------------------------------------------------------------


def mirostat_reference(steps, tau, eta):
    """llama.cpp's Mirostat v2 restated step by step over (logits, chosen token) pairs: sort
    by probability, keep while -log2 p <= mu (at least one), renormalise, move mu by the
    chosen token's surprise. Returns the kept sets and the mu before each step."""
    mu, kept_sets, mus = 2 * tau, [], []
    for logits, chosen in steps:
        probs = torch.softmax(logits.double(), -1).tolist()
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        kept = [i for i in order if probs[i] > 0 and -math.log2(probs[i]) <= mu] or order[:1]
        total = sum(probs[i] for i in kept)
        mus.append(mu)
        kept_sets.append(set(kept))
        if chosen in kept:
            mu -= eta * (-math.log2(probs[chosen] / total) - tau)
    return kept_sets, mus


def test_mirostat_hand_worked():
    # p = 0.4 0.3 0.2 0.1, surprises 1.32 1.74 2.32 3.32 bits; tau 1 (mu starts at 2), eta 1
    m = MirostatV2(tau=1.0, eta=1.0, prompt_length=1)
    logits = logits_of([0.4, 0.3, 0.2, 0.1])
    ids = torch.tensor([[9]])
    expected = [
        ([0.571429, 0.428571, 0.0, 0.0], 2.0),  # keeps 0 and 1; token 1 drawn: 1.222392 bits
        ([0.571429, 0.428571, 0.0, 0.0], 1.777608),  # token 1 again
        ([1.0, 0.0, 0.0, 0.0], 1.555216),  # 1.74 > mu: only token 0; its surprise is 0
        ([0.444444, 0.333333, 0.222222, 0.0], 2.555216),
    ]
    for (probs, mu), nxt in zip(expected, [1, 1, 0, 0], strict=True):
        assert m.mu(0, tuple(ids[0, 1:].tolist())) == pytest.approx(mu, abs=1e-5)
        assert close(m(ids, logits).softmax(-1)[0].tolist(), probs)
        assert close(m(ids, logits).softmax(-1)[0].tolist(), probs)  # asked twice: same step
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)


def test_mirostat_equals_llama_cpp_algorithm_on_the_bundled_model():
    lm = lmgen.load()
    session = lmgen.Session(lm, ["ROMEO:", "JULIET:"], strategy="sample", seed=3, mirostat=2,
                            mirostat_tau=3.0, mirostat_eta=0.2, max_new_tokens=25,
                            ignore_eos=True, record=("logits",))  # fmt: skip
    steps = [[], []]
    for out in session:
        for row in range(2):
            steps[row].append((out.logits[row], out.processed_logits[row]))
    for row, result in enumerate(session.results()):
        tokens = result.choices[0].token_ids
        pairs = [(raw, t) for (raw, _), t in zip(steps[row], tokens, strict=True)]
        kept, _ = mirostat_reference(pairs, 3.0, 0.2)
        ours = [set(torch.isfinite(proc).nonzero().flatten().tolist()) for _, proc in steps[row]]
        assert ours == kept
        assert len({len(k) for k in kept}) > 1  # mu moved the cut


# -- order and validation ----------------------------------------------------------------------


def test_chain_order_with_everything_on():
    cfg = GenerationConfig(
        strategy="sample", temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, typical_p=0.95,
        epsilon_cutoff=1e-4, eta_cutoff=1e-3, top_n_sigma=2.0, xtc_probability=0.5,
        dry_multiplier=0.8, dry_sequence_breakers=[], dynatemp_range=0.3, mirostat=2,
        repetition_penalty=1.1,
    )  # fmt: skip
    names = [type(p).__name__ for p in build_chain(cfg, prompt_length=1, eos_token_ids=[0])]
    assert names == [
        "RepetitionPenalty", "DRY", "DynamicTemperature", "TopNSigma", "TopK", "TopP", "MinP",
        "TypicalP", "EpsilonCutoff", "EtaCutoff", "XTC", "MirostatV2",
    ]  # fmt: skip
    last = build_chain(cfg.replace(temperature_last=True), prompt_length=1, eos_token_ids=[0])
    assert [type(p).__name__ for p in last][-3:] == ["XTC", "DynamicTemperature", "MirostatV2"]


def test_greedy_and_beam_get_no_warpers_but_dry():
    cfg = GenerationConfig(dry_multiplier=0.5, dry_sequence_breakers=[], top_n_sigma=1.0,
                           mirostat=2, xtc_probability=1.0)  # fmt: skip
    assert [type(p).__name__ for p in build_chain(cfg, prompt_length=1, eos_token_ids=[])] == [
        "DRY"
    ]
    assert any("mirostat=2 has no effect" in w for w in cfg.validate())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epsilon_cutoff", 1.0), ("epsilon_cutoff", -0.1), ("eta_cutoff", float("nan")),
        ("top_n_sigma", -1.0), ("xtc_probability", 1.5), ("xtc_threshold", 0.0),
        ("xtc_threshold", 0.6), ("dry_multiplier", -1.0), ("dry_base", 0.9),
        ("dry_allowed_length", 0), ("dry_penalty_last_n", -2), ("dry_sequence_breakers", "\n"),
        ("dry_sequence_breakers", [""]), ("dynatemp_range", -0.1),
        ("dynatemp_exponent", 0.0), ("mirostat", 1), ("mirostat", True), ("mirostat_tau", 0.0),
        ("mirostat_eta", float("inf")),
    ],
)  # fmt: skip
def test_out_of_range_values_are_refused_naming_the_parameter(name, value):
    with pytest.raises(ConfigError) as e:
        GenerationConfig(strategy="sample", **{name: value}).validate()
    assert e.value.param == name
    assert name in str(e.value) and "\n" not in str(e.value)


def test_no_new_option_leaves_the_chain_and_the_fused_path_alone():
    from lmgen.decoding.sampling import FusedSampler

    cfg = GenerationConfig(strategy="sample", temperature=0.8, top_k=50, top_p=0.9)
    chain = build_chain(cfg, prompt_length=1, eos_token_ids=[0])
    assert [type(p) for p in chain] == [Temperature, TopK, TopP]
    assert FusedSampler.from_chain(chain) is not None


def test_stateful_samplers_under_speculative_decoding():
    # The draft and the target share one chain; Mirostat's state is kept per prefix. With the
    # target as its own draft, every proposal's distribution equals the target's only if each
    # position sees the mu (and the XTC draw) of its own prefix: then all are accepted.
    from lmgen.decoding import SpeculativeStats

    lm = lmgen.load()
    kw = dict(strategy="sample", seed=5, mirostat=2, mirostat_tau=3.0, xtc_probability=0.5,
              max_new_tokens=20, ignore_eos=True)  # fmt: skip
    stats = SpeculativeStats()
    a = lm.generate("ROMEO:", draft=lm, speculative_k=3, spec_stats=stats, **kw)
    b = lm.generate("ROMEO:", draft=lm, speculative_k=3, **kw)
    assert len(a.choices[0].token_ids) == 20 and a.text == b.text
    assert stats.proposed > 0 and stats.acceptance == 1.0
