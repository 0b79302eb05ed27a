"""Greedy and beam search against `transformers.generate` on the same random GPT-2."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmgen  # noqa: E402
from lmgen.tokenizers import BPETokenizer  # noqa: E402

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(our LM, transformers' model) holding the same random weights."""
    torch.manual_seed(1234)
    tok = BPETokenizer.train(
        texts=[
            "to be or not to be, that is the question. " * 40,
            "whether 'tis nobler in the mind to suffer",
        ],
        vocab_size=300,
    )
    cfg = transformers.GPT2Config(
        vocab_size=300,
        n_positions=96,
        n_embd=48,
        n_layer=2,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    # Sharpen the random head so sequences vary and eos gets chosen now and then.
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(8)
        hf.transformer.wte.weight[tok.eos_token_id] *= 1.5
    d = tmp_path_factory.mktemp("model")
    hf.save_pretrained(d)
    tok.save(d)
    return lmgen.load(d), hf


def _hf_generate(hf, lm, prompt_ids, **kw):
    ids = torch.tensor([prompt_ids])
    return hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        pad_token_id=lm.eos_token_ids[0],
        do_sample=False,
        **kw,
    )


def _strip(seq, eos):
    seq = list(seq)
    while seq and seq[-1] == eos:  # transformers pads finished rows with eos
        seq.pop()
    return seq


PROMPTS = ["to be or not", "whether", "the question", "nobler in the mind to suffer the"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers(pair, prompt):
    lm, hf = pair
    res = lm.generate(prompt, max_new_tokens=24)
    out = _hf_generate(hf, lm, res.prompt_token_ids, max_new_tokens=24)
    want = out[0, len(res.prompt_token_ids) :].tolist()
    eos = lm.eos_token_ids[0]
    assert res.token_ids == _strip(want, eos)
    if eos in want:
        assert res.finish_reason == "eos"
        assert want.index(eos) == len(res.token_ids)
    else:
        assert res.finish_reason == "length"


def test_greedy_batch_with_left_padding_equals_each_alone(pair):
    lm, _ = pair
    batch = lm.generate(PROMPTS, max_new_tokens=16)
    for prompt, res in zip(PROMPTS, batch, strict=True):
        assert res.token_ids == lm.generate(prompt, max_new_tokens=16).token_ids


def test_greedy_with_penalties_equals_transformers(pair):
    lm, hf = pair
    res = lm.generate(
        "to be or not",
        max_new_tokens=20,
        repetition_penalty=1.3,
        no_repeat_ngram_size=2,
        min_new_tokens=5,
    )
    out = _hf_generate(
        hf,
        lm,
        res.prompt_token_ids,
        max_new_tokens=20,
        repetition_penalty=1.3,
        no_repeat_ngram_size=2,
        min_new_tokens=5,
    )
    assert res.token_ids == _strip(
        out[0, len(res.prompt_token_ids) :].tolist(), lm.eos_token_ids[0]
    )


BEAM_CONFIGS = [
    dict(num_beams=2, length_penalty=1.0, early_stopping=False, num_return_sequences=1),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=3),
    dict(num_beams=4, length_penalty=0.5, early_stopping=True, num_return_sequences=2),
    dict(num_beams=3, length_penalty=2.0, early_stopping="never", num_return_sequences=3),
    dict(num_beams=5, length_penalty=-0.5, early_stopping=False, num_return_sequences=5),
    dict(
        num_beams=4,
        length_penalty=1.0,
        early_stopping=True,
        num_return_sequences=4,
        min_new_tokens=6,
    ),
    dict(
        num_beams=3,
        length_penalty=1.0,
        early_stopping=False,
        num_return_sequences=2,
        no_repeat_ngram_size=2,
        repetition_penalty=1.2,
    ),
]


