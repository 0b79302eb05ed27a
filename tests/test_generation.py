"""The decode loop: sampling seeds, stop strings, streaming, finish reasons, context limits."""

import pytest
import torch

import lmgen
from lmgen import ConfigError, GenerationError
from lmgen.lm import LM
from lmgen.tokenizers import BPETokenizer, WordTokenizer

TEXT = "to be or not to be, that is the question. whether 'tis nobler in the mind to suffer "


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(7)
    tok = BPETokenizer.train(texts=[TEXT * 30], vocab_size=300)
    model = lmgen.GPT(
        lmgen.GPTConfig(
            vocab_size=300,
            n_positions=48,
            n_embd=32,
            n_layer=2,
            n_head=4,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    with torch.no_grad():
        model.wte.weight.mul_(10)  # a peaky distribution, so text is not uniform noise
    return LM(model, tok, name="tiny")


def test_seeded_sampling_is_reproducible_and_batch_independent(lm):
    kw = dict(strategy="sample", temperature=1.3, max_new_tokens=20, seed=11)
    alone = lm.generate("to be", **kw)
    again = lm.generate("to be", **kw)
    assert alone.token_ids == again.token_ids
    batch = lm.generate(["whether 'tis nobler", "to be", "the"], **kw)
    assert batch[1].token_ids == alone.token_ids
    other = lm.generate("to be", **{**kw, "seed": 12})
    assert other.token_ids != alone.token_ids


def test_num_return_sequences_gives_different_samples(lm):
    res = lm.generate(
        "to be",
        strategy="sample",
        temperature=1.5,
        max_new_tokens=12,
        seed=3,
        num_return_sequences=4,
    )
    assert [c.index for c in res.choices] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in res.choices}) > 1
    assert res.text == res.choices[0].text


def test_temperature_zero_is_greedy(lm):
    a = lm.generate("to be", strategy="sample", temperature=0, max_new_tokens=10)
    b = lm.generate("to be", strategy="greedy", max_new_tokens=10)
    assert a.token_ids == b.token_ids


def test_stream_equals_generate(lm):
    for kw in (
        dict(strategy="greedy"),
        dict(strategy="sample", seed=4, top_p=0.9),
        dict(strategy="sample", seed=9, stop=["e"]),
    ):
        full = lm.generate("to be", max_new_tokens=25, **kw)
        deltas = list(lm.stream("to be", max_new_tokens=25, **kw))
        assert "".join(deltas) == full.text
        assert len(deltas) >= 1


def test_stop_string_is_cut_and_reported(lm):
    free = lm.generate("to be", strategy="sample", seed=2, max_new_tokens=30, temperature=1.5)
    text = free.text
    assert len(text) > 4
    stop = text[2:4]
    res = lm.generate(
        "to be",
        strategy="sample",
        seed=2,
        max_new_tokens=30,
        temperature=1.5,
        stop=[stop, "\u2603never"],
    )
    cut = text[: text.find(stop)]
    assert res.text == cut
    assert res.finish_reason == "stop"
    assert stop not in res.text
    assert lm.tokenizer.decode(res.token_ids).startswith(cut)
    assert len(res.choices[0].logprobs) == len(res.token_ids)


def test_eos_and_ignore_eos(lm):
    eos = lm.eos_token_ids[0]
    # Push eos to the top: greedy stops at once with "eos"; ignore_eos runs to the length.
    res = lm.generate("to be", max_new_tokens=5, logit_bias={eos: 100.0})
    assert res.finish_reason == "eos" and res.token_ids == []
    res = lm.generate("to be", max_new_tokens=5, logit_bias={eos: 100.0}, ignore_eos=True)
    assert res.finish_reason == "length" and res.token_ids == [eos] * 5
    res = lm.generate("to be", max_new_tokens=5, logit_bias={eos: 100.0}, min_new_tokens=3)
    assert res.finish_reason == "eos" and len(res.token_ids) == 3
    assert eos not in res.token_ids


def test_length_finish_and_counts(lm):
    res = lm.generate("to be", max_new_tokens=7, ignore_eos=True)
    assert res.finish_reason == "length"
    assert len(res.token_ids) == 7
    assert len(res.choices[0].logprobs) == 7


def test_top_logprobs_reported(lm):
    res = lm.generate("to be", max_new_tokens=4, logprobs=3, ignore_eos=True)
    top = res.choices[0].top_logprobs
    assert len(top) == 4 and all(len(t) == 3 for t in top)
    for step, chosen, lp in zip(top, res.token_ids, res.choices[0].logprobs, strict=True):
        # greedy without processors picks the raw argmax: the first alternative
        assert step[0].token_id == chosen
        assert step[0].logprob == pytest.approx(lp, abs=1e-6)
        assert [a.logprob for a in step] == sorted([a.logprob for a in step], reverse=True)


