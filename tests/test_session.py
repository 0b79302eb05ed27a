"""The one decode engine: `Session` stepped by hand equals `generate`; every stepper honours
context_overflow="slide", stop strings and logprobs the same way; close() cancels."""

from __future__ import annotations

import time

import pytest
import torch

import lmgen
from lmgen import ConfigError, GenerationError, Session
from lmgen.errors import ContextLengthError
from lmgen.lm import LM
from lmgen.tokenizers import BPETokenizer

TEXT = "to be or not to be, that is the question: whether 'tis nobler in the mind. "


@pytest.fixture(scope="module")
def lm():
    """A small random model with a short context (48 positions) and a real BPE."""
    tok = BPETokenizer.train(texts=[TEXT * 30], vocab_size=300)
    torch.manual_seed(3)
    cfg = lmgen.GPTConfig(
        vocab_size=tok.vocab_size, n_positions=48, n_embd=32, n_layer=2, n_head=4,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = lmgen.GPT(cfg).eval()
    with torch.no_grad():
        model.wte.weight.mul_(8.0)  # peaky distributions, so greedy and beams vary
    return LM(model, tok, name="tiny")


@pytest.fixture(scope="module")
def draft(lm):
    torch.manual_seed(4)
    model = lmgen.GPT(lmgen.GPTConfig(**{**lm.config.to_dict(), "n_layer": 1})).eval()
    return LM(model, lm.tokenizer, name="draft")


def _argmax_over(lm, ids: list[int]) -> int:
    with torch.no_grad():
        return int(lm.model(torch.tensor([ids]))[0, -1].argmax())


# -- stepping by hand ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(strategy="sample", seed=3, num_return_sequences=2, top_k=20, stop=["e"]),
        dict(strategy="greedy", stop=["th"]),
        dict(strategy="beam", num_beams=3, num_return_sequences=2),
    ],
    ids=["sample", "greedy", "beam"],
)
def test_session_stepped_by_hand_equals_generate(lm, kw):
    prompts = ["to be", "whether 'tis"]
    ref = lm.generate(prompts, max_new_tokens=14, **kw)
    session = Session(lm, prompts, max_new_tokens=14, **kw)
    texts = [""] * (len(prompts) * session.n)
    tokens = [[] for _ in texts]
    finished = {}
    steps = 0
    while not session.done:
        out = session.step()
        steps += 1
        for i, d in enumerate(out.deltas):
            texts[i] += d
        for i, t in enumerate(out.tokens):
            tokens[i] += t
        finished.update(out.finished)
    with pytest.raises(GenerationError, match="finished"):
        session.step()
    got = session.results()
    want = [c for r in ref for c in r.choices]
    assert [c.text for r in got for c in r.choices] == [c.text for c in want] == texts
    assert [c.token_ids for r in got for c in r.choices] == [c.token_ids for c in want]
    assert [c.finish_reason for c in want] == [finished[i] for i in range(len(want))]
    if kw["strategy"] != "beam":  # beam search gives its tokens at the end of the search
        assert tokens == [c.token_ids for c in want]
    assert steps > 1


def test_speculative_session_equals_plain_greedy_with_stop_strings(lm, draft):
    for stop in (None, ["th"], ["e"]):
        plain = lm.generate("to be", max_new_tokens=30, ignore_eos=True, stop=stop)
        for k in (1, 3):
            spec = lm.generate(
                "to be", max_new_tokens=30, ignore_eos=True, stop=stop, draft=draft,
                speculative_k=k,
            )  # fmt: skip
            assert (spec.text, spec.token_ids, spec.finish_reason) == (
                plain.text, plain.token_ids, plain.finish_reason,
            )  # fmt: skip
    assert plain.finish_reason == "stop"  # the stop strings did stop something


def test_beam_of_one_with_early_stopping_cuts_like_greedy(lm):
    """One beam that stops at its first finished hypothesis is greedy search: a stop string
    cuts both at the same place."""
    for stop in (["th"], ["e"], [" t"]):
        greedy = lm.generate("to be", max_new_tokens=20, ignore_eos=True, stop=stop)
        beam = lm.generate(
            "to be", strategy="beam", num_beams=1, early_stopping=True, max_new_tokens=20,
            ignore_eos=True, stop=stop,
        )  # fmt: skip
        assert (beam.text, beam.token_ids, beam.finish_reason) == (
            greedy.text, greedy.token_ids, greedy.finish_reason,
        )  # fmt: skip


