"""GGUF export: a model written as a GGUF file llama.cpp runs.

Two writers. `write_gguf(model, ...)` takes an lmgen model: GPT-2-family models go out as
llama.cpp's `gpt2` architecture (below); every other family goes through its Hugging Face form
(`checkpoint.config_to_hf`, `checkpoint.state_dict_to_hf`) to `write_gguf_hf`. That one takes a
transformers-style config dict and HF-named tensors and writes what llama.cpp's converter
(convert_hf_to_gguf.py) writes for llama (Llama, Mistral, SmolLM2), qwen2, qwen3, gemma3, gpt2
and gptneox: the metadata keys, the tensor names and layouts (lmgen.model.gguf's inverse), and
the tokenizer (byte-level BPE as `gpt2`, SentencePiece-style BPE as `llama`), so
`lmgen.model.gguf.read_gguf` and transformers read back the same config, tensors and ids.

The `gguf` package (llama.cpp's own writer) is a dependency of lmgen, imported on first use.

For GPT-2, 2-d weights go in float32, float16 or q8_0 (llama.cpp's 8-bit blocks:
32 weights share one float16 scale, quantized by gguf's own `quants.quantize`, the code behind
llama.cpp's converter's `--outtype q8_0`); norms, biases and the position table stay float32,
as that converter writes them.

Given a byte-level BPE tokenizer (the bundled model's, GPT-2's), the file carries its
vocabulary, merges and end-of-text token, so llama.cpp tokenizes text as lmgen does (GPT-2's
pre-tokenizer, `tokenizer.ggml.pre = "gpt-2"`). Other tokenizers (word, character) have no
GGUF form: the file then carries a placeholder vocabulary (`<0>`, `<1>`, ...), enough for
`llama-bench`, which decodes token ids and never tokenizes text; llama.cpp's BPE loader still
asks for at least one merge and for bos/eos ids, which are placeholders too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

GGUF_DTYPES = {"float32": torch.float32, "float16": torch.float16, "q8_0": "q8_0"}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError(
            "writing GGUF needs the gguf package: pip install gguf (or lmgen[gguf])"
        ) from None
    return gguf


def _tensors(model) -> dict[str, torch.Tensor]:
    """GGUF names -> tensors, (out, in) weights as llama.cpp's gpt2 loader expects them."""
    sd = model.state_dict()
    out = {
        "token_embd.weight": sd["wte.weight"],
        "position_embd.weight": sd["wpe.weight"],
        "output_norm.weight": sd["ln_f.weight"],
        "output_norm.bias": sd["ln_f.bias"],
    }
    if not model.config.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {
        "ln_1": "attn_norm",
        "attn.c_attn": "attn_qkv",
        "attn.c_proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }
    for i in range(model.config.n_layer):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"blk.{i}.{theirs}.{kind}"] = sd[f"h.{i}.{ours}.{kind}"]
    return out