def test_context_overflow_error_names_both_lengths(lm):
    with pytest.raises(GenerationError, match=r"48") as e:
        lm.generate("to be " * 10, max_new_tokens=40)
    assert "max_new_tokens" in str(e.value)


def test_sliding_window_keeps_going_and_matches_recomputation(lm):
    res = lm.generate("to be", max_new_tokens=60, context_overflow="slide", ignore_eos=True)
    assert len(res.token_ids) == 60
    # Each token is the argmax of the model over the last n_positions tokens before it.
    seq = res.prompt_token_ids + res.token_ids
    P = len(res.prompt_token_ids)
    with torch.no_grad():
        for i in (50, 55, 59):
            window = torch.tensor([seq[max(0, P + i - 48) : P + i]])
            assert int(lm.model(window)[0, -1].argmax()) == seq[P + i]


def test_empty_prompt_starts_from_bos(lm):
    res = lm.generate("", max_new_tokens=3, ignore_eos=True)
    assert res.prompt_token_ids == [lm.tokenizer.bos_token_id]
    assert len(res.token_ids) == 3


def test_empty_prompt_without_bos_is_a_clear_error():
    tok = WordTokenizer(
        ["hello", "world", "this", "is", "a", "test", "model", "GPT", "language", "AI"]
    )
    model = lmgen.GPT(
        lmgen.GPTConfig(
            vocab_size=10,
            n_positions=20,
            n_embd=16,
            n_layer=1,
            n_head=2,
            bos_token_id=None,
            eos_token_id=None,
        )
    )
    lm = LM(model.eval(), tok)
    with pytest.raises(ConfigError, match="empty"):
        lm.generate("", max_new_tokens=2)
    res = lm.generate("hello world this is", max_new_tokens=3)
    assert len(res.text.split()) == 3 and res.finish_reason == "length"


@pytest.mark.parametrize(
    "kw, param",
    [
        (dict(temperature=-1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=2), "min_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(strategy="beam", num_beams=0), "num_beams"),
        (dict(strategy="beam", num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(min_new_tokens=-2), "min_new_tokens"),
        (dict(strategy="nucleus"), "strategy"),
        (dict(top_pp=0.5), "top_pp"),
    ],
)
def test_bad_parameters_raise_config_error_naming_them(lm, kw, param):
    with pytest.raises(ConfigError) as e:
        lm.generate("to be", **kw)
    assert e.value.param == param
    assert param in str(e.value)


def test_next_token_distribution(lm):
    dist = lm.next_token("to be", top=0, top_k=5, temperature=0.5)
    assert len(dist.candidates) == lm.tokenizer.vocab_size
    logits = [c.logit for c in dist.candidates]
    assert logits == sorted(logits, reverse=True)
    assert sum(c.kept for c in dist.candidates) >= 5
    assert sum(c.prob for c in dist.candidates) == pytest.approx(1.0, abs=1e-4)
    assert sum(c.processed_prob for c in dist.candidates) == pytest.approx(1.0, abs=1e-4)
    assert dist.chain == ["Temperature(temperature=0.5)", "TopK(k=5)"]
    assert dist.greedy_token_id == dist.candidates[0].token_id
    d = dist.to_dict()
    assert set(d) >= {"prompt_token_ids", "chain", "candidates"}
    assert set(d["candidates"][0]) == {
        "token_id",
        "token",
        "logit",
        "prob",
        "processed_prob",
        "kept",
    }


def test_tiny_temperature_is_refused_not_nan(lm):
    with pytest.raises(
        ConfigError, match="temperature must be 0 \\(greedy\\) or a finite number >= 0.0001"
    ):
        lm.next_token("to be", temperature=1e-300)


def test_next_token_with_nothing_left_is_an_error(lm):
    everything = [[i] for i in range(lm.tokenizer.vocab_size)]
    with pytest.raises(GenerationError, match="no token"):
        lm.next_token("to be", bad_words_ids=everything, min_new_tokens=1)


def test_beam_hypotheses_end_at_stop_strings(lm):
    """A stop string ends a hypothesis during the search, as EOS does: it joins the finished
    set scored by its length up to the stop, and its text is cut before the stop string."""
    kw = dict(
        strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=12, ignore_eos=True
    )
    free = lm.generate("to be", **kw)
    text = free.choices[0].text
    stop = text[3:5]
    res = lm.generate("to be", stop=[stop], **kw)
    for c in res.choices:
        assert stop not in c.text
        full = lm.tokenizer.decode(c.token_ids)
        assert full.startswith(c.text)
        assert len(c.logprobs) == len(c.token_ids) == len(c.processed_logprobs)
        if c.finish_reason == "stop":  # cut where the plain loop cuts (tests/test_text.py)
            assert stop in full
    scores = [c.score for c in res.choices]
    assert scores == sorted(scores, reverse=True)


def test_infinite_temperature_is_refused_as_not_finite(lm):
    with pytest.raises(ConfigError, match="a finite number"):
        lm.generate("to be", strategy="sample", temperature=float("inf"))