# -- context_overflow -------------------------------------------------------------------------


def test_slide_greedy_past_the_context_is_the_models_argmax_over_a_window(lm):
    n_pos = lm.config.n_positions
    prompt = lm.tokenizer.encode(TEXT)[:30]
    with pytest.raises(ContextLengthError, match="context_overflow='slide'"):
        lm.generate([prompt], max_new_tokens=40)
    res = lm.generate(prompt, max_new_tokens=40, ignore_eos=True, context_overflow="slide")
    assert len(res.token_ids) == 40 and len(prompt) + 40 > n_pos
    seq = list(prompt)
    for t in res.token_ids:
        if len(seq) < n_pos:  # the whole sequence fits: exactly the full forward's argmax
            assert t == _argmax_over(lm, seq)
        else:  # the model sees the newest n_pos - 1 or n_pos tokens (state.py)
            assert t in (_argmax_over(lm, seq[-n_pos:]), _argmax_over(lm, seq[-(n_pos - 1) :]))
        seq.append(t)


def test_slide_works_for_every_stepper_and_agrees_where_they_overlap(lm, draft):
    prompt = lm.tokenizer.encode(TEXT * 2)[:60]  # longer than the context (48) already
    kw = dict(max_new_tokens=30, ignore_eos=True, context_overflow="slide")
    greedy = lm.generate(prompt, **kw)
    assert len(greedy.token_ids) == 30
    beam1 = lm.generate(prompt, strategy="beam", num_beams=1, **kw)
    assert beam1.token_ids == greedy.token_ids
    for k in (1, 4):
        spec = lm.generate(prompt, draft=draft, speculative_k=k, **kw)
        assert spec.token_ids == greedy.token_ids
    beams = lm.generate(prompt, strategy="beam", num_beams=3, num_return_sequences=3, **kw)
    assert all(len(c.token_ids) == 30 for c in beams.choices)
    sampled = lm.generate(prompt, strategy="sample", seed=1, **kw)
    assert len(sampled.token_ids) == 30
    spec_sampled = lm.generate(prompt, strategy="sample", seed=1, draft=draft, **kw)
    assert len(spec_sampled.token_ids) == 30
    # a short prompt that grows past the context: speculative and beam still go on
    short = lm.tokenizer.encode("to be")
    kw["max_new_tokens"] = 60
    plain = lm.generate(short, **kw).token_ids
    assert lm.generate(short, draft=draft, speculative_k=3, **kw).token_ids == plain
    assert lm.generate(short, strategy="beam", num_beams=1, **kw).token_ids == plain


# -- logprobs ---------------------------------------------------------------------------------


def test_beam_logprobs_are_the_models_log_softmax_along_the_beam(lm):
    res = lm.generate(
        "to be", strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=10,
        logprobs=2,
    )  # fmt: skip
    P = res.prompt_token_ids
    for c in res.choices:
        assert c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids)
        ids = torch.tensor([P + c.token_ids])
        with torch.no_grad():
            logp = lm.model(ids)[0].float().log_softmax(-1)
        for j, t in enumerate(c.token_ids):
            row = logp[len(P) - 1 + j]
            assert c.logprobs[j] == pytest.approx(float(row[t]), abs=1e-4)
            assert c.processed_logprobs[j] == pytest.approx(float(row[t]), abs=1e-4)  # no chain
            v, i = row.topk(2)
            assert [a.token_id for a in c.top_logprobs[j]] == i.tolist()
            assert [a.logprob for a in c.top_logprobs[j]] == pytest.approx(v.tolist(), abs=1e-4)


