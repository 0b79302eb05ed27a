"""A search ends when its answer is settled (issue 31, finding 2).

`{"num_beams": 4, "max_tokens": 2048, "prompt": "ROMEO:", "guided_choice": ["yes", "no"],
"context_overflow": "slide"}` answered "no" after 2048 model steps (57 s): once the grammar
admitted nothing but end of sequence, transformers' bookkeeping kept beams that had already
chosen EOS (scored -1e9) running, and their -1e9 / length looked better than the -1e9 of an
empty finished slot. Every strategy is checked the same way, by counting model steps (forward
calls), never by wall time: beam, diverse beam, contrastive (which could pick a token the
grammar ruled out and run on), sampling with n > 1, greedy and speculative decoding."""

from __future__ import annotations

import httpx
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.decoding.beam import BeamStepper

TEXTS = ["To be, or not to be: that is the question. yes or no, yes and no."] * 12
# One byte each: one tokenization each, so the search finds fewer hypotheses than it has beams
# (what left the bundled model's beams running); and longer ones, with several tokenizations.
CHOICE_LISTS = {"y/n": ["y", "n"], "yes/no": ["yes", "no"]}


@pytest.fixture(scope="module")
def lm(tmp_path_factory, one_thread):
    return lmgen.load(save_peaky_model(tmp_path_factory.mktemp("settles") / "tiny", TEXTS))


class Forwards:
    """Counts the model's forward calls (a prefill or one decode step each)."""

    def __init__(self, lm):
        self.n = 0
        self.handle = lm.model.register_forward_hook(self.hook)

    def hook(self, *args):
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _longest(choices) -> int:
    """The most tokens a choice can take (one token per byte at worst)."""
    return max(len(c.encode()) for c in choices)


STRATEGIES = {
    "beam 4": dict(num_beams=4),
    "beam 8": dict(num_beams=8),
    "beam 4, n 4": dict(num_beams=4, num_return_sequences=4),
    "beam 4, early stopping": dict(num_beams=4, early_stopping=True, num_return_sequences=2),
    "beam 4, never": dict(num_beams=4, early_stopping="never", length_penalty=2.0),
    "beam 3, negative length penalty": dict(num_beams=3, length_penalty=-1.0),
    "diverse beam 4/2": dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
    "diverse beam 8/2, n 8": dict(
        num_beams=8, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=8
    ),
    "diverse beam 4/4, n 4": dict(
        num_beams=4, num_beam_groups=4, diversity_penalty=1.0, num_return_sequences=4
    ),
    "contrastive, alpha 0.9": dict(strategy="contrastive", top_k=4, penalty_alpha=0.9),
    "contrastive, alpha 0.6": dict(strategy="contrastive", top_k=8, penalty_alpha=0.6),
    "sampling, n 4": dict(strategy="sample", num_return_sequences=4, seed=1),
    "greedy": dict(strategy="greedy"),
}


@pytest.mark.parametrize("choices", CHOICE_LISTS.values(), ids=CHOICE_LISTS.keys())
@pytest.mark.parametrize("kw", STRATEGIES.values(), ids=STRATEGIES.keys())
def test_a_constrained_search_stops_once_every_answer_is_settled(lm, kw, choices):
    """max_new_tokens is 1000 (sliding past the 128-token context where the strategy can);
    the choices take a few tokens, so a handful of steps must do."""
    overflow = "error" if kw.get("strategy") == "contrastive" else "slide"
    max_new = 100 if overflow == "error" else 1000
    with Forwards(lm) as calls:
        res = lm.generate(
            "To be", max_new_tokens=max_new, choice=choices, context_overflow=overflow, **kw
        )
    # a prefill, one step per token of the longest choice, one for its EOS (contrastive runs
    # its k candidates as one more forward per step)
    per_step = 2 if kw.get("strategy") == "contrastive" else 1
    assert calls.n <= 1 + per_step * (_longest(choices) + 1), calls.n
    finished = [c for c in res.choices if c.finish_reason == "eos"]
    assert finished, res.choices
    for c in res.choices:
        if c.finish_reason == "eos":  # a real hypothesis, never one grown from a dead beam
            assert c.text in choices and (c.score is None or c.score > -1e6), c
        else:  # asked for more beams than the constraint has answers: an empty one
            assert (c.text, c.finish_reason, c.token_ids) == ("", "length", []), c
            assert c.score <= -1e9, c


@pytest.mark.parametrize("choices", CHOICE_LISTS.values(), ids=CHOICE_LISTS.keys())
def test_a_beam_search_whose_beams_are_all_finished_takes_no_more_steps(lm, choices):
    """The stepper itself: after the step where the last live beam chose EOS, `done` is set
    and `select` is not called again; every running beam at that point is dead."""
    steps = []
    original = BeamStepper.select

    def select(self):
        out = original(self)
        steps.append((self.n_gen, self.done, self.run_scores.max().item()))
        return out

    BeamStepper.select = select
    try:
        res = lm.generate(
            "To be", num_beams=4, max_new_tokens=1000, choice=choices, context_overflow="slide"
        )
    finally:
        BeamStepper.select = original
    assert res.text in choices and res.finish_reason == "eos"
    assert steps[-1][1] is True and all(not done for _, done, _ in steps[:-1])
    assert len(steps) <= _longest(choices) + 1
    assert steps[-1][2] <= -1e9 / 2  # the beams left running at the end were all dead


def test_unconstrained_beam_search_still_runs_to_its_length(lm):
    """The dead-beam rule changes nothing when continuations are plentiful."""
    with Forwards(lm) as calls:
        res = lm.generate("To be", num_beams=3, max_new_tokens=12, ignore_eos=True)
    assert len(res.token_ids) == 12 and calls.n == 12


@pytest.mark.parametrize("choices", CHOICE_LISTS.values(), ids=CHOICE_LISTS.keys())
def test_speculative_decoding_under_a_grammar_stops_at_the_answer(lm, choices):
    with Forwards(lm) as calls:  # the model drafts for itself: every proposal is accepted
        res = lm.generate(
            "To be", max_new_tokens=1000, choice=choices, context_overflow="slide", draft=lm,
            strategy="sample", seed=3, speculative_k=4,
        )  # fmt: skip
    assert res.text in choices and res.finish_reason == "eos"
    # each round: k draft steps and one target pass, all on this model
    assert calls.n <= 2 * (4 + 1) * (_longest(choices) + 1)


# -- the request of the report, on the bundled model, through the server --------------------


@pytest.fixture(scope="module")
def shakespeare(one_thread):
    return lmgen.load("shakespeare")


def test_the_reported_beam_and_guided_choice_request_takes_a_few_steps(shakespeare):
    from lmgen.server import create_app, serve_in_thread

    body = {"num_beams": 4, "max_tokens": 2048, "prompt": "ROMEO:",
            "guided_choice": ["yes", "no"], "context_overflow": "slide"}  # fmt: skip
    with Forwards(shakespeare) as calls:
        with serve_in_thread(create_app({"shakespeare": shakespeare})) as url:
            r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert calls.n <= 6, calls.n  # was 2049: a prefill and 2048 steps (57 s)
    choice = r.json()["choices"][0]
    assert choice["text"] in ("yes", "no") and choice["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] <= 3
