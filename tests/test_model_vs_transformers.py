"""GPT against transformers' GPT2LMHeadModel: same weights, same logits (fp32, 1e-4).

Covers GPT-2's defaults and the tutorial's variant (exact GELU, untied head), a single
sequence, a left-padded batch, and the KV cache (prefill + 20 steps, padded or not).
"""

from __future__ import annotations

import pytest
import torch

import lmgen
from conftest import TINY_SHAPE, randomize_
from lmgen.errors import GenerationError
from lmgen.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
VARIANTS = {
    "gpt2": {},
    "tutorial": {"activation_function": "gelu", "tie_word_embeddings": False},
}


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory, tiny_tokenizer):
    """(transformers model, our model loaded from its save_pretrained directory)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=tiny_tokenizer.vocab_size, **TINY_SHAPE, **VARIANTS[request.param]
    )
    torch.manual_seed(1)
    hf = randomize_(GPT2LMHeadModel(config), seed=1).eval()
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    tiny_tokenizer.save(directory)
    lm = lmgen.load(directory)
    assert lm.config.activation_function == config.activation_function
    assert lm.config.tie_word_embeddings == config.tie_word_embeddings
    return hf, lm.model


def random_ids(*shape: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def left_padded(lengths: list[int], vocab: int, seed: int = 0):
    """(ids, mask) for rows of the given lengths, left-padded to the longest with id 0."""
    T = max(lengths)
    ids = random_ids(len(lengths), T, vocab=vocab, seed=seed)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, T - n :] = 1
        ids[row, : T - n] = 0
    return ids, mask


# --- configuration -------------------------------------------------------------------------


def test_defaults_are_gpt2_small():
    from transformers import GPT2Config

    ours, theirs = GPTConfig(), GPT2Config()
    for name in (
        "vocab_size",
        "n_positions",
        "n_embd",
        "n_layer",
        "n_head",
        "layer_norm_epsilon",
        "activation_function",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.activation_function == "gelu_new"  # tanh approximation
    assert ours.inner_dim == 4 * ours.n_embd
    assert ours.layer_norm_epsilon == 1e-5


def test_gpt2_structure_biases_and_tied_head():
    model = GPT(GPTConfig(vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=4))
    block = model.h[0]
    for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
        assert linear.bias is not None
    assert block.mlp.c_fc.out_features == 128
    assert block.ln_1.eps == 1e-5 and model.ln_f.eps == 1e-5
    assert model.lm_head.bias is None
    assert model.lm_head.weight is model.wte.weight
    x = torch.linspace(-3, 3, 13)
    assert torch.allclose(block.mlp.act(x), torch.nn.functional.gelu(x, approximate="tanh"))


def test_tutorial_variant_exact_gelu_untied_head():
    model = GPT(
        GPTConfig(
            vocab_size=100,
            n_positions=16,
            n_embd=32,
            n_layer=1,
            n_head=4,
            activation_function="gelu",
            tie_word_embeddings=False,
        )
    )
    assert model.lm_head.weight is not model.wte.weight
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(model.h[0].mlp.act(x), torch.nn.functional.gelu(x))


def test_tutorial_variant_loads_in_transformers_untied(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    config = GPTConfig(
        vocab_size=tiny_tokenizer.vocab_size,
        activation_function="gelu",
        tie_word_embeddings=False,
        **TINY_SHAPE,
    )
    torch.manual_seed(0)
    model = randomize_(GPT(config)).eval()
    lmgen.LM(model, tiny_tokenizer).save(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert hf.config.activation_function == "gelu"
    assert hf.config.tie_word_embeddings is False
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    assert torch.equal(hf.lm_head.weight, model.lm_head.weight)
    ids = random_ids(2, 30, vocab=config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"n_embd": 50},
        {"n_layer": 0},
        {"activation_function": "softplus"},
        {"dropout": 1.0},
        {"vocab_size": 2.5},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(lmgen.ConfigError):
        GPTConfig(**bad)


# --- logits equality -------------------------------------------------------------------------


def test_single_sequence_matches(pair):
    hf, ours = pair
    ids = random_ids(1, 64, vocab=ours.config.vocab_size)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert expected.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_full_context_matches(pair):
    hf, ours = pair
    ids = random_ids(2, ours.config.n_positions, vocab=ours.config.vocab_size, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=ATOL, rtol=0)


def test_left_padded_batch_matches(pair):
    hf, ours = pair
    ids, mask = left_padded([17, 9, 1, 12], vocab=ours.config.vocab_size)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)


def test_left_padded_rows_equal_rows_alone(pair):
    _, ours = pair
    lengths = [17, 9, 1, 12]
    ids, mask = left_padded(lengths, vocab=ours.config.vocab_size, seed=5)
    with torch.no_grad():
        batch = ours(ids, attention_mask=mask)
        for row, n in enumerate(lengths):
            alone = ours(ids[row : row + 1, -n:])
            torch.testing.assert_close(batch[row, -n:], alone[0], atol=ATOL, rtol=0)


def test_output_attentions_path_matches_eager(pair, tmp_path):
    from transformers import GPT2LMHeadModel

    hf, ours = pair
    hf.save_pretrained(tmp_path)
    eager = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = random_ids(1, 20, vocab=ours.config.vocab_size, seed=7)
    with torch.no_grad():
        out = eager(ids, output_attentions=True)
        logits, weights = ours(ids, output_attentions=True)
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=0)
    assert len(weights) == len(out.attentions) == ours.config.n_layer
    for w, expected in zip(weights, out.attentions, strict=True):
        torch.testing.assert_close(w, expected, atol=1e-5, rtol=0)


# --- KV cache ----------------------------------------------------------------------------------


def test_kv_cache_prefill_and_20_steps_match_full_forward(pair):
    hf, ours = pair
    prompt, steps = 11, 20
    ids = random_ids(2, prompt + steps, vocab=ours.config.vocab_size, seed=9)
    with torch.no_grad():
        full = ours(ids)
        reference = hf(ids).logits
        cache = ours.new_cache(2, prompt + steps)
        pieces = [ours(ids[:, :prompt], cache=cache)]
        for t in range(prompt, prompt + steps):
            pieces.append(ours(ids[:, t : t + 1], cache=cache))
        assert cache.length == prompt + steps
    cached = torch.cat(pieces, dim=1)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    torch.testing.assert_close(cached, reference, atol=ATOL, rtol=0)


def test_kv_cache_multi_token_chunks(pair):
    _, ours = pair
    ids = random_ids(1, 30, vocab=ours.config.vocab_size, seed=10)
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(1, 30)
        chunks = [ours(ids[:, a:b], cache=cache) for a, b in ((0, 7), (7, 8), (8, 19), (19, 30))]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=ATOL, rtol=0)


def test_kv_cache_logits_to_keep(pair):
    _, ours = pair
    ids = random_ids(1, 12, vocab=ours.config.vocab_size, seed=11)
    with torch.no_grad():
        full = ours(ids)
        last = ours(ids, cache=ours.new_cache(1, 12), logits_to_keep=1)
    assert last.shape == (1, 1, ours.config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=ATOL, rtol=0)


def test_left_padded_batch_with_cache_matches_rows_alone(pair):
    hf, ours = pair
    lengths, steps = [13, 4, 8], 20
    B, T = len(lengths), max(lengths)
    ids, mask = left_padded(lengths, vocab=ours.config.vocab_size, seed=12)
    new = random_ids(B, steps, vocab=ours.config.vocab_size, seed=13)
    with torch.no_grad():
        cache = ours.new_cache(B, T + steps)
        first = ours(ids, attention_mask=mask, cache=cache)
        outs = [
            ours(new[:, s : s + 1], attention_mask=torch.ones(B, 1, dtype=torch.long), cache=cache)
            for s in range(steps)
        ]
        stepped = torch.cat(outs, dim=1)
        for row, n in enumerate(lengths):
            alone_ids = torch.cat([ids[row, T - n :], new[row]])[None]
            alone = ours(alone_ids)[0]
            torch.testing.assert_close(first[row, T - n :], alone[:n], atol=ATOL, rtol=0)
            torch.testing.assert_close(stepped[row], alone[n:], atol=ATOL, rtol=0)
        # And the same against transformers on the padded batch, real positions only.
        full_ids = torch.cat([ids, new], 1)
        full_mask = torch.cat([mask, torch.ones(B, steps, dtype=torch.long)], 1)
        expected = hf(full_ids, attention_mask=full_mask, position_ids=hf_positions(full_mask))
    got = torch.cat([first, stepped], 1)
    real = full_mask.bool()
    torch.testing.assert_close(got[real], expected.logits[real], atol=ATOL, rtol=0)


def test_all_ones_mask_and_omitted_step_mask(pair):
    _, ours = pair
    ids, mask = left_padded([9, 5], vocab=ours.config.vocab_size, seed=15)
    with torch.no_grad():
        plain = ours(ids)
        torch.testing.assert_close(
            ours(ids, attention_mask=torch.ones_like(ids)), plain, atol=ATOL, rtol=0
        )
        cache = ours.new_cache(2, 12)
        ours(ids[:, :8], attention_mask=torch.ones(2, 8), cache=cache)
        step = ours(ids[:, 8:], cache=cache)  # no mask on a step: the new token is real
        torch.testing.assert_close(step[:, 0], plain[:, -1], atol=ATOL, rtol=0)

        cache = ours.new_cache(2, 12)
        first = ours(ids[:, :8], attention_mask=mask[:, :8], cache=cache)
        step = ours(ids[:, 8:], cache=cache)
        full = ours(ids, attention_mask=mask)
    real = mask[:, :8].bool()
    torch.testing.assert_close(first[real], full[:, :8][real], atol=ATOL, rtol=0)
    torch.testing.assert_close(step[:, 0], full[:, -1], atol=ATOL, rtol=0)


def test_cache_reorder_swaps_rows(pair):
    _, ours = pair
    ids = random_ids(2, 9, vocab=ours.config.vocab_size, seed=14)
    with torch.no_grad():
        cache = ours.new_cache(2, 10)
        ours(ids[:, :8], cache=cache)
        cache.reorder(torch.tensor([1, 0]))
        step = ours(ids[:, 8:9].flip(0), cache=cache)
        full = ours(ids.flip(0))
    torch.testing.assert_close(step[:, 0], full[:, -1], atol=ATOL, rtol=0)


# --- context length --------------------------------------------------------------------------


def test_forward_beyond_context_raises_with_both_lengths(pair):
    _, ours = pair
    n = ours.config.n_positions
    with pytest.raises(GenerationError, match=rf"\b{n + 1}\b.*\b{n}\b"):
        ours(torch.zeros(1, n + 1, dtype=torch.long))


def test_cached_step_beyond_context_raises(pair):
    _, ours = pair
    n = ours.config.n_positions
    cache = ours.new_cache(1, n + 8)
    with torch.no_grad():
        ours(torch.zeros(1, n, dtype=torch.long), cache=cache)
        with pytest.raises(GenerationError, match=rf"\b{n + 1}\b.*\b{n}\b"):
            ours(torch.zeros(1, 1, dtype=torch.long), cache=cache)
