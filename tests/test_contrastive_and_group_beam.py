"""Contrastive search and diverse (group) beam search against transformers 4.53's own
implementations (which transformers 5 removed from its core): the expected tokens and scores
were written by scripts/reference_transformers4.py from the tiny model stored beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lmgen
from lmgen.checkpoint import config_from_hf, load_weights, read_tensors
from lmgen.lm import LM

DATA = Path(__file__).parent / "data" / "decoding-reference"
EXPECTED = json.loads((DATA / "expected.json").read_text())


class _Ids:
    """Token ids as text ("5 17 33"), with the reference model's EOS."""

    vocab_size = 64
    eos_token_id = bos_token_id = EXPECTED["eos"]

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))

    def token_to_str(self, i):
        return str(i)


@pytest.fixture(scope="module")
def lm():
    config = config_from_hf(json.loads((DATA / "config.json").read_text()))
    model = lmgen.GPT(config).eval()
    load_weights(model, read_tensors(DATA), str(DATA))
    return LM(model, _Ids(), name="reference")


def _strip(seq, eos):
    seq = list(seq)
    while seq and seq[-1] == eos:  # transformers pads with EOS
        seq.pop()
    return seq


def _cases(kind):
    return [c for c in EXPECTED["cases"] if c["kind"] == kind]


def _id(case):
    return f"{case['kwargs']}-{len(case['prompt'])}"


@pytest.mark.parametrize("case", _cases("contrastive"), ids=_id)
def test_contrastive_search_equals_transformers(lm, case):
    res = lm.generate(
        [case["prompt"]], strategy="contrastive", max_new_tokens=EXPECTED["max_new_tokens"],
        **case["kwargs"],
    )[0]  # fmt: skip
    (want,) = case["sequences"]
    eos = EXPECTED["eos"]
    assert res.token_ids == _strip(want, eos)
    assert res.finish_reason == ("eos" if eos in want else "length")


@pytest.mark.parametrize("case", _cases("group_beam"), ids=_id)
def test_group_beam_search_equals_transformers(lm, case):
    res = lm.generate(
        [case["prompt"]], strategy="beam", max_new_tokens=EXPECTED["max_new_tokens"],
        **case["kwargs"],
    )[0]  # fmt: skip
    eos = EXPECTED["eos"]
    assert len(res.choices) == len(case["sequences"])
    for choice, want, score in zip(res.choices, case["sequences"], case["scores"], strict=True):
        assert choice.token_ids == _strip(want, eos)
        assert choice.score == pytest.approx(score, abs=1e-4)


def test_the_groups_make_the_beams_differ(lm):
    """With a diversity penalty the returned beams share fewer first tokens than without."""
    kw = dict(strategy="beam", num_beams=4, num_return_sequences=4, max_new_tokens=8)
    plain = lm.generate([[5, 17, 33, 8]], **kw)[0]
    diverse = lm.generate([[5, 17, 33, 8]], num_beam_groups=4, diversity_penalty=3.0, **kw)[0]
    firsts = lambda r: len({c.token_ids[0] for c in r.choices if c.token_ids})  # noqa: E731
    assert firsts(diverse) > firsts(plain)


def test_contrastive_with_alpha_zero_is_greedy(lm):
    kw = dict(max_new_tokens=12, ignore_eos=True)
    greedy = lm.generate([[5, 17, 33, 8]], **kw)[0]
    contrastive = lm.generate([[5, 17, 33, 8]], strategy="contrastive", top_k=4,
                              penalty_alpha=0.0, **kw)[0]  # fmt: skip
    assert contrastive.token_ids == greedy.token_ids


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(strategy="contrastive", top_k=0), "top_k must be an int >= 1"),
        (dict(strategy="contrastive", top_k=4, penalty_alpha=1.5), "penalty_alpha must be"),
        (dict(strategy="contrastive", top_k=4, context_overflow="slide"), "context_overflow"),
        (dict(strategy="contrastive", top_k=4, num_return_sequences=2), "num_return_sequences"),
        (dict(strategy="beam", num_beams=4, num_beam_groups=3), "divisible by num_beam_groups"),
        (dict(strategy="sample", num_beam_groups=2), "needs strategy 'beam'"),
        (dict(strategy="beam", num_beams=4, num_beam_groups=2, diversity_penalty=-1), ">= 0"),
    ],
)
def test_bad_settings_are_one_line_errors(lm, kw, message):
    with pytest.raises(lmgen.ConfigError, match=message):
        lm.generate([[1, 2]], max_new_tokens=4, **kw)


def test_penalty_alpha_alone_asks_for_contrastive_search():
    assert lmgen.GenerationConfig.from_kwargs(penalty_alpha=0.6, top_k=4).strategy == (
        "contrastive"
    )
