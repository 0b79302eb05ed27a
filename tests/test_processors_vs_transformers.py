"""Our logits processors against transformers' (the reference semantics), plus the chain."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgen.errors import ConfigError
from lmgen.generation_config import GenerationConfig
from lmgen.processors import (
    BadWords,
    EpsilonCutoff,
    EtaCutoff,
    LogitBias,
    MinNewTokens,
    MinP,
    NoRepeatNGram,
    PresenceFrequencyPenalty,
    ProcessorChain,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    TypicalP,
    build_chain,
)

tlp = pytest.importorskip("transformers.generation.logits_process")

INF = float("inf")
SETTINGS = settings(max_examples=50, deadline=None)


pytestmark = pytest.mark.usefixtures("one_thread")


# -- strategies -------------------------------------------------------------------------------


@st.composite
def logits_st(draw, max_vocab: int = 60) -> torch.Tensor:
    """[batch, vocab] float32 logits, often with ties (coarse values) and -inf entries; every
    row keeps at least one finite entry. Values come from a seeded torch generator (fast);
    hypothesis picks the shape, seed, coarseness and how much is -inf."""
    batch = draw(st.integers(1, 3))
    vocab = draw(st.integers(2, max_vocab))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32)))
    logits = torch.randn(batch, vocab, generator=g) * draw(st.sampled_from([0.5, 3.0, 10.0]))
    coarse = draw(st.sampled_from([None, 0.5, 1.0]))  # rounding step: many ties
    if coarse is not None:
        logits = (logits / coarse).round() * coarse
    minus_inf = draw(st.sampled_from([0.0, 0.3, 0.8]))
    logits[torch.rand(batch, vocab, generator=g) < minus_inf] = -INF
    empty = ~torch.isfinite(logits).any(dim=-1)
    logits[empty, torch.randint(0, vocab, (batch,), generator=g)[empty]] = 0.0
    return logits


@st.composite
def ids_st(draw, batch: int, vocab: int, max_len: int = 12) -> torch.Tensor:
    """[batch, seq] token ids from a few distinct values, so repeats are common."""
    length = draw(st.integers(1, max_len))
    token = st.integers(0, min(vocab, 5) - 1)
    rows = draw(
        st.lists(st.lists(token, min_size=length, max_size=length), min_size=batch, max_size=batch)
    )
    return torch.tensor(rows, dtype=torch.long)


keep_st = st.integers(1, 4)


# -- comparison helpers -----------------------------------------------------------------------


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Same kept set (finite mask), same finite values, same softmax within 1e-6."""
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    kept = torch.isfinite(ours)
    torch.testing.assert_close(ours[kept], theirs[kept], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        ours.softmax(-1), theirs.softmax(-1), rtol=0, atol=1e-6, equal_nan=True
    )


def assert_same_up_to_ties(logits: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """As assert_same, except which of several equal logits survives a cut may differ:
    transformers sorts with torch's unstable sort, we sort stably (ties by token id). Rows
    whose finite logits are all distinct must match exactly."""
    for row, a, b in zip(logits, ours, theirs, strict=True):
        finite = row[torch.isfinite(row)]
        if torch.equal(torch.isfinite(a), torch.isfinite(b)):
            assert_same(a[None], b[None])
            continue
        assert finite.unique().numel() < finite.numel(), "masks differ without ties"
        kept_a, kept_b = a[torch.isfinite(a)], b[torch.isfinite(b)]
        assert torch.equal(kept_a.sort().values, kept_b.sort().values)
        torch.testing.assert_close(
            a.softmax(-1).sort().values, b.softmax(-1).sort().values, rtol=0, atol=1e-6
        )


# -- penalties and constraints ----------------------------------------------------------------


@SETTINGS
@given(data=st.data(), logits=logits_st(), penalty=st.floats(0.1, 5.0))
def test_repetition_penalty(data, logits, penalty):
    ids = data.draw(ids_st(*logits.shape))
    ours = RepetitionPenalty(penalty)(ids, logits)
    theirs = tlp.RepetitionPenaltyLogitsProcessor(float(penalty))(ids, logits.clone())
    assert_same(ours, theirs)


@SETTINGS
@given(data=st.data(), logits=logits_st(), n=st.integers(1, 4))
def test_no_repeat_ngram(data, logits, n):
    ids = data.draw(ids_st(*logits.shape))
    ours = NoRepeatNGram(n)(ids, logits)
    theirs = tlp.NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
    assert_same(ours, theirs)


@SETTINGS
@given(data=st.data(), logits=logits_st())
def test_bad_words(data, logits):
    vocab = logits.shape[1]
    ids = data.draw(ids_st(*logits.shape))
    token = st.integers(0, min(vocab, 5) - 1)
    words = data.draw(st.lists(st.lists(token, min_size=1, max_size=3), min_size=1, max_size=4))
    eos = data.draw(st.one_of(st.none(), token))
    eos_list = [] if eos is None else [eos]
    ours = BadWords(words, eos_list)(ids, logits)
    theirs = tlp.NoBadWordsLogitsProcessor(words, eos)(ids, logits.clone())
    assert_same(ours, theirs)


@SETTINGS
@given(data=st.data(), logits=logits_st(), min_new=st.integers(0, 6))
def test_min_new_tokens(data, logits, min_new):
    vocab = logits.shape[1]
    ids = data.draw(ids_st(*logits.shape))
    prompt_length = data.draw(st.integers(0, ids.shape[1]))
    eos = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=2, unique=True))
    ours = MinNewTokens(min_new, eos, prompt_length=prompt_length)(ids, logits)
    theirs = tlp.MinNewTokensLengthLogitsProcessor(prompt_length, min_new, eos)(ids, logits)
    assert_same(ours, theirs)