def bpe_vocabulary(tokenizer, n_vocab: int) -> tuple[list[str], list[str], list[str]] | None:
    """(tokens, kinds, merges) of a byte-level BPE tokenizer, padded to the model's `n_vocab`
    rows; kinds are "normal", "control" (special tokens) and "unused" (padding). None when
    the tokenizer is not byte-level BPE."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or getattr(tokenizer, "kind", None) not in ("bpe", "pretrained"):
        return None
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        return None
    if not pre.get("use_regex", True):  # without GPT-2's split, llama.cpp's "gpt-2" differs
        return None
    size = backend.get_vocab_size(with_added_tokens=True)
    if size > n_vocab:
        raise ConfigError(
            f"the tokenizer has {size} tokens but the model only {n_vocab} embedding rows",
            "tokenizer",
        )
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    tokens, kinds = [], []
    for i in range(n_vocab):
        piece = backend.id_to_token(i) if i < size else None
        tokens.append(piece if piece is not None else f"[PAD{i}]")
        kinds.append("unused" if piece is None else "control" if i in special else "normal")
    merges = []
    for m in model.get("merges") or []:
        pair = m.split(" ") if isinstance(m, str) else list(m)
        if len(pair) != 2 or any(" " in part for part in pair):
            return None  # not the byte-level form ("Ġ" for a space): no GGUF equivalent
        merges.append(" ".join(pair))
    return tokens, kinds, merges


def write_gguf(
    model,
    path: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    tokenizer=None,
    name: str = "lmgen export",
) -> Path:
    """Writes `model` (lmgen GPT) as GGUF; 2-d weights in `dtype` (torch.float32,
    torch.float16, or "q8_0", or one of those names), the vocabulary of `tokenizer` when it is
    byte-level BPE, else a placeholder one. Families other than GPT-2 go through
    `write_gguf_hf`."""
    dtype = GGUF_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not any(dtype is d for d in GGUF_DTYPES.values()):
        raise ConfigError(f"GGUF export supports float32, float16 and q8_0, got {dtype}", "dtype")
    cfg = model.config
    from .quantize import QuantLinear

    blocks = any(isinstance(m, QuantLinear) for m in model.modules())
    if getattr(cfg, "model_type", "gpt2") != "gpt2":
        from .checkpoint import config_to_hf

        if any(getattr(m, "qweight", None) is not None for m in model.modules()):
            raise ConfigError(
                "cannot export an int8-quantized model: load it unquantized", "quantize"
            )
        return write_gguf_hf(config_to_hf(cfg), hf_tensors(model), tokenizer, path, dtype, name)
    if blocks:
        raise ConfigError(
            "cannot export a GPT-2 model holding int4 (Q4_0) blocks: load it unquantized",
            "quantize",
        )
    if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"llama.cpp's gpt2 uses the tanh GELU; this model uses {cfg.activation_function!r}",
            "activation_function",
        )
    if any(getattr(m, "qweight", None) is not None for m in model.modules()):
        raise ConfigError("cannot export an int8-quantized model: load it unquantized", "quantize")
    if dtype == "q8_0" and (cfg.n_embd % 32 or cfg.inner_dim % 32):
        raise ConfigError(
            f"q8_0 packs rows in blocks of 32: n_embd ({cfg.n_embd}) and the MLP width "
            f"({cfg.inner_dim}) must be multiples of 32",
            "dtype",
        )
    gguf = _gguf()
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name(name)
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.inner_dim)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    file_types = {
        torch.float32: gguf.LlamaFileType.ALL_F32,
        torch.float16: gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    w.add_file_type(file_types[dtype])
    w.add_tokenizer_model("gpt2")
    vocab = bpe_vocabulary(tokenizer, cfg.vocab_size) if tokenizer is not None else None
    if vocab is not None:
        tokens, kinds, merges = vocab
        types = {
            "normal": gguf.TokenType.NORMAL,
            "control": gguf.TokenType.CONTROL,
            "unused": gguf.TokenType.UNUSED,
        }
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([types[k] for k in kinds])
        w.add_token_merges(merges or ["<0> <1>"])
        eos = tokenizer.eos_token_id
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        w.add_bos_token_id(0 if bos is None else bos)
        w.add_eos_token_id(0 if eos is None else eos)
    else:
        w.add_tokenizer_pre("default")
        w.add_token_list([f"<{i}>" for i in range(cfg.vocab_size)])
        w.add_token_types([gguf.TokenType.NORMAL] * cfg.vocab_size)
        w.add_token_merges(["<0> <1>"])  # llama.cpp refuses a BPE vocabulary without merges
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for tname, t in _tensors(model).items():
        t = t.detach().float().cpu()
        if t.dim() != 2 or tname == "position_embd.weight" or dtype is torch.float32:
            w.add_tensor(tname, t.contiguous().numpy())
        elif dtype == "q8_0":
            q8 = gguf.GGMLQuantizationType.Q8_0
            packed = gguf.quants.quantize(t.contiguous().numpy(), q8)
            w.add_tensor(tname, packed, raw_shape=packed.shape, raw_dtype=q8)
        else:
            w.add_tensor(tname, t.to(dtype).contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- any family, from its Hugging Face form -----------------------------------------------------


def hf_tensors(model) -> dict:
    """`checkpoint.state_dict_to_hf(model)`, except that the weights of QuantLinear layers come
    out as QuantTensors (their ggml blocks, cut at the checkpoint tensors' rows), and so does
    a GGUF's quantized token embedding (`model.ggml_embedding`) while `wte` still holds exactly
    its values: written back, the blocks are the file's bytes."""
    from .checkpoint import state_dict_to_hf
    from .model import families
    from .quantize import QuantLinear

    layers = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers and getattr(model, "ggml_embedding", None) is None:
        return state_dict_to_hf(model)
    cfg = model.config
    family = families.family_of(cfg)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for key, m in layers.items():
        prefix = key.removesuffix("weight")
        state = {k: v for k, v in state.items() if not k.startswith(prefix) or k.endswith("bias")}
        state[key] = torch.empty(m.out_features, m.in_features, device="meta")
    out = families.to_theirs(family, cfg, state)
    theirs = families.tensor_map(family, cfg)
    for key, m in layers.items():
        if key in theirs:  # (a tied head is the embedding's)
            rows = [n for _, n in theirs[key]]
            for (name, _), piece in zip(theirs[key], _cut(m.parts(), rows), strict=True):
                out[name] = piece
    embedding = getattr(model, "ggml_embedding", None)
    if embedding is not None and torch.equal(embedding.dequantize(), model.wte.weight.float()):
        out[theirs["wte.weight"][0][0]] = embedding
    return {k: v if hasattr(v, "kind") else v.contiguous() for k, v in out.items()}


def _cut(parts: list, rows: list[int]) -> list:
    """The parts (QuantTensors or float weights, stacked by rows) cut into pieces of `rows`."""
    from .ggml_blocks import QuantTensor

    out, i, start = [], 0, 0
    for n in rows:
        p = parts[i]
        if start + n > p.shape[0]:
            raise ConfigError("a quantized layer's parts do not match its tensors", "tensors")
        if isinstance(p, QuantTensor):
            out.append(QuantTensor(p.kind, p.blocks[start : start + n].contiguous(), p.shape[1]))
        else:
            out.append(p[start : start + n])
        start += n
        if start == p.shape[0]:
            i, start = i + 1, 0
    return out


# transformers' model_type -> llama.cpp's architecture
HF_ARCHITECTURES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3_text": "gemma3",
    "gpt2": "gpt2",
    "gpt_neox": "gptneox",
}


