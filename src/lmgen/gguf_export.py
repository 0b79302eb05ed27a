"""GGUF export: a GPT written as a GGUF file of llama.cpp's `gpt2` architecture.

The `gguf` package (llama.cpp's own writer) is an optional extra, `pip install 'lmgen[gguf]'`,
imported on first use. 2-d weights go in float32, float16 or q8_0 (llama.cpp's 8-bit blocks:
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
import os
from pathlib import Path

import torch

from .errors import ConfigError

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
    if backend is None or getattr(tokenizer, "kind", None) != "bpe":
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
    byte-level BPE, else a placeholder one."""
    dtype = GGUF_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not any(dtype is d for d in GGUF_DTYPES.values()):
        raise ConfigError(f"GGUF export supports float32, float16 and q8_0, got {dtype}", "dtype")
    cfg = model.config
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