def test_presence_frequency_penalty_hand_worked():
    # prompt [5, 1] (ignored), generated [1, 2, 2]: counts 1 -> 1, 2 -> 2, 5 -> 0
    ids = torch.tensor([[5, 1, 1, 2, 2]])
    logits = torch.zeros(1, 6)
    out = PresenceFrequencyPenalty(0.5, 0.25, prompt_length=2)(ids, logits)
    assert out.tolist() == [[0.0, -0.75, -1.0, 0.0, 0.0, 0.0]]
    assert logits.eq(0).all()  # input untouched


@SETTINGS
@given(data=st.data(), logits=logits_st(), presence=st.floats(-2, 2), frequency=st.floats(-2, 2))
def test_presence_frequency_penalty_closed_form(data, logits, presence, frequency):
    ids = data.draw(ids_st(*logits.shape))
    prompt_length = data.draw(st.integers(0, ids.shape[1]))
    out = PresenceFrequencyPenalty(presence, frequency, prompt_length=prompt_length)(ids, logits)
    expected = logits.clone()
    for r in range(ids.shape[0]):
        for token, count in Counter(ids[r, prompt_length:].tolist()).items():
            expected[r, token] -= presence + frequency * count
    assert_same(out, expected)


def test_logit_bias():
    logits = torch.tensor([[0.0, 1.0, 2.0, -INF], [3.0, 0.0, 0.0, 0.0]])
    out = LogitBias({1: 5.0, 3: -100.0, 0: -1.5})(torch.zeros(2, 1, dtype=torch.long), logits)
    assert out.tolist() == [[-1.5, 6.0, 2.0, -INF], [1.5, 5.0, 0.0, -100.0]]
    assert logits[0, 1] == 1.0  # input untouched
    with pytest.raises(ConfigError) as err:
        LogitBias({7: 1.0})(torch.zeros(1, 1, dtype=torch.long), logits[:1])
    assert err.value.param == "logit_bias"


def test_vocab_range_checked():
    logits = torch.zeros(1, 4)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        BadWords([[1, 9]])(torch.zeros(1, 2, dtype=torch.long), logits)


# -- warpers ----------------------------------------------------------------------------------


@SETTINGS
@given(logits=logits_st(), temperature=st.floats(0.05, 5.0))
def test_temperature(logits, temperature):
    ours = Temperature(temperature)(None, logits)
    theirs = tlp.TemperatureLogitsWarper(float(temperature))(None, logits)
    assert_same(ours, theirs)


@SETTINGS
@given(logits=logits_st(), k=st.integers(1, 70), keep=keep_st)
def test_top_k(logits, k, keep):
    ours = TopK(k, keep)(None, logits)
    theirs = tlp.TopKLogitsWarper(k, min_tokens_to_keep=keep)(None, logits)
    assert_same(ours, theirs)


@SETTINGS
@given(logits=logits_st(), p=st.floats(0.01, 1.0), keep=keep_st)
def test_top_p(logits, p, keep):
    ours = TopP(p, keep)(None, logits)
    theirs = tlp.TopPLogitsWarper(p, min_tokens_to_keep=keep)(None, logits)
    assert_same_up_to_ties(logits, ours, theirs)