def _rope_theta(c: dict, key: str = "full_attention") -> float:
    """rope_theta from a config dict in either form (transformers 4's keys, 5's parameters)."""
    params = c.get("rope_parameters") or {}
    params = params.get(key, params) if isinstance(params, dict) else {}
    value = c.get("rope_theta", params.get("rope_theta"))
    if key == "sliding_attention":
        value = c.get("rope_local_base_freq", params.get("rope_theta"))
    return float(value if value is not None else 10000.0)


def _rope_scaling_of(c: dict) -> dict:
    """rope_scaling in either form (transformers 4's rope_scaling, 5's rope_parameters)."""
    params = c.get("rope_parameters") or {}
    params = params.get("full_attention", params)
    scaling = c.get("rope_scaling") or params
    return scaling if scaling.get("rope_type", scaling.get("type")) not in (None, "default") else {}


def _add_rope_scaling(w, c: dict) -> None:
    gguf = _gguf()
    scaling = _rope_scaling_of(c)
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if kind in (None, "default"):
        return
    if kind == "llama3":
        return  # a rope_freqs tensor (write_gguf_hf)
    if kind not in ("linear", "yarn"):
        raise ConfigError(
            f"GGUF export writes rope scaling 'linear', 'yarn' and 'llama3'; this model uses "
            f"{kind!r}",
            "rope_scaling",
        )
    w.add_rope_scaling_type(gguf.RopeScalingType(kind))
    w.add_rope_scaling_factor(float(scaling["factor"]))
    if scaling.get("original_max_position_embeddings"):
        w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    if kind == "yarn":
        for key, add in (
            ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", w.add_rope_scaling_yarn_beta_slow),
            ("attention_factor", w.add_rope_scaling_attn_factors),
        ):
            if scaling.get(key) is not None:
                add(float(scaling[key]))