def test_logprobs_equal_across_steppers_where_tokens_agree(lm, draft):
    kw = dict(max_new_tokens=12, ignore_eos=True, logprobs=3)
    plain = lm.generate("to be", **kw).choices[0]
    spec = lm.generate("to be", draft=draft, speculative_k=3, **kw).choices[0]
    beam = lm.generate("to be", strategy="beam", num_beams=1, **kw).choices[0]
    for other in (spec, beam):
        assert other.token_ids == plain.token_ids
        assert other.logprobs == pytest.approx(plain.logprobs, abs=1e-4)
        assert [[a.token_id for a in s] for s in other.top_logprobs] == [
            [a.token_id for a in s] for s in plain.top_logprobs
        ]


# -- recording, next_logits, cancellation ---------------------------------------------------


def test_recorded_logits_are_what_the_step_chose_from(lm):
    session = Session(lm, "to be", strategy="sample", top_k=5, seed=2, max_new_tokens=4,
                      record=("logits",))  # fmt: skip
    raw, processed = session.next_logits()
    out = session.step()
    assert torch.equal(out.logits, raw) and torch.equal(out.processed_logits, processed)
    assert int(torch.isfinite(processed).sum()) == 5
    assert torch.isfinite(processed[0, out.tokens[0][0]])
    beam = Session(lm, "to be", strategy="beam", num_beams=2, max_new_tokens=3,
                   record=("candidates", "logits"))  # fmt: skip
    out = beam.step()
    assert out.logits.shape == (2, lm.config.vocab_size)
    assert len(out.candidates) == 1 and len(out.candidates[0].candidates) == 4


def test_close_cancels_and_frees_the_cache(lm):
    session = Session(lm, ["to be", "or not"], strategy="sample", seed=1, max_new_tokens=30,
                      ignore_eos=True)  # fmt: skip
    session.step()
    session.step()
    session.close()
    assert session.done
    assert session._stepper.state is None  # the KV cache is released
    results = session.results()
    assert [r.finish_reason for r in results] == ["cancelled", "cancelled"]
    assert all(len(r.token_ids) == 2 for r in results)
    with pytest.raises(GenerationError):
        session.step()


def test_bad_session_arguments_are_clear_errors(lm, draft):
    with pytest.raises(ConfigError, match="record must be"):
        Session(lm, "x", record=("everything",))
    with pytest.raises(ConfigError, match="token ids must be in"):
        Session(lm, [[1, 2, 10**6]])
    with pytest.raises(ConfigError, match="one prompt per session"):
        Session(lm, ["a", "b"], draft=draft, max_new_tokens=8)
    with pytest.raises(ConfigError, match="num_return_sequences"):
        Session(lm, "a", draft=draft, strategy="sample", num_return_sequences=2, max_new_tokens=8)
    with pytest.raises(ConfigError, match="no prompts"):
        Session(lm, [])


def test_token_id_prompts_equal_text_prompts(lm):
    ids = lm.tokenizer.encode("to be or")
    a = lm.generate("to be or", max_new_tokens=8)
    b = lm.generate(ids, max_new_tokens=8)
    c = lm.generate([ids, ids], max_new_tokens=8)
    assert a.token_ids == b.token_ids == c[0].token_ids == c[1].token_ids
    assert b.prompt == "to be or"


# -- the server's worker interleaves a beam search with other requests ----------------------


def test_a_beam_job_advances_one_step_per_turn(lm):
    from lmgen.server.worker import GenerateJob, ModelWorker

    slow = LM(lm.model.__class__(lm.config).eval(), lm.tokenizer)
    slow.model.load_state_dict(lm.model.state_dict())
    slow.model.register_forward_pre_hook(lambda *a: time.sleep(0.01))
    worker = ModelWorker(slow, batching=False)
    try:
        cfg = lmgen.GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=40,
                                     ignore_eos=True)  # fmt: skip
        beam = worker.submit(GenerateJob(["to be"], cfg))
        time.sleep(0.05)
        quick = worker.submit(
            GenerateJob(["or"], lmgen.GenerationConfig(strategy="greedy", max_new_tokens=2))
        )
        quick.future.result(30)
        assert not beam.future.done()  # the sampling request finished inside the search
        (results, _) = beam.future.result(60)
        assert len(results[0].token_ids) == 40
    finally:
        worker.close()