@SETTINGS
@given(logits=logits_st(), min_p=st.floats(0.0, 1.0), keep=keep_st)
def test_min_p(logits, min_p, keep):
    ours = MinP(min_p, keep)(None, logits)
    theirs = tlp.MinPLogitsWarper(min_p, min_tokens_to_keep=keep)(None, logits)
    assert_same_up_to_ties(logits, ours, theirs)


@SETTINGS
@given(logits=logits_st(), mass=st.floats(0.01, 0.99), keep=keep_st)
def test_typical_p(logits, mass, keep):
    ours = TypicalP(mass, keep)(None, logits)
    theirs = tlp.TypicalLogitsWarper(mass, min_tokens_to_keep=keep)(None, logits)
    assert_same_up_to_ties(logits, ours, theirs)


@SETTINGS
@given(logits=logits_st(), epsilon=st.floats(1e-4, 0.99), keep=keep_st)
def test_epsilon_cutoff(logits, epsilon, keep):
    ours = EpsilonCutoff(epsilon, keep)(None, logits)
    theirs = tlp.EpsilonLogitsWarper(epsilon, min_tokens_to_keep=keep)(None, logits.clone())
    assert_same(ours, theirs)


@SETTINGS
@given(logits=logits_st(), epsilon=st.floats(1e-4, 0.99), keep=keep_st)
def test_eta_cutoff(logits, epsilon, keep):
    ours = EtaCutoff(epsilon, keep)(None, logits)
    theirs = tlp.EtaLogitsWarper(epsilon, min_tokens_to_keep=keep)(None, logits.clone())
    assert_same(ours, theirs)


def test_epsilon_eta_in_transformers_order():
    # transformers: temperature -> top-k -> top-p -> min-p -> typical -> epsilon -> eta
    chain = _chain(strategy="sample", temperature=0.7, top_k=9, typical_p=0.9,
                   epsilon_cutoff=3e-4, eta_cutoff=2e-3)  # fmt: skip
    assert chain.describe() == [
        "Temperature(temperature=0.7)",
        "TopK(k=9)",
        "TypicalP(mass=0.9)",
        "EpsilonCutoff(epsilon=0.0003)",
        "EtaCutoff(epsilon=0.002)",
    ]
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 40) * 3, torch.zeros((2, 3), dtype=torch.long)
    theirs = logits.clone()
    for w in (tlp.TemperatureLogitsWarper(0.7), tlp.TopKLogitsWarper(9),
              tlp.TypicalLogitsWarper(0.9), tlp.EpsilonLogitsWarper(3e-4),
              tlp.EtaLogitsWarper(2e-3)):  # fmt: skip
        theirs = w(ids, theirs)
    assert_same(chain(ids, logits), theirs)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    vocab=st.integers(40, 3000),
    k=st.integers(1, 40),
    p=st.floats(0.05, 1.0),
    keep=keep_st,
    coarse=st.booleans(),
)
def test_top_p_fast_path_is_bit_identical(seed, vocab, k, p, keep, coarse):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, vocab, generator=g) * 4
    if coarse:
        logits = logits.round()  # ties
    logits = TopK(k)(None, logits)
    fast = TopP(p, keep)
    full = TopP(p, keep)
    full.FEW_FINITE_FRACTION = 0.0
    assert torch.equal(fast(None, logits), full(None, logits))


# -- the chain --------------------------------------------------------------------------------


def _chain(**kw) -> ProcessorChain:
    return build_chain(GenerationConfig(**kw), prompt_length=3, eos_token_ids=[0])


def test_chain_order():
    chain = _chain(
        strategy="sample",
        repetition_penalty=1.2,
        presence_penalty=0.5,
        no_repeat_ngram_size=3,
        logit_bias={2: 1.0},
        bad_words_ids=[[4, 5]],
        min_new_tokens=2,
        temperature=0.8,
        top_k=50,
        top_p=0.9,
        min_p=0.05,
        typical_p=0.95,
    )
    assert chain.describe() == [
        "RepetitionPenalty(penalty=1.2)",
        "PresenceFrequencyPenalty(presence=0.5, frequency=0.0)",
        "NoRepeatNGram(n=3)",
        "LogitBias(bias={2: 1.0})",
        "BadWords(words=[[4, 5]])",
        "MinNewTokens(min_new_tokens=2, eos_token_ids=[0])",
        "Temperature(temperature=0.8)",
        "TopK(k=50)",
        "TopP(p=0.9)",
        "MinP(min_p=0.05)",
        "TypicalP(mass=0.95)",
    ]
    assert repr(_chain(strategy="sample", temperature=0.8, top_k=50, top_p=0.9)) == (
        "Temperature(temperature=0.8) -> TopK(k=50) -> TopP(p=0.9)"
    )