def _add_hparams(w, arch: str, c: dict, vocab: int) -> None:
    """The `{arch}.*` keys llama.cpp's converter writes for this family."""
    if arch == "gpt2":
        hidden = c["n_embd"]
        w.add_block_count(c["n_layer"])
        w.add_context_length(c.get("n_positions") or c.get("n_ctx"))
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(c.get("n_inner") or 4 * hidden)
        w.add_head_count(c["n_head"])
        w.add_layer_norm_eps(c.get("layer_norm_epsilon", 1e-5))
        return
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    if arch == "gptneox":
        params = c.get("rope_parameters") or {}
        pct = c.get("rotary_pct", params.get("partial_rotary_factor", 1.0))
        w.add_rope_dimension_count(int(pct * (hidden // heads)))
        w.add_rope_freq_base(float(c.get("rotary_emb_base", params.get("rope_theta", 10000.0))))
        w.add_parallel_residual(bool(c.get("use_parallel_residual", True)))
        w.add_layer_norm_eps(c.get("layer_norm_eps", 1e-5))
        return
    head_dim = c.get("head_dim") or hidden // heads
    w.add_head_count_kv(c.get("num_key_value_heads") or heads)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(_rope_theta(c))
    w.add_vocab_size(vocab)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    if arch in ("qwen3", "gemma3") or head_dim != hidden // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    _add_rope_scaling(w, c)
    if arch == "gemma3":
        layers = c["num_hidden_layers"]
        types = c.get("layer_types") or [
            "full_attention"
            if (i + 1) % c.get("sliding_window_pattern", 6) == 0
            else "sliding_attention"
            for i in range(layers)
        ]
        scalar = c.get("query_pre_attn_scalar", head_dim)
        llama_cpp = hidden // heads if layers == 62 else head_dim  # what llama.cpp computes
        if scalar != llama_cpp:
            raise ConfigError(
                f"llama.cpp scales Gemma 3 queries by 1/sqrt({llama_cpp}); this model's "
                f"query_pre_attn_scalar is {scalar}",
                "query_pre_attn_scalar",
            )
        for key in ("final_logit_softcapping", "attn_logit_softcapping"):
            if c.get(key) is not None:
                raise ConfigError(f"llama.cpp's gemma3 has no {key}", key)
        w.add_sliding_window(c["sliding_window"])
        w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        w.add_rope_freq_base_swa(_rope_theta(c, "sliding_attention"))


def _pre_name(spec: dict) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level tokenizer.json's pre-tokenizer."""
    from .tokenizers import GGUF_PRE_SPLITS

    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        return "gpt-2" if pre.get("use_regex", True) else None
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if (
            len(parts) == 2
            and parts[0].get("type") == "Split"
            and parts[1].get("type") == "ByteLevel"
            and not parts[1].get("use_regex", True)
        ):
            regex = (parts[0].get("pattern") or {}).get("Regex")
            return next((k for k, v in GGUF_PRE_SPLITS.items() if v == regex), None)
    return None


def tokenizer_metadata(tokenizer, n_vocab: int) -> dict | None:
    """The `tokenizer.ggml.*` values of a tokenizer that has a GGUF form, padded to `n_vocab`
    tokens: byte-level BPE as "gpt2", SentencePiece-style BPE with byte fallback as "llama".
    None for the others (word, character: no GGUF form)."""
    gguf = _gguf()
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None
    size = backend.get_vocab_size(with_added_tokens=True)
    if size > n_vocab:
        raise ConfigError(
            f"the tokenizer has {size} tokens but the model only {n_vocab} embedding rows",
            "tokenizer",
        )
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    byte_fallback = bool(model.get("byte_fallback"))
    pre = None if byte_fallback else _pre_name(spec)
    if not byte_fallback and pre is None:
        log.warning("the tokenizer's pre-tokenizer has no llama.cpp name; writing 'default'")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    rank = {m.replace(" ", "", 1): i for i, m in reversed(list(enumerate(merges)))}
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        piece = backend.id_to_token(i) if i < size else None
        tokens.append(piece if piece is not None else f"[PAD{i}]")
        if piece is None:
            kind = gguf.TokenType.UNUSED
        elif i in added:
            kind = (
                gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
            )
        elif byte_fallback and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            kind = gguf.TokenType.BYTE
        elif piece == model.get("unk_token"):
            kind = gguf.TokenType.UNKNOWN
        else:
            kind = gguf.TokenType.NORMAL
        types.append(kind)
        # SentencePiece's scores order the merges: a merged piece scores minus its merge's rank
        scores.append(-float(rank[piece]) if piece in rank else -float(len(merges) + 1) * (i > 0))
    meta = {
        "model": "llama" if byte_fallback else "gpt2",
        "pre": "default" if byte_fallback or pre is None else pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "scores": scores if byte_fallback else None,
    }
    if byte_fallback:
        meta["add_space_prefix"] = (spec.get("pre_tokenizer") or {}).get("prepend_scheme") not in (
            None,
            "never",
        )
    for key in ("bos", "eos", "unk", "pad"):
        meta[f"{key}_id"] = getattr(tokenizer, f"{key}_token_id", None)
    if meta["bos_id"] is None and meta["eos_id"] is not None and not byte_fallback:
        meta["bos_id"] = meta["eos_id"]  # llama.cpp's BPE loader asks for one
    probe = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    meta["add_bos"] = len(probe) > len(plain) and bos is not None and probe[0] == bos
    meta["add_eos"] = len(probe) > len(plain) and eos is not None and probe[-1] == eos
    meta["chat_template"] = getattr(tokenizer, "chat_template", None)
    return meta


def _add_tokenizer(w, tokenizer, n_vocab: int) -> None:
    gguf = _gguf()
    meta = tokenizer_metadata(tokenizer, n_vocab) if tokenizer is not None else None
    if meta is None:  # a placeholder vocabulary: llama-bench decodes ids, never text
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list([f"<{i}>" for i in range(n_vocab)])
        w.add_token_types([gguf.TokenType.NORMAL] * n_vocab)
        w.add_token_merges(["<0> <1>"])
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        w.add_add_bos_token(False)
        return
    w.add_tokenizer_model(meta["model"])
    w.add_tokenizer_pre(meta["pre"])
    w.add_token_list(meta["tokens"])
    w.add_token_types(meta["types"])
    if meta["scores"] is not None:
        w.add_token_scores(meta["scores"])
        w.add_add_space_prefix(meta["add_space_prefix"])
    if meta["merges"] or meta["model"] == "gpt2":
        w.add_token_merges(meta["merges"] or ["<0> <1>"])
    for key, add in (
        ("bos_id", w.add_bos_token_id),
        ("eos_id", w.add_eos_token_id),
        ("unk_id", w.add_unk_token_id),
        ("pad_id", w.add_pad_token_id),
    ):
        if meta[key] is not None:
            add(meta[key])
    w.add_add_bos_token(meta["add_bos"])
    w.add_add_eos_token(meta["add_eos"])
    if meta["chat_template"]:
        w.add_chat_template(meta["chat_template"])


def write_gguf_hf(
    hf_config: dict,
    hf_tensors: dict[str, torch.Tensor],
    tokenizer,
    path: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    name: str = "lmgen export",
) -> Path:
    """Writes a model given as a transformers-style config dict and HF-named tensors as GGUF,
    as llama.cpp's converter writes it (see the module doc). 2-d weights go in `dtype`
    (float32, float16 or q8_0; a weight whose rows are not whole q8_0 blocks goes in float16,
    as the converter does), norms and biases in float32; a QuantTensor (ggml blocks, from
    `hf_tensors`) goes as its own bytes."""
    from .model.gguf import from_hf, gguf_name

    gguf = _gguf()
    dtype = GGUF_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not any(dtype is d for d in GGUF_DTYPES.values()):
        raise ConfigError(f"GGUF export supports float32, float16 and q8_0, got {dtype}", "dtype")
    model_type = hf_config.get("model_type")
    arch = HF_ARCHITECTURES.get(model_type)
    if arch is None:
        raise ConfigError(
            f"GGUF export supports model_type {', '.join(HF_ARCHITECTURES)}; got {model_type!r}",
            "model_type",
        )
    names = {}
    for hf in hf_tensors:
        theirs = gguf_name(arch, hf)
        if theirs is None:
            if hf.endswith(("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")):
                continue  # buffers computed from the config
            raise ConfigError(f"tensor {hf} has no GGUF name in llama.cpp's {arch}", "tensors")
        names[theirs] = hf
    kinds = [t.kind for t in hf_tensors.values() if hasattr(t, "kind")]  # QuantTensors
    tied = "output.weight" not in names or bool(hf_config.get("tie_word_embeddings"))
    if tied:
        names.pop("output.weight", None)
    vocab = hf_tensors[names["token_embd.weight"]].shape[0]
    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    _add_hparams(w, arch, hf_config, vocab)
    file_types = {
        torch.float32: gguf.LlamaFileType.ALL_F32,
        torch.float16: gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    for k in ("Q4_0", "Q4_1", "Q5_0"):
        file_types[k] = getattr(gguf.LlamaFileType, f"MOSTLY_{k}")
    file_types.update({"Q8_0": file_types["q8_0"], "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M})
    w.add_file_type(file_types[max(set(kinds), key=kinds.count) if kinds else dtype])
    _add_tokenizer(w, tokenizer, vocab)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for theirs, hf in names.items():
        if hasattr(hf_tensors[hf], "kind"):  # ggml blocks: written as they are
            q = hf_tensors[hf]
            raw = from_hf(arch, theirs, q.blocks.cpu(), hf_config).contiguous().numpy()
            kind = gguf.GGMLQuantizationType[q.kind]
            w.add_tensor(theirs, raw, raw_shape=raw.shape, raw_dtype=kind)
            continue
        t = from_hf(arch, theirs, hf_tensors[hf].detach().cpu().float(), hf_config).contiguous()
        if t.dim() != 2 or theirs == "position_embd.weight" or dtype is torch.float32:
            w.add_tensor(theirs, t.numpy())
        elif dtype == "q8_0" and t.shape[-1] % 32 == 0:
            packed = gguf.quants.quantize(t.numpy(), q8)
            w.add_tensor(theirs, packed, raw_shape=packed.shape, raw_dtype=q8)
        else:
            w.add_tensor(theirs, t.half().numpy())
    scaling = _rope_scaling_of(hf_config)
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        if arch != "llama":
            raise ConfigError(f"llama.cpp's {arch} has no llama3 rope scaling", "rope_scaling")
        from .model.gguf import llama3_rope_factors

        c = hf_config
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        factors = llama3_rope_factors(scaling, head_dim, _rope_theta(c))
        w.add_tensor("rope_freqs.weight", factors.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
