"""Every family against transformers on random tiny models with odd shapes: the same logits
(1e-4), the same greedy and beam sequences, sharded bf16 checkpoints, and save -> transformers.
Slow: the real SmolLM2-135M-Instruct and Gemma 3 270M GGUFs against transformers' GGUF loader."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmgen  # noqa: E402
from lmgen.errors import ModelLoadError  # noqa: E402
from lmgen.model import GPT  # noqa: E402
from lmgen.model.families import state_shapes  # noqa: E402
from lmgen.tokenizers import BPETokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
V = 300
COMMON = dict(vocab_size=V, max_position_embeddings=128, initializer_range=0.2)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}  # fmt: skip

# name -> (config class, kwargs): GQA 6:2 and 4:1, head_dim != hidden/heads, untied heads,
# windows shorter than the prompt, partial rotary, q/k/v bias, QK-norm, each rope scaling
CASES = {
    "llama-gqa6:2-bias-llama3": ("LlamaConfig", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, attention_bias=True, mlp_bias=True, rope_scaling=LLAMA3)),
    "llama-mqa4:1-headdim-linear": ("LlamaConfig", dict(
        hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama-yarn-tied": ("LlamaConfig", dict(
        hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=True,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral-window5": ("MistralConfig", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=5)),
    "qwen2-bias-tied-mixed-window": ("Qwen2Config", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=True,
        sliding_window=6, max_window_layers=1)),
    "qwen3-qknorm-headdim": ("Qwen3Config", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16)),
    "gemma3-local-global": ("Gemma3TextConfig", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "neox-parallel-partial-rotary": ("GPTNeoXConfig", dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.5)),
    "neox-sequential": ("GPTNeoXConfig", dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        rotary_pct=0.25, use_parallel_residual=False)),
}  # fmt: skip
PROMPT = "to be or not to be, that is the question: whether 'tis nobler in the mind"


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(
        texts=["to be or not to be, that is the question. " * 40, "whether 'tis nobler"],
        vocab_size=V,
    )


def _hf_model(name, tokenizer):
    cls, kw = CASES[name]
    cfg = getattr(transformers, cls)(**COMMON, **kw, eos_token_id=tokenizer.eos_token_id,
                                     bos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tokenizer, tmp_path_factory):
    hf = _hf_model(request.param, tokenizer)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    tokenizer.save(d)
    return lmgen.load(d), hf, d


def test_logits_equal_transformers(pair):
    lm, hf, _ = pair
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    assert ids.shape[1] > 6  # longer than every window above
    with torch.no_grad():
        ours, theirs = lm.model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_cached_decode_equals_full_forward(pair):
    """Prefill then one token a step through the KV cache (windows, GQA, rope offsets) gives
    the full forward's last-position logits."""
    lm, _, _ = pair
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        full = lm.model(ids)
        cache = lm.model.new_cache(1, ids.shape[1])
        steps = [lm.model(ids[:, :4], cache=cache)[:, -1]]
        for i in range(4, ids.shape[1]):
            steps.append(lm.model(ids[:, i : i + 1], cache=cache)[:, -1])
    assert (torch.stack(steps[1:], 1) - full[:, 4:]).abs().max().item() < 1e-4


def test_greedy_24_tokens_equal_transformers(pair):
    lm, hf, _ = pair
    prompt_ids = lm.tokenizer.encode(PROMPT)
    x = torch.tensor([prompt_ids])
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                         max_new_tokens=24, min_new_tokens=24, pad_token_id=0)  # fmt: skip
    ours = lm.generate(PROMPT, max_new_tokens=24, min_new_tokens=24)
    assert ours.choices[0].token_ids == theirs[0, len(prompt_ids) :].tolist()


def test_beam_search_equals_transformers(pair):
    lm, hf, _ = pair
    prompt_ids = lm.tokenizer.encode(PROMPT)
    x = torch.tensor([prompt_ids])
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=3,
                         num_return_sequences=2, max_new_tokens=12, min_new_tokens=12,
                         pad_token_id=0)  # fmt: skip
    ours = lm.generate(PROMPT, num_beams=3, num_return_sequences=2, max_new_tokens=12,
                       min_new_tokens=12)  # fmt: skip
    assert [c.token_ids for c in ours.choices] == [s[len(prompt_ids) :].tolist() for s in theirs]