def test_chain_temperature_last():
    chain = _chain(strategy="sample", temperature=0.7, top_k=5, min_p=0.1, temperature_last=True)
    assert repr(chain) == "TopK(k=5) -> MinP(min_p=0.1) -> Temperature(temperature=0.7)"


def test_chain_only_active_rules():
    assert repr(_chain()) == "(no processors)"
    assert repr(_chain(strategy="sample")) == "(no processors)"
    # greedy, beam and temperature-0 sampling get no warpers
    for kw in (
        {"strategy": "greedy"},
        {"strategy": "beam", "num_beams": 2},
        {"strategy": "sample", "temperature": 0.0},
    ):
        chain = _chain(top_k=5, top_p=0.5, repetition_penalty=1.1, **kw)
        assert chain.describe() == ["RepetitionPenalty(penalty=1.1)"]
    # min_new_tokens needs an eos id to mask
    config = GenerationConfig(min_new_tokens=2)
    assert build_chain(config, prompt_length=1, eos_token_ids=[]).describe() == []
    assert _chain(strategy="sample", top_k=3, min_tokens_to_keep=5).describe() == ["TopK(k=5)"]


def test_chain_applies_in_order():
    chain = _chain(strategy="sample", repetition_penalty=1.3, temperature=0.5, top_k=3)
    logits = torch.tensor([[1.0, -2.0, 3.0, 0.5, 2.0]])
    ids = torch.tensor([[2, 1, 1]])
    expected = TopK(3)(ids, Temperature(0.5)(ids, RepetitionPenalty(1.3)(ids, logits)))
    assert torch.equal(chain(ids, logits), expected)


def test_processors_do_not_modify_inputs():
    torch.manual_seed(0)
    logits = torch.randn(2, 30)
    logits[0, 3] = -INF
    ids = torch.randint(0, 30, (2, 8))
    processors = [
        RepetitionPenalty(1.5),
        PresenceFrequencyPenalty(0.5, 0.5, prompt_length=2),
        NoRepeatNGram(1),
        LogitBias({1: 2.0}),
        BadWords([[1], [2, 3]]),
        MinNewTokens(5, [0], prompt_length=6),
        Temperature(0.5),
        TopK(4),
        TopP(0.5),
        TopP(0.5),
        MinP(0.2),
        TypicalP(0.5),
        EpsilonCutoff(0.05),
        EtaCutoff(0.05),
    ]
    before_logits, before_ids = logits.clone(), ids.clone()
    for p in processors:
        p(ids, logits)
        assert torch.equal(logits, before_logits), p
        assert torch.equal(ids, before_ids), p


@pytest.mark.parametrize(
    "make, param",
    [
        (lambda: RepetitionPenalty(0.0), "repetition_penalty"),
        (lambda: RepetitionPenalty(math.nan), "repetition_penalty"),
        (lambda: Temperature(0.0), "temperature"),
        (lambda: TopK(0), "top_k"),
        (lambda: TopK(3, 0), "min_tokens_to_keep"),
        (lambda: TopP(0.0), "top_p"),
        (lambda: TopP(1.5), "top_p"),
        (lambda: MinP(-0.1), "min_p"),
        (lambda: TypicalP(0.0), "typical_p"),
        (lambda: EpsilonCutoff(1.0), "epsilon_cutoff"),
        (lambda: EpsilonCutoff(0.0), "epsilon_cutoff"),
        (lambda: EtaCutoff(-0.5), "eta_cutoff"),
        (lambda: EtaCutoff(0.1, 0), "min_tokens_to_keep"),
        (lambda: NoRepeatNGram(0), "no_repeat_ngram_size"),
        (lambda: BadWords([[]]), "bad_words_ids"),
        (lambda: BadWords([[-1]]), "bad_words_ids"),
        (lambda: LogitBias({1: INF}), "logit_bias"),
        (lambda: PresenceFrequencyPenalty(INF, 0.0, prompt_length=0), "presence_penalty"),
        (lambda: MinNewTokens(-1, [0], prompt_length=0), "min_new_tokens"),
    ],
)
def test_processor_validation(make, param):
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.param == param
    assert param in str(err.value)