@pytest.mark.parametrize(
    "cfg", BEAM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_beam_equals_transformers(pair, prompt, cfg):
    lm, hf = pair
    res = lm.generate(prompt, strategy="beam", max_new_tokens=12, **cfg)
    P = len(res.prompt_token_ids)
    out = _hf_generate(
        hf,
        lm,
        res.prompt_token_ids,
        max_new_tokens=12,
        output_scores=True,
        return_dict_in_generate=True,
        **cfg,
    )
    eos = lm.eos_token_ids[0]
    assert len(res.choices) == cfg["num_return_sequences"]
    for j, choice in enumerate(res.choices):
        want = out.sequences[j, P:].tolist()
        # transformers pads shorter hypotheses with eos; an eos-finished one ends with eos too.
        assert choice.token_ids == _strip(want, eos)[: len(choice.token_ids)]
        assert len(_strip(want, eos)) == len(choice.token_ids)
        assert choice.score == pytest.approx(out.sequences_scores[j].item(), abs=1e-5)
    scores = [c.score for c in res.choices]
    assert scores == sorted(scores, reverse=True)


def test_beam_batch_equals_each_alone(pair):
    lm, _ = pair
    kw = dict(strategy="beam", num_beams=3, max_new_tokens=10, num_return_sequences=2)
    batch = lm.generate(PROMPTS, **kw)
    for prompt, res in zip(PROMPTS, batch, strict=True):
        alone = lm.generate(prompt, **kw)
        for a, b in zip(res.choices, alone.choices, strict=True):
            assert a.token_ids == b.token_ids
            assert a.score == pytest.approx(b.score, abs=1e-4)


def test_raw_logprobs_are_the_models(pair):
    lm, hf = pair
    res = lm.generate(
        "to be or not", strategy="sample", seed=5, max_new_tokens=8, temperature=0.7, top_k=20
    )
    ids = torch.tensor([res.prompt_token_ids + res.token_ids])
    with torch.no_grad():
        lp = hf(ids).logits.log_softmax(-1)[0]
    P = len(res.prompt_token_ids)
    want = [lp[P - 1 + i, t].item() for i, t in enumerate(res.token_ids)]
    assert res.choices[0].logprobs == pytest.approx(want, abs=1e-4)
    # Processed log-probs come from the sharpened, truncated distribution: never lower here.
    assert all(
        p >= r - 1e-5
        for p, r in zip(res.choices[0].processed_logprobs, res.choices[0].logprobs, strict=True)
    )


@pytest.mark.parametrize("cfg", BEAM_CONFIGS[:4], ids=lambda c: ",".join(map(str, c.values())))
def test_beam_stop_string_ends_hypotheses_as_transformers_eos_does(pair, cfg):
    """A one-character stop string ends a hypothesis at the first token whose text holds it,
    as if those tokens were EOS ids: transformers' beam search given them as `eos_token_id`
    (its EOS-finished hypothesis keeps that token) is the oracle, tokens and scores. The
    character is one the free search writes, so the stop changes the search."""
    from lmgen.decoding.text import stop_cut

    lm, hf = pair
    tok = lm.tokenizer
    kw = dict(strategy="beam", max_new_tokens=12, **cfg)
    free = lm.generate("to be or not", **kw)
    char = next(c for c in free.choices[0].text[2:] if c.strip())
    stops = [i for i in range(tok.vocab_size) if char in tok.decode([i])]
    res = lm.generate("to be or not", stop=[char], **kw)
    P = len(res.prompt_token_ids)
    eos = lm.eos_token_ids[0]
    out = _hf_generate(
        hf, lm, res.prompt_token_ids, max_new_tokens=12, output_scores=True,
        return_dict_in_generate=True, eos_token_id=[eos, *stops], **cfg,
    )  # fmt: skip
    assert [c.token_ids for c in res.choices] != [c.token_ids for c in free.choices]
    for j, choice in enumerate(res.choices):
        want = _strip(out.sequences[j, P:].tolist(), eos)
        cut = stop_cut(tok, want, tok.decode(want), [char])
        if cut is not None:
            assert choice.finish_reason == "stop"
            assert (choice.text, len(choice.token_ids)) == cut
            assert choice.token_ids == want[: cut[1]]
        else:
            assert choice.token_ids == want
        assert choice.score == pytest.approx(out.sequences_scores[j].item(), abs=1e-5)
