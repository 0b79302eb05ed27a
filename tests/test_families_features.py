"""Everything lmgen does runs on the new families: every decoding method, batches with left
padding (each row as alone), speculative decoding, half precision and int8, the compiled step,
scoring, the attention plot, the server's KV budget; the embedding plot says why it has nothing
to show for rotary models."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmgen  # noqa: E402
from lmgen.errors import ConfigError  # noqa: E402
from lmgen.tokenizers import BPETokenizer  # noqa: E402
from test_families import _hf_model  # noqa: E402

transformers.logging.set_verbosity_error()
PROMPTS = ["to be or not", "whether 'tis nobler in the"]


@pytest.fixture(scope="module", params=["gemma3-local-global", "llama-gqa6:2-bias-llama3"])
def lm(request, tmp_path_factory):
    tok = BPETokenizer.train(
        texts=["to be or not to be, that is the question. " * 40, "whether 'tis nobler"],
        vocab_size=300,
    )
    d = tmp_path_factory.mktemp("m")
    _hf_model(request.param, tok).save_pretrained(d)
    tok.save(d)
    return lmgen.load(d)


@pytest.mark.parametrize(
    "kw",
    [
        dict(strategy="sample", seed=1, top_p=0.9, temperature=0.8),
        dict(penalty_alpha=0.6, top_k=4),
        dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5),
        dict(repetition_penalty=1.3, no_repeat_ngram_size=2),
        dict(strategy="sample", seed=3, min_p=0.1, typical_p=0.9),
    ],
)
def test_every_method_runs_and_a_batch_equals_each_row_alone(lm, kw):
    batch = lm.generate(PROMPTS, max_new_tokens=8, min_new_tokens=8, **kw)
    for prompt, res in zip(PROMPTS, batch, strict=True):
        alone = lm.generate(prompt, max_new_tokens=8, min_new_tokens=8, **kw)
        assert res.choices[0].token_ids == alone.choices[0].token_ids
        assert len(alone.choices[0].token_ids) == 8


def test_speculative_with_itself_as_draft_is_lossless(lm):
    plain = lm.generate(PROMPTS[0], max_new_tokens=12, min_new_tokens=12)
    spec = lm.generate(PROMPTS[0], max_new_tokens=12, min_new_tokens=12, draft=lm)
    assert spec.choices[0].token_ids == plain.choices[0].token_ids


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_stay_close(lm, dtype):
    half = lmgen.load(lm.path, dtype=dtype)
    ids = torch.tensor([lm.tokenizer.encode(PROMPTS[1])])
    with torch.no_grad():
        ref, got = lm.model(ids), half.model(ids).float()
    assert (ref - got).abs().max().item() < 0.05 * ref.abs().max().item()


def test_int8_keeps_the_argmax_mostly(lm):
    q = lmgen.load(lm.path, quantize="int8")
    ids = torch.tensor([lm.tokenizer.encode(PROMPTS[1])])
    with torch.no_grad():
        agree = (lm.model(ids).argmax(-1) == q.model(ids).argmax(-1)).float().mean().item()
    assert agree >= 0.8


@pytest.mark.slow
def test_compiled_step_equals_eager(lm):
    from lmgen.compile import compile_decode_step

    step = compile_decode_step(lm.model)
    ids = torch.tensor([lm.tokenizer.encode("to be or not to be, that")])
    with torch.no_grad():
        c1, c2 = lm.model.new_cache(1, 32), lm.model.new_cache(1, 32)
        lm.model(ids[:, :3], cache=c1)
        lm.model(ids[:, :3], cache=c2)
        for i in range(3, ids.shape[1]):
            a = lm.model(ids[:, i : i + 1], cache=c1)
            b = step(ids[:, i : i + 1], cache=c2)
            assert (a - b).abs().max().item() < 1e-4


def test_kv_budget_is_the_real_cache_size(lm):
    """The server's per-position estimate holds the KV cache as allocated (key/value heads
    only under grouped-query attention) plus the activations' share."""
    from lmgen.server.budget import ACTIVATION_VALUES_PER_EMBD, bytes_per_position

    cache = lm.model.new_cache(1, 10)
    kv_bytes = (cache.k.numel() + cache.v.numel()) * cache.k.element_size() // 10
    activations = ACTIVATION_VALUES_PER_EMBD * lm.config.n_embd * 4
    assert lm.config.kv_heads < lm.config.n_head
    assert bytes_per_position(lm) == kv_bytes + activations


def test_attention_plot_data_and_embedding_plot_refusal(lm):
    from lmgen.plots.embeddings import embedding_data

    with pytest.raises(ConfigError, match="RoPE"):
        embedding_data(lm, "to be")
    _, weights = lm.model(torch.tensor([lm.tokenizer.encode(PROMPTS[1])]), output_attentions=True)
    assert len(weights) == lm.config.n_layer
    rows = weights[0][0].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
