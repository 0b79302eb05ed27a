"""lmgen.model.gguf.read_gguf against transformers' own GGUF loader and gguf's dequantizer.

Fast tests write tiny GGUF files of each architecture here (random tensors, every supported
tensor type) and check the dequantized values against `gguf.quants.dequantize`, the names and
layouts against transformers' loader (`load_gguf_checkpoint` for what it supports, gguf's own
tensor-name map for the rest), the tokenizer against `AutoTokenizer(gguf_file=...)`, and each
bad file's one-line error. Slow tests read the real SmolLM2 and Gemma 3 files
(tests/real_models.py) and compare every tensor, the config, the tokenizer and the chat template
with transformers'.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmgen.errors import ModelLoadError
from lmgen.model.gguf import ARCHITECTURES, TENSOR_TYPES, hf_name, read_gguf

gguf = pytest.importorskip("gguf")

MIXED_TEXT = (
    "Hello world! Ünïcödé café — naïve. Привет, как дела? 你好，世界。こんにちは 🙂🚀👍🏽\n\n"
    "    def f(x):\n\treturn x**2  # code\n   spaces   and\ttabs\r\n"
    "<|im_start|>user\n1234567 3.14159 don't I'll"
)


# --- real models (slow) -----------------------------------------------------------------------


def _hf_value(config, key):
    """A config field as transformers 5 keeps it (rope values moved into rope_parameters)."""
    rope = getattr(config, "rope_parameters", None) or {}
    if key == "rope_theta":
        return rope.get("full_attention", rope).get("rope_theta")
    if key == "rope_local_base_freq":
        return rope["sliding_attention"]["rope_theta"]
    return getattr(config, key)


def _compare_with_transformers(path, fields, prompts):
    transformers = pytest.importorskip("transformers")
    ours = read_gguf(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    theirs = model.state_dict()
    # a tied head is the embedding itself in transformers' state_dict
    expected = set(theirs) - (
        {"lm_head.weight"} if ours.hf_config["tie_word_embeddings"] else set()
    )
    assert set(ours.tensors) == expected
    for name, tensor in ours.tensors.items():
        assert tensor.shape == theirs[name].shape, name
        assert torch.allclose(tensor.float(), theirs[name].float(), rtol=0, atol=1e-6), name
    for key in fields:
        want, got = _hf_value(model.config, key), ours.hf_config[key]
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, key
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in [MIXED_TEXT, *prompts]:
        assert ours.tokenizer.encode(text) == tok(text)["input_ids"], text
    assert ours.tokenizer.decode(ours.tokenizer.encode(MIXED_TEXT)) == tok.decode(
        tok(MIXED_TEXT)["input_ids"]
    )
    assert ours.chat_template == tok.chat_template
    return ours


LLAMA_FIELDS = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "hidden_act",
    "attention_bias",
]


@pytest.mark.slow
def test_smollm2_gguf_equals_transformers():
    from real_models import smollm2_gguf

    prompts = [
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWrite a haiku about the sea, then translate it into French."
        "<|im_end|>\n<|im_start|>assistant\n",
    ]
    ours = _compare_with_transformers(smollm2_gguf(), LLAMA_FIELDS, prompts)
    assert ours.chat_template and "<|im_start|>" in ours.chat_template
    assert ours.generation["eos_token_id"] == 2


@pytest.mark.slow
def test_gemma3_gguf_equals_transformers():
    from real_models import gemma3_gguf

    fields = [f for f in LLAMA_FIELDS if f not in ("hidden_act",)] + [
        "hidden_activation",
        "sliding_window",
        "layer_types",
        "query_pre_attn_scalar",
        "rope_local_base_freq",
        "final_logit_softcapping",
        "attn_logit_softcapping",
    ]
    prompts = [
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    ]
    _compare_with_transformers(gemma3_gguf(), fields, prompts)


# --- tiny files written here ------------------------------------------------------------------

CORPUS = [
    MIXED_TEXT,
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "def main():\n    print('hello')\n    return 0\n",
    "Москва — столица России. 北京是中国的首都。 東京は日本の首都です。 🙂🙂",
    "the there then them these those this that than thin thing think",
]
H, HEADS, KV, FF, LAYERS = 256, 4, 2, 512, 2
# per-head width; transformers' GGUF config reader ignores qwen3's attention.key_length and
# takes Qwen3Config's default head_dim (128, every released Qwen3's), so the file uses that
HEAD_DIMS = {"qwen3": 128, "gemma3": 96}
HD = 64
# transformers reads gpt2's context_length as n_ctx only, leaving n_positions at GPT2Config's
# 1024, so the tiny GPT-2's position table has GPT-2's length
CONTEXT = {"gpt2": 1024}


def _byte_level_vocab(extra_special=("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    """(tokens in GGUF's byte-level spelling, token types, merges) of a small trained BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=list(extra_special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    import json

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [3 if t in extra_special else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


def _sentencepiece_vocab(specials):
    """(tokens, scores, types) of a small SentencePiece-style BPE vocabulary: the special
    tokens, 256 byte tokens <0xNN>, then pieces learned by a BPE over "▁"-joined words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=500, show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    pieces = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = list(specials) + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [p for p in pieces if p not in tokens] + ["  ", "\n\n"]
    scores = [0.0] * (len(specials) + 256) + [
        -float(i) for i in range(len(tokens) - len(specials) - 256)
    ]
    types = [3] * len(specials) + [6] * 256 + [1] * (len(tokens) - len(specials) - 256)
    return tokens, scores, types


def _quantized(arr: np.ndarray, kind: str, rng):
    """(raw data, ggml type) for `arr` in ggml type `kind`; K-quants, which gguf cannot
    quantize, get random blocks with small float16 scales."""
    qt = gguf.GGMLQuantizationType[kind]
    if kind == "F32":
        return arr.astype(np.float32), None
    if kind == "F16":
        return arr.astype(np.float16), None
    if kind.endswith("_K"):
        block, size = gguf.GGML_QUANT_SIZES[qt]
        rows, cols = arr.shape
        raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
        scale = rng.uniform(0.001, 0.02, size=(rows, cols // block, 2)).astype(np.float16)
        # where each K-quant block keeps its float16 scale(s) (ggml-common.h's block_q*_K)
        at = {"Q2_K": (80, 84), "Q3_K": (108, 110), "Q6_K": (208, 210)}.get(kind, (0, 4))
        raw[..., at[0] : at[1]] = scale[..., : (at[1] - at[0]) // 2].view(np.uint8)
        return raw.reshape(rows, -1), qt
    return gguf.quants.quantize(arr.astype(np.float32), qt), qt


def _tensor_shapes(arch: str, vocab: int, tied: bool) -> dict[str, tuple]:
    """GGUF name -> numpy shape (rows, cols), as llama.cpp's converter writes each family."""
    shapes = {"token_embd.weight": (vocab, H)}
    if not tied:
        shapes["output.weight"] = (vocab, H)
    if arch in ("gpt2", "gptneox"):
        ff = 4 * H if arch == "gpt2" else FF
        shapes.update({"output_norm.weight": (H,), "output_norm.bias": (H,)})
        if arch == "gpt2":
            shapes["position_embd.weight"] = (CONTEXT[arch], H)
        for i in range(LAYERS):
            for part, shape in {
                "attn_norm": (H,),
                "attn_qkv": (3 * H, H),
                "attn_output": (H, H),
                "ffn_norm": (H,),
                "ffn_up": (ff, H),
                "ffn_down": (H, ff),
            }.items():
                shapes[f"blk.{i}.{part}.weight"] = shape
                shapes[f"blk.{i}.{part}.bias"] = (shape[0],)
        return shapes
    shapes["output_norm.weight"] = (H,)
    HD = HEAD_DIMS.get(arch, 64)  # noqa: N806
    for i in range(LAYERS):
        block = {
            "attn_norm.weight": (H,),
            "attn_q.weight": (HEADS * HD, H),
            "attn_k.weight": (KV * HD, H),
            "attn_v.weight": (KV * HD, H),
            "attn_output.weight": (H, HEADS * HD),
            "ffn_norm.weight": (H,),
            "ffn_gate.weight": (FF, H),
            "ffn_up.weight": (FF, H),
            "ffn_down.weight": (H, FF),
        }
        if arch == "qwen2":
            block.update(
                {"attn_q.bias": (HEADS * HD,), "attn_k.bias": (KV * HD,), "attn_v.bias": (KV * HD,)}
            )
        if arch in ("qwen3", "gemma3"):
            block.update({"attn_q_norm.weight": (HD,), "attn_k_norm.weight": (HD,)})
        if arch == "gemma3":
            block.update({"post_attention_norm.weight": (H,), "post_ffw_norm.weight": (H,)})
        shapes.update({f"blk.{i}.{k}": v for k, v in block.items()})
    return shapes


def write_tiny_gguf(path, arch: str, kinds=("Q8_0", "F16", "F32"), tied=True, seed=0):
    """A tiny random model of `arch` with tokenizer metadata; 2-d weights cycle through
    `kinds`, 1-d ones are F32. Returns {GGUF name: (raw data, ggml type or None)}."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {arch}")
    if arch == "gemma3":
        specials = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<mask>",
            "<start_of_turn>",
            "<end_of_turn>",
        ]
        tokens, scores, types = _sentencepiece_vocab(specials)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
    elif arch == "qwen3":  # a SentencePiece-style vocabulary with scores and no merges
        tokens, scores, types = _sentencepiece_vocab(["<unk>", "<s>", "</s>"])
        types[0] = 2
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    else:
        tokens, types, merges = _byte_level_vocab()
        pre = {"llama": "llama-bpe", "qwen2": "qwen2", "gpt2": "gpt-2", "gptneox": "gpt-2"}[arch]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
        w.add_eos_token_id(2 if arch != "gpt2" else 0)
        w.add_add_bos_token(arch == "llama")
        w.add_chat_template(
            "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"
        )
    vocab = len(tokens)
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT.get(arch, 64))
    w.add_embedding_length(H)
    w.add_head_count(HEADS)
    if arch in ("gpt2", "gptneox"):
        w.add_feed_forward_length(4 * H if arch == "gpt2" else FF)
        w.add_layer_norm_eps(1e-5)
        if arch == "gptneox":
            w.add_rope_dimension_count(HD // 4)
            w.add_rope_freq_base(10000.0)
            w.add_parallel_residual(True)
    else:
        w.add_feed_forward_length(FF)
        w.add_head_count_kv(KV)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_freq_base(500000.0 if arch != "gemma3" else 1000000.0)
        w.add_vocab_size(vocab)
        if arch == "llama":
            w.add_rope_dimension_count(HD)
        else:
            w.add_key_length(HEAD_DIMS.get(arch, HD))
            w.add_value_length(HEAD_DIMS.get(arch, HD))
        if arch == "gemma3":
            w.add_sliding_window(16)
    written = {}
    i = 0
    for name, shape in _tensor_shapes(arch, vocab, tied).items():
        arr = rng.standard_normal(shape).astype(np.float32) * 0.1
        if len(shape) == 1:
            arr = arr + 1.0 if name.endswith("norm.weight") else arr
            raw, qt = arr, None
        else:
            raw, qt = _quantized(arr, kinds[i % len(kinds)], rng)
            i += 1
        if qt is None:
            w.add_tensor(name, raw)
        else:
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qt)
        written[name] = (raw, qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def _reference(raw, qt) -> np.ndarray:
    """What gguf's own dequantizer makes of the data written."""
    if qt is None:
        return np.asarray(raw, dtype=np.float32)
    return gguf.quants.dequantize(raw, qt).astype(np.float32)


UNTRANSFORMED = (
    "attn_v.weight",
    "ffn_down.weight",
    "ffn_up.weight",
    "token_embd.weight",
    "output.weight",
)


@pytest.mark.parametrize("kind", TENSOR_TYPES)
def test_each_tensor_type_reads_as_gguf_dequantizes_it(tmp_path, kind):
    path = tmp_path / "m.gguf"
    written = write_tiny_gguf(path, "llama", kinds=(kind,), tied=False)
    m = read_gguf(path)
    want_dtype = {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind, torch.float32)
    checked = 0
    for name, (raw, qt) in written.items():
        ours = m.tensors[hf_name("llama", name)]
        if len(ours.shape) == 2:
            assert ours.dtype == want_dtype, name
        if name.endswith(UNTRANSFORMED):
            ref = torch.from_numpy(_reference(raw, qt))
            assert ours.shape == ref.shape, name
            assert torch.equal(ours.float(), ref), name
            checked += 1
    assert checked == 2 + 4 * LAYERS  # attn_output too


TRANSFORMERS_ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "gpt2")


@pytest.mark.parametrize("arch", TRANSFORMERS_ARCHS)
def test_tiny_gguf_equals_transformers_loader(tmp_path, arch):
    """Names, layouts (q/k permutation, Gemma's 1 + w, GPT-2's Conv1D), config and tokenizer
    against transformers' GGUF loader on the same file."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, arch, tied=arch != "qwen2")
    ours = read_gguf(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32
    )
    theirs = model.state_dict()
    tied = ours.hf_config["tie_word_embeddings"]
    assert tied == (arch != "qwen2")
    assert set(ours.tensors) == set(theirs) - ({"lm_head.weight"} if tied else set())
    for name, tensor in ours.tensors.items():
        assert torch.equal(tensor.float(), theirs[name].float()), name
    keys = (
        "vocab_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "hidden_size",
        "max_position_embeddings",
    )
    if arch == "gpt2":
        keys = ("vocab_size", "n_layer", "n_head", "n_embd", "n_positions")
    for key in keys:
        if arch == "qwen2" and key == "head_dim":  # not a Qwen2 config.json key
            assert key not in ours.hf_config
            continue
        assert ours.hf_config[key] == getattr(model.config, key), key
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in (MIXED_TEXT, "<|im_start|>user\nhi there<|im_end|>", " leading space", ""):
        assert ours.tokenizer.encode(text) == tok(text)["input_ids"], (arch, text)
    ids = ours.tokenizer.encode(MIXED_TEXT)
    assert ours.tokenizer.decode(ids) == tok.decode(ids)
    assert ours.chat_template == tok.chat_template
    # saved as a Hugging Face directory (lm.save of a GGUF model): transformers reads it back
    ours.tokenizer.save(tmp_path / "saved")
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    for text in (MIXED_TEXT, "<|im_start|>user\nhi there<|im_end|>", " leading space"):
        assert again(text)["input_ids"] == tok(text)["input_ids"], (arch, text)
    assert again.chat_template == tok.chat_template


# --- names against gguf's own map; GPT-NeoX's layout ------------------------------------------

HF_CONFIGS = {
    "llama": ("LlamaConfig", {"attention_bias": True}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 48}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 48}),
    "gpt2": ("GPT2Config", {}),
    "gptneox": ("GPTNeoXConfig", {"rotary_pct": 0.25}),
}


def _tiny_hf_model(arch, tied=False, vocab=50):
    transformers = pytest.importorskip("transformers")
    cls, extra = HF_CONFIGS[arch]
    if arch == "gpt2":
        kw = dict(n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=vocab)
    else:
        kw = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=40,
            vocab_size=vocab,
            max_position_embeddings=16,
        )
        if arch != "gptneox":
            kw["num_key_value_heads"] = 2
    config = getattr(transformers, cls)(**kw, **extra, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3", "gpt2", "gptneox"])
def test_tensor_names_agree_with_gguf_name_map(arch):
    """gguf's TensorNameMap (llama.cpp's converter's HF -> GGUF table) maps every tensor of a
    transformers model to the GGUF name that hf_name maps back to it."""
    model = _tiny_hf_model(arch)
    gguf_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    table = gguf.get_tensor_name_map(gguf_arch, 2)
    names = [n for n in model.state_dict() if not n.endswith((".attn.bias", ".masked_bias"))]
    for name in names:
        stem, kind = name.rsplit(".", 1)
        theirs = table.get_name(stem)
        assert theirs is not None, name
        # transformers 5 names NeoX's head lm_head; its checkpoints (pythia's) say embed_out
        want = "embed_out.weight" if (arch, name) == ("gptneox", "lm_head.weight") else name
        assert hf_name(arch, f"{theirs}.{kind}") == want, (name, theirs)


def test_gptneox_fused_qkv_round_trips_llama_cpp_layout(tmp_path):
    """llama.cpp's converter regroups NeoX's per-head [q_h, k_h, v_h] rows into [q; k; v]
    (GPTNeoXModel.modify_tensors); read_gguf must restore HF's layout, bias included."""
    tokens, types, merges = _byte_level_vocab()
    model = _tiny_hf_model("gptneox", vocab=len(tokens))
    sd, cfg = model.state_dict(), model.config
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPTNEOX, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(tmp_path / "n.gguf"), "gptneox")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    rotary_pct = cfg.rope_parameters["partial_rotary_factor"]
    w.add_rope_dimension_count(int(rotary_pct * hidden // heads))
    w.add_parallel_residual(True)
    w.add_layer_norm_eps(cfg.layer_norm_eps)
    sd_names = {}
    for name, t in sd.items():
        if name.endswith((".attn.bias", ".masked_bias")) or "rotary" in name:
            continue
        stem, kind = name.rsplit(".", 1)
        t = t.float()
        if "query_key_value" in name:  # the converter's regrouping, written out here
            per_head = t.reshape(heads, 3, hidden // heads, *t.shape[1:])
            t = torch.cat([per_head[:, i].reshape(-1, *t.shape[1:]) for i in range(3)])
        w.add_tensor(f"{table.get_name(stem)}.{kind}", t.numpy())
        sd_names[name.replace("lm_head.", "embed_out.")] = t
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = read_gguf(tmp_path / "n.gguf")
    assert set(ours.tensors) == set(sd_names)
    for name in sd_names:
        hf = sd[name.replace("embed_out.", "lm_head.")].float()
        assert torch.equal(ours.tensors[name], hf), name
    c = ours.hf_config
    assert (c["model_type"], c["rotary_pct"], c["use_parallel_residual"]) == (
        "gpt_neox",
        0.25,
        True,
    )
    assert c["tie_word_embeddings"] is False and c["vocab_size"] == len(tokens)


# --- bad files: one line each, before any tensor is read --------------------------------------


def _one_line_error(path, match):
    with pytest.raises(ModelLoadError, match=match) as e:
        read_gguf(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "a.gguf").write_text('{"model_type": "llama"}')
    _one_line_error(tmp_path / "a.gguf", "not a GGUF file")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _one_line_error(tmp_path / "empty.gguf", "not a GGUF file")
    _one_line_error(tmp_path / "missing.gguf", "no such file")


def test_truncated_gguf_file(tmp_path):
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, "llama")
    data = path.read_bytes()
    for keep in (len(data) * 3 // 4, 200, 6):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        _one_line_error(cut, "truncated")


def test_unsupported_tensor_type_named_before_any_dequantization(tmp_path, monkeypatch):
    # a tiny file whose Q4_K tensors are relabelled IQ4_XS in their tensor info (both have
    # 256-element blocks): the reader sees IQ4_XS, which lmgen does not read
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, "llama", kinds=("Q4_K", "F32"))
    reader = gguf.GGUFReader(str(path), "r+")
    q4k, q2k = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.IQ4_XS
    for t in reader.tensors:
        if t.tensor_type == q4k:
            t.field.parts[-2][...] = q2k  # the tensor info's type field
    reader.data.flush()
    del reader
    monkeypatch.setattr(gguf.quants, "dequantize", lambda *a: pytest.fail("dequantized"))
    msg = _one_line_error(path, "type IQ4_XS")
    assert "supported: " + ", ".join(TENSOR_TYPES) in msg


def test_unsupported_architecture_names_it_and_the_list(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    msg = _one_line_error(tmp_path / "m.gguf", "'mamba' is not supported")
    assert ", ".join(ARCHITECTURES) in msg


def _relabel(path, out, rename=None, tokenizer_model=None):
    """A copy of a GGUF file with one tensor renamed or another tokenizer model, written by
    gguf's writer from what gguf's reader reads."""
    r = gguf.GGUFReader(str(path))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(str(out), arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = f.contents()
        if name == "tokenizer.ggml.model" and tokenizer_model:
            value = tokenizer_model
        kind = f.types[0]
        sub = f.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, value, kind, sub_type=sub)
    for t in r.tensors:
        name = (rename or {}).get(t.name, t.name)
        w.add_tensor(name, np.asarray(t.data), raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_unexpected_tensor_and_unsupported_tokenizer_are_named(tmp_path):
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, "llama", kinds=("F32",))
    assert read_gguf(_relabel(path, tmp_path / "same.gguf")).hf_config["num_hidden_layers"] == 2
    odd = _relabel(
        path, tmp_path / "odd.gguf", rename={"blk.1.ffn_up.weight": "blk.1.ffn_up_exps.weight"}
    )
    _one_line_error(odd, "unexpected tensor blk.1.ffn_up_exps.weight for architecture llama")
    bert = _relabel(path, tmp_path / "bert.gguf", tokenizer_model="bert")
    msg = _one_line_error(bert, "tokenizer model 'bert' is not supported")
    assert "gpt2, llama" in msg


def test_a_header_claiming_a_huge_tensor_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, "llama", kinds=("F32",))
    reader = gguf.GGUFReader(str(path), "r+")
    for claim, match in (
        ((1 << 20), "truncated GGUF file: tensor token_embd.weight"),
        ((1 << 50), "a dimension of"),
    ):
        t = next(t for t in reader.tensors if t.name == "token_embd.weight")
        t.field.parts[3][-1] = claim  # the rows of the embedding, as the header states them
        reader.data.flush()
        _one_line_error(path, match)
