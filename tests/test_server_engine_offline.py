"""`lm.generate([...many prompts...])` through the running batch (engine.generate_many): each
prompt's result is what it gets alone, and a prompt that finishes early makes room for the
next one."""

from __future__ import annotations

import pytest

import lmgen
from lmgen.generation import generate
from lmgen.generation_config import GenerationConfig
from lmgen.server import engine as E

PROMPTS = ["ROMEO:", "JULIET:\nO Romeo", "To be, or not", "First Citizen:", "KING:", "Hark"]


@pytest.fixture(scope="module")
def lm():
    return lmgen.load("shakespeare")


def test_many_prompts_go_through_the_engine_and_equal_each_alone(lm, monkeypatch):
    used = []
    real = E.generate_offline
    monkeypatch.setattr(E, "generate_offline", lambda *a, **k: used.append(1) or real(*a, **k))
    kw = dict(strategy="sample", seed=5, temperature=0.9, max_new_tokens=12, stop=["e "])
    results = lm.generate(PROMPTS, **kw)
    assert used == [1]
    for p, r in zip(PROMPTS, results, strict=True):
        ref = generate(lm, p, GenerationConfig(**kw))  # one prompt: a Session of its own
        assert r.prompt == ref.prompt
        assert [c.token_ids for c in r.choices] == [c.token_ids for c in ref.choices]
        assert [c.finish_reason for c in r.choices] == [c.finish_reason for c in ref.choices]
        assert r.text == ref.text


def test_rows_that_finish_early_free_their_place(lm):
    cfg = GenerationConfig(strategy="sample", seed=2, max_new_tokens=20, stop=["e"])
    wide = E.generate_offline(lm, PROMPTS, cfg, max_rows=64)
    steps = []
    real_step = E.Engine.step

    def step(self):
        steps.append(self.rows_in_use())
        return real_step(self)

    E.Engine.step = step
    try:
        narrow = E.generate_offline(lm, PROMPTS, cfg, max_rows=2)
    finally:
        E.Engine.step = real_step
    assert max(steps) <= 2  # never more than two rows at once ...
    assert [r.choices[0].token_ids for r in narrow] == [r.choices[0].token_ids for r in wide]
    assert [r.choices[0].logprobs for r in narrow] == [r.choices[0].logprobs for r in wide]


def test_other_strategies_keep_one_batch_session(lm):
    assert E.generate_many(lm, PROMPTS[:2], None, {"strategy": "beam", "num_beams": 2}) is None
    assert E.generate_many(lm, PROMPTS[:1], None, {}) is None
    assert E.generate_many(lm, "ROMEO:", None, {}) is None
    results = lm.generate(PROMPTS[:2], strategy="beam", num_beams=2, max_new_tokens=4)
    assert len(results) == 2


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_a_bare_token_id_in_a_list_of_prompts_is_refused(lm, strategy):
    """['a', 5] is not two prompts: a token-id prompt is a list of its own, for every
    strategy (the engine used to read the 5 as the one-token prompt [5])."""
    kw = {"num_beams": 2} if strategy == "beam" else {}
    with pytest.raises(lmgen.ConfigError, match=r"prompt 1 of the list .* got int 5"):
        lm.generate(["a", 5], strategy=strategy, max_new_tokens=2, **kw)
    assert len(lm.generate(["a", [5, 6]], strategy=strategy, max_new_tokens=2, **kw)) == 2
