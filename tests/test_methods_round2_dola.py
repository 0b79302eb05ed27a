"""DoLa against transformers: the same tiny GPT-2 run by transformers (its hidden states, its
LM head) through the reference's layer choice and relative-top contrast, step by step, and
by lmgen's `generate(dola_layers=...)` (transformers 5 moved `_dola_decoding` to a Hub
repository that cannot be fetched offline, so its steps are restated here from the 4.x
code: candidate layers, Jensen-Shannon choice, `_relative_top_filter`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmgen
from lmgen.decoding.dola import candidate_layers
from lmgen.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_layers(dola_layers, n, tied):
    start = (2 if n > 2 else 1 if n == 2 else 0) if tied else 0
    if dola_layers == "low":
        return [start] if start == n // 2 else list(range(start, n // 2 if n <= 40 else 20, 2))
    if dola_layers == "high":
        return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
    return [i for i in dola_layers if i < n]


def reference_step(hf, input_ids, layers, repetition_penalty):
    out = hf(input_ids, output_hidden_states=True)
    final = out.logits[:, -1, :].float()
    early = {i: hf.lm_head(out.hidden_states[i][:, -1, :]) for i in layers}
    if len(layers) == 1:
        base = early[layers[0]]
    else:
        stacked = torch.stack([early[i] for i in layers])
        avg = 0.5 * (F.softmax(final, -1)[None] + F.softmax(stacked, -1))
        kl1 = F.kl_div(F.log_softmax(final, -1)[None], avg, reduction="none").mean(-1)
        kl2 = F.kl_div(F.log_softmax(stacked, -1), avg, reduction="none").mean(-1)
        base = early[layers[int((0.5 * (kl1 + kl2)).mean(-1).argmax())]]
    scores, baseline = final.log_softmax(-1), base.log_softmax(-1)
    top = torch.sort(scores, descending=True).values[..., 0]
    thresh = torch.min(top, scores.max(-1).values + math.log(0.1)).unsqueeze(-1)
    baseline[scores < thresh] = -1e-3
    scores[scores < thresh] = -float("inf")
    logits = scores - baseline
    if repetition_penalty != 1.0:
        seen = logits.gather(1, input_ids)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        logits = logits.scatter(1, input_ids, seen)
    return int(logits.argmax(-1))


@pytest.mark.parametrize(("n", "tied"), [(1, True), (2, True), (4, True), (12, False), (48, True)])
@pytest.mark.parametrize("which", ["low", "high", [0, 1, 3, 50]])
def test_candidate_layers_are_transformers(n, tied, which):
    assert candidate_layers(which, n, tied) == reference_layers(which, n, tied)


@pytest.fixture(scope="module")
def six_layers(tmp_path_factory, tiny_tokenizer):
    """A six-layer random GPT-2 (so "high" and lists contrast several layers), as
    transformers builds it and as lmgen loads it."""
    from tests.conftest import randomize_
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tiny_tokenizer.eos_token_id
    config = GPT2Config(vocab_size=tiny_tokenizer.vocab_size, bos_token_id=eos, eos_token_id=eos,
                        n_positions=128, n_embd=48, n_layer=6, n_head=4)  # fmt: skip
    torch.manual_seed(1)
    hf = randomize_(GPT2LMHeadModel(config), seed=1, scale=0.3).eval()
    path = tmp_path_factory.mktemp("six") / "gpt2-6"
    hf.save_pretrained(path)
    tiny_tokenizer.save(path)
    return hf, lmgen.load(path)


CASES = [(2, "low"), (2, "high"), (2, [0]), (2, [1, 3]),
         (6, "low"), (6, "high"), (6, [0, 1, 3]), (6, [4])]  # fmt: skip


@pytest.mark.parametrize(("depth", "dola_layers"), CASES)
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.2])
def test_dola_greedy_equals_transformers(tiny_hf_model, tiny_lm, six_layers, depth, dola_layers,
                                         repetition_penalty):  # fmt: skip
    hf, lm = (tiny_hf_model, tiny_lm) if depth == 2 else six_layers
    prompt = "To be, or not to be"
    ids = lm.tokenizer.encode(prompt)
    layers = reference_layers(dola_layers, hf.config.n_layer, hf.config.tie_word_embeddings)
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(12):
            t = reference_step(hf, seq, layers, repetition_penalty)
            seq = torch.cat([seq, torch.tensor([[t]])], dim=1)
    ours = lm.generate(prompt, max_new_tokens=12, ignore_eos=True, dola_layers=dola_layers,
                       repetition_penalty=repetition_penalty)  # fmt: skip
    assert ours.token_ids == seq[0, len(ids) :].tolist()
    plain = lm.generate(prompt, max_new_tokens=12, ignore_eos=True,
                        repetition_penalty=repetition_penalty)  # fmt: skip
    if depth == 6 and dola_layers == "high":
        assert ours.token_ids != plain.token_ids  # the contrast changes the text


def test_dola_sampling_is_seeded_and_keeps_to_the_relative_top(six_layers):
    _, lm = six_layers
    kw = dict(max_new_tokens=16, strategy="sample", seed=3, ignore_eos=True, logprobs=1)
    a = lm.generate("hello", dola_layers="high", **kw)
    b = lm.generate("hello", dola_layers="high", **kw)
    assert a.token_ids == b.token_ids
    # every chosen token passed the relative-top filter: p >= 0.1 * the final layer's top p
    choice = a.choices[0]
    for lp, top in zip(choice.logprobs, choice.top_logprobs, strict=True):
        assert lp >= top[0].logprob + math.log(0.1) - 1e-5


def test_dola_bad_values_name_the_setting(tiny_lm):
    for bad in ("middle", [], [-1], [1.5], 3):
        with pytest.raises(ConfigError, match="^dola_layers must be 'low', 'high' or a list"):
            lmgen.GenerationConfig.from_kwargs(dola_layers=bad)
    with pytest.raises(ConfigError, match="^dola_layers .*strategy greedy or sample"):
        lmgen.GenerationConfig.from_kwargs(dola_layers="low", num_beams=2)
    with pytest.raises(ConfigError, match="^dola_layers names no layer below"):
        tiny_lm.generate("x", dola_layers=[99], max_new_tokens=2)