def test_save_then_transformers_gives_the_same_logits(pair, tmp_path):
    lm, _, _ = pair
    lm.save(tmp_path / "saved")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        assert (back(ids).logits.float() - lm.model(ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["qwen2-bias-tied-mixed-window", "gemma3-local-global"])
def test_sharded_bf16_checkpoint_loads(name, tokenizer, tmp_path):
    hf = _hf_model(name, tokenizer).to(torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size="30KB")
    tokenizer.save(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    lm = lmgen.load(tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        assert (ref.eval()(ids).logits - lm.model(ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_by_arithmetic_match_the_network(name, tokenizer):
    """families.state_shapes (checked against file headers before allocation) is the
    network's own state dict."""
    lm_cfg = lmgen.checkpoint.config_from_hf(_hf_model(name, tokenizer).config.to_dict())
    with torch.device("meta"):
        real = {k: tuple(v.shape) for k, v in GPT(lm_cfg).state_dict().items()}
    assert state_shapes(lm_cfg) == real


def test_gemma3_multimodal_checkpoint_loads_its_text_model(tokenizer, tmp_path):
    """model_type "gemma3" (Gemma3ForConditionalGeneration): the text model under
    text_config and language_model.*, the vision tower and projector left aside."""
    text = dict(CASES["gemma3-local-global"][1], vocab_size=V, max_position_embeddings=128,
                initializer_range=0.2)  # fmt: skip
    # (Gemma 3 ships no final soft cap; Gemma3ForConditionalGeneration would not apply one)
    text.pop("final_logit_softcapping")
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    image_token_index=299, boi_token_index=297,
                                    eoi_token_index=298)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.Gemma3ForConditionalGeneration(cfg).eval()
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    lm = lmgen.load(tmp_path)
    assert lm.config.model_type == "gemma3_text"
    ids = torch.tensor([lm.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - lm.model(ids)).abs().max().item() < 1e-4


def test_unsupported_model_type_names_it_and_the_list(pair, tmp_path):
    _, _, d = pair
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"'mamba'.*gemma3_text.*gpt2.*gpt_neox.*llama"):
        lmgen.load(tmp_path)


def test_shape_mismatch_names_the_tensor(tokenizer, tmp_path):
    hf = _hf_model("qwen3-qknorm-headdim", tokenizer)
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape"):
        lmgen.load(tmp_path)


def test_generation_config_defaults_as_transformers_takes_them(tokenizer, tmp_path):
    """generation_config.json: every EOS id ends a sequence; do_sample with its settings is the
    default decoding, key by key under the caller's own values."""
    hf = _hf_model("llama-gqa6:2-bias-llama3", tokenizer)
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    gen = {"do_sample": True, "temperature": 0.7, "top_k": 5, "eos_token_id": [7, 9],
           "repetition_penalty": 1.2}  # fmt: skip
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    lm = lmgen.load(tmp_path)
    assert {7, 9} <= set(lm.eos_token_ids)
    kw = dict(max_new_tokens=10, min_new_tokens=10, seed=3)
    explicit = lm.generate(PROMPT, strategy="sample", temperature=0.7, top_k=5,
                           repetition_penalty=1.2, **kw)  # fmt: skip
    assert lm.generate(PROMPT, **kw).choices[0].token_ids == explicit.choices[0].token_ids
    greedy = lm.generate(PROMPT, strategy="greedy", repetition_penalty=1.2, max_new_tokens=10,
                         min_new_tokens=10)  # fmt: skip
    assert (
        lm.generate(PROMPT, temperature=0, max_new_tokens=10, min_new_tokens=10)
        .choices[0]
        .token_ids
        == greedy.choices[0].token_ids
    )


def test_not_a_gguf_file_is_one_line(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match=r"x\.gguf: not a GGUF file") as info:
        lmgen.load(bad)
    assert "\n" not in str(info.value)


# --- real models (slow): the GGUF files on PyPI ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_real_gguf_equals_transformers(which):
    import real_models

    path = real_models.smollm2_gguf() if which == "smollm2" else real_models.gemma3_gguf()
    lm = lmgen.load(path, quantize="none")  # float weights: transformers dequantizes them
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    htok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    mixed = "Hello, world! Привет мир — 你好，世界 🤖 def f(x):\n    return x**2  \t end"
    assert lm.tokenizer.encode(mixed) == htok(mixed)["input_ids"]
    for prompt in ("The capital of France is", "def fibonacci(n):"):
        ids = htok(prompt)["input_ids"]
        assert lm.tokenizer.encode(prompt) == ids
        x = torch.tensor([ids])
        with torch.no_grad():
            assert (hf(x).logits - lm.model(x)).abs().max().item() < 1e-3
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=16, min_new_tokens=16)  # fmt: skip
        ours = lm.generate(prompt, max_new_tokens=16, min_new_tokens=16)
        assert ours.choices[0].token_ids == theirs[0, len(ids) :].tolist()
