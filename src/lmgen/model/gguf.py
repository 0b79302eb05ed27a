"""GGUF read: a llama.cpp file as a Hugging Face config dict, HF-named tensors, a tokenizer and
its chat template.

`read_gguf(path)` turns the file into what a Hugging Face directory would hold, so the same
loader serves both: `hf_config` is what `config.json` would say (transformers' key names and
values), `tensors` are under the names and in the layouts of the HF checkpoint, as
transformers' own GGUF loader produces them (`modeling_gguf_pytorch_utils`,
`integrations/ggml.py`). What llama.cpp's converter did to each tensor is undone here:

- llama: q/k rows were permuted from rotate-half to interleaved pairs; permuted back.
- gemma3: RMSNorm weights were stored as `1 + w` (llama.cpp's norm has no offset); `w` again.
- gpt2: Conv1D weights were transposed to (out, in); transposed back to (in, out).
- gptneox: the fused qkv, interleaved per head in HF ([q_h, k_h, v_h] for each head h), was
  split into [all q, all k, all v]; interleaved again, bias too.

The header is parsed here (gguf's GGUFReader builds a numpy view per vocabulary entry: 12 s
for Gemma 3's 262,144 tokens); tensors are read from the memory-mapped file and dequantized by
`gguf.quants.dequantize` (llama.cpp's own reference code). F16 and BF16 tensors keep their
dtype; quantized ones become float32, except that `read_gguf(keep=...)` leaves the 2-d weights
of the named block types (lmgen.ggml_blocks.KEPT) as they are, as `QuantTensor`s whose rows
are reordered like the float ones (the llama q/k permutation moves whole rows of blocks). Only
the rotary families (`KEEP_ARCHITECTURES`) keep them: GPT-2's and GPT-NeoX's converters
transpose or regroup what our modules hold differently. Every check (magic, architecture,
tensor types, tensor names, data within the file) runs before any tensor is read.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "gpt2", "gptneox")
# ggml type names read here; dequantized by gguf.quants (floats are kept as they are)
TENSOR_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
GGUF_MAGIC = b"GGUF"
KEEP_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")  # quantized blocks kept as they are


@dataclass
class GGUFModel:
    """A GGUF file as a Hugging Face directory would hold it."""

    hf_config: dict
    tensors: dict[str, torch.Tensor]  # QuantTensor values where read_gguf(keep=...) kept them
    tokenizer: object  # lmgen.tokenizers.PretrainedTokenizer
    chat_template: str | None = None
    generation: dict = field(default_factory=dict)  # generation_config.json's ids
    metadata: dict = field(default_factory=dict)  # every scalar key of the file, for reference


def _gguf():
    try:
        import gguf
    except ImportError:  # a runtime dependency; only a broken install lacks it
        raise ModelLoadError("reading GGUF needs the gguf package: pip install gguf") from None
    return gguf


# --- metadata ---------------------------------------------------------------------------------


@dataclass
class TensorInfo:
    """One tensor's entry in the file's header: where its bytes are and what they hold."""

    name: str
    shape: tuple[int, ...]  # torch order (slowest dimension first)
    kind: str  # the ggml type's name: "F32", "Q4_K", ...
    offset: int  # absolute, in the file
    n_bytes: int


# GGUF value types: struct format of the scalars, 8 = string, 9 = array
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


class _Cursor:
    """Reads GGUF's little-endian header fields from a buffer; a read past its end raises
    IndexError (a truncated file)."""

    def __init__(self, buf, pos: int = 0):
        self.buf, self.pos = buf, pos

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise IndexError(f"a field at byte {self.pos} runs past the end")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise IndexError(f"a {n}-byte string at byte {self.pos} runs past the end")
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, kind: int):
        if kind == 8:
            return self.string()
        if kind == 9:
            sub, count = self.take("I"), self.take("Q")
            if sub in _SCALARS and sub != 7:  # numbers: one numpy read
                dtype = np.dtype("<" + _SCALARS[sub])
                end = self.pos + count * dtype.itemsize
                if end > len(self.buf):
                    raise IndexError(f"an array of {count} at byte {self.pos} runs past the end")
                values = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
                self.pos = end
                return values
            if count > len(self.buf):
                raise IndexError(f"an array of {count} values cannot fit the file")
            return [self.value(sub) for _ in range(count)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.take(_SCALARS[kind])


def _parse(path: Path) -> tuple[dict, list[TensorInfo], mmap.mmap]:
    """(metadata, tensor infos, the memory-mapped file) of a GGUF file, every tensor checked
    to lie within the file; one-line errors for a missing, foreign, cut or corrupt file."""
    gguf = _gguf()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    with path.open("rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (it starts with {head!r}, not b'GGUF')")
    with path.open("rb") as fh:
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # numpy views keep it open
    cur = _Cursor(data, 4)
    try:
        version = cur.take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (lmgen reads 2 and 3)")
        n_tensors, n_kv = cur.take("Q"), cur.take("Q")
        meta = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(cur.take("I"))
        raw = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.take("I")
            if n_dims > 4:
                raise ValueError(f"tensor {name} has {n_dims} dimensions (ggml has at most 4)")
            dims = [cur.take("Q") for _ in range(n_dims)]
            if any(d > 1 << 40 for d in dims):
                raise ValueError(f"tensor {name} has a dimension of {max(dims)}")
            raw.append((name, dims, cur.take("I"), cur.take("Q")))
    except (IndexError, ValueError, struct.error) as e:
        raise ModelLoadError(f"{path}: truncated or corrupt GGUF file ({e})") from None
    align = meta.get("general.alignment", 32)
    start = -(-cur.pos // align) * align
    tensors = []
    for name, dims, kind, offset in raw:
        try:
            qtype = gguf.GGMLQuantizationType(kind)
        except ValueError:
            raise ModelLoadError(f"{path}: tensor {name} has an unknown ggml type {kind}") from None
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        count = math.prod(dims)  # Python ints: no overflow
        if dims and dims[0] % block:
            raise ModelLoadError(
                f"{path}: tensor {name}: rows of {dims[0]} are not whole {qtype.name} blocks"
            )
        n_bytes = count // block * size
        if start + offset + n_bytes > len(data):
            raise ModelLoadError(
                f"{path}: truncated GGUF file: tensor {name} ends at byte "
                f"{start + offset + n_bytes}, the file has {len(data)}"
            )
        shape = tuple(int(d) for d in reversed(dims))
        tensors.append(TensorInfo(name, shape, qtype.name, start + offset, n_bytes))
    return meta, tensors, data


def _rope_scaling(meta: dict, arch: str) -> dict | None:
    """transformers' rope_scaling from llama.cpp's `{arch}.rope.scaling.*` keys."""
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor in (None, 1.0):
        return None
    out = {"rope_type": kind, "factor": float(factor)}
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        out["original_max_position_embeddings"] = int(original)
    if kind == "yarn":
        for ours, theirs in (
            ("beta_fast", "yarn_beta_fast"),
            ("beta_slow", "yarn_beta_slow"),
            ("attention_factor", "attn_factor"),
        ):
            if (v := meta.get(f"{arch}.rope.scaling.{theirs}")) is not None:
                out[ours] = float(v)
    return out


def _hf_config(meta: dict, arch: str, tensor_names: set[str], source: Path) -> dict:
    """config.json for this file: transformers' keys, the values llama.cpp's converter read."""

    def need(key: str):
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(f"{source}: the GGUF metadata lacks {arch}.{key}")
        return value

    def get(key: str, default=None):
        value = meta.get(f"{arch}.{key}")
        return default if value is None else value

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab_size = get("vocab_size") or (len(tokens) if tokens else None)
    if vocab_size is None and "token_embd.weight" not in tensor_names:
        raise ModelLoadError(f"{source}: the GGUF file states no vocabulary size")
    ids = {
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if meta.get("tokenizer.ggml.padding_token_id") is not None:
        ids["pad_token_id"] = meta["tokenizer.ggml.padding_token_id"]
    tied = "output.weight" not in tensor_names
    hidden, heads, layers = need("embedding_length"), need("attention.head_count"), None
    layers = need("block_count")
    if arch == "gpt2":
        ff = need("feed_forward_length")
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": vocab_size,
            "n_embd": hidden,
            "n_layer": layers,
            "n_head": heads,
            "n_positions": need("context_length"),
            "n_ctx": need("context_length"),
            "n_inner": None if ff == 4 * hidden else ff,
            "layer_norm_epsilon": get("attention.layer_norm_epsilon", 1e-5),
            "activation_function": "gelu_new",
            "tie_word_embeddings": tied,
            **ids,
        }
    if arch == "gptneox":
        head_dim = hidden // heads
        return {
            "model_type": "gpt_neox",
            "architectures": ["GPTNeoXForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": need("feed_forward_length"),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": need("context_length"),
            "rotary_pct": get("rope.dimension_count", head_dim) / head_dim,
            "rotary_emb_base": float(get("rope.freq_base", 10000.0)),
            "use_parallel_residual": bool(get("use_parallel_residual", True)),
            "layer_norm_eps": get("attention.layer_norm_epsilon", 1e-5),
            "hidden_act": "gelu",
            "attention_bias": "blk.0.attn_qkv.bias" in tensor_names,
            "tie_word_embeddings": tied,
            **ids,
        }
    kv_heads = get("attention.head_count_kv", heads)
    head_dim = get("attention.key_length") or get("rope.dimension_count") or hidden // heads
    config = {
        "model_type": {"gemma3": "gemma3_text"}.get(arch, arch),
        "architectures": [
            {
                "llama": "LlamaForCausalLM",
                "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM",
                "gemma3": "Gemma3ForCausalLM",
            }[arch]
        ],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": need("context_length"),
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon"),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(meta, arch),
        "tie_word_embeddings": tied,
        **ids,
    }
    if arch == "llama":
        config["hidden_act"] = "silu"
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        config["mlp_bias"] = False
    elif arch in ("qwen2", "qwen3"):
        config["hidden_act"] = "silu"
        if arch == "qwen3":
            config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        config["use_sliding_window"] = False
        config["sliding_window"] = None
        if arch == "qwen2":  # not a key of Qwen2's config.json: always hidden / heads
            del config["head_dim"]
    elif arch == "gemma3":
        # llama.cpp fixes what the file does not state: local layers' base 10000, a full layer
        # every sixth, and the query scale 1/sqrt(head_dim) except on the 62-layer 27B
        # (1/sqrt(hidden/heads)); transformers' Gemma3TextConfig holds the same defaults.
        pattern = get("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # one flag per layer, true where the layer is local
            if len(pattern) != layers:
                raise ModelLoadError(
                    f"{source}: {arch}.attention.sliding_window_pattern has {len(pattern)} "
                    f"entries for {layers} layers"
                )
            local = [bool(f) for f in pattern]
        elif isinstance(pattern, int) and pattern > 0:
            local = [(i + 1) % pattern != 0 for i in range(layers)]
        else:
            raise ModelLoadError(
                f"{source}: {arch}.attention.sliding_window_pattern must be a positive count "
                f"or a list of flags, got {pattern!r}"
            )
        config.update(
            {
                "hidden_activation": "gelu_pytorch_tanh",
                "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
                "sliding_window": get("attention.sliding_window"),
                "rope_local_base_freq": float(get("rope.freq_base_swa", 10000.0)),
                "layer_types": ["sliding_attention" if f else "full_attention" for f in local],
                "final_logit_softcapping": get("final_logit_softcapping"),
                "attn_logit_softcapping": get("attn_logit_softcapping"),
                "attention_bias": False,
            }
        )
        if isinstance(pattern, int):
            config["sliding_window_pattern"] = pattern
    return config


# --- tensors ----------------------------------------------------------------------------------

# GGUF block tensor -> HF name under "model.layers.{i}." (llama-like families)
_DECODER_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GEMMA3_BLOCK = _DECODER_BLOCK | {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_DECODER_TOP = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_NAMES = {
    "llama": ("model.layers", _DECODER_BLOCK, _DECODER_TOP),
    "qwen2": ("model.layers", _DECODER_BLOCK, _DECODER_TOP),
    "qwen3": ("model.layers", _DECODER_BLOCK, _DECODER_TOP),
    "gemma3": ("model.layers", _GEMMA3_BLOCK, _DECODER_TOP),
    "gpt2": (
        "transformer.h",
        {
            "attn_norm": "ln_1",
            "attn_qkv": "attn.c_attn",
            "attn_output": "attn.c_proj",
            "ffn_norm": "ln_2",
            "ffn_up": "mlp.c_fc",
            "ffn_down": "mlp.c_proj",
        },
        {
            "token_embd": "transformer.wte",
            "position_embd": "transformer.wpe",
            "output_norm": "transformer.ln_f",
            "output": "lm_head",
        },
    ),
    "gptneox": (
        "gpt_neox.layers",
        {
            "attn_norm": "input_layernorm",
            "attn_qkv": "attention.query_key_value",
            "attn_output": "attention.dense",
            "ffn_norm": "post_attention_layernorm",
            "ffn_up": "mlp.dense_h_to_4h",
            "ffn_down": "mlp.dense_4h_to_h",
        },
        {
            "token_embd": "gpt_neox.embed_in",
            "output_norm": "gpt_neox.final_layer_norm",
            "output": "embed_out",
        },
    ),
}
# computed by llama.cpp from the config, not weights of the HF model
_DERIVED = {"rope_freqs.weight"}


def llama3_rope_factors(scaling: dict, head_dim: int, theta: float) -> torch.Tensor:
    """llama.cpp's rope_freqs for Llama 3.1-style rope scaling: each frequency's divisor, as
    convert_hf_to_gguf.py computes it (and transformers' `_compute_llama3_parameters`)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    out = torch.where(wavelen > old / low, torch.full_like(freqs, factor), mid)
    return torch.where(wavelen < old / high, torch.ones_like(freqs), out)


def llama3_rope_scaling(factors: torch.Tensor, config: dict, source: str) -> dict | None:
    """transformers' llama3 rope_scaling from llama.cpp's rope_freqs. Between the kept and the
    fully scaled frequencies the factors follow smooth = L / wavelen * 1/(hi - lo) - lo/(hi - lo),
    a line in 1/wavelen: fitted, with lo = 1 (every Llama 3.x's low_freq_factor; the line
    fixes the rest), then checked by recomputing every factor."""
    theta, head_dim = config["rope_theta"], config["head_dim"]
    factor = float(factors.max())
    if factor <= 1.0 + 1e-9:
        return None
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    inv_wavelen = freqs / (2 * math.pi)
    mid = (factors > 1 + 1e-6) & (factors < factor - 1e-6 * factor)
    scaling = None
    if int(mid.sum()) >= 2:
        smooth = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
        x = inv_wavelen[mid]
        a = float(((x - x.mean()) * (smooth - smooth.mean())).sum() / ((x - x.mean()) ** 2).sum())
        b = float(smooth.mean() - a * x.mean())
        if a > 0 and b < 0:
            span = -1.0 / b  # hi - lo with lo = 1
            scaling = {
                "rope_type": "llama3",
                "factor": round(factor, 6),
                "low_freq_factor": 1.0,
                "high_freq_factor": round(1.0 + span, 6),
                "original_max_position_embeddings": int(round(a * span)),
            }
    if scaling is None or not torch.allclose(
        llama3_rope_factors(scaling, head_dim, theta), factors, rtol=1e-4, atol=0
    ):
        raise ModelLoadError(f"{source}: rope_freqs does not follow Llama 3's rope scaling")
    return scaling


def hf_name(arch: str, gguf_name: str) -> str | None:
    """The HF checkpoint name of a GGUF tensor name, None when the family has no such tensor."""
    blocks, block_map, top = _NAMES[arch]
    stem, _, kind = gguf_name.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if stem.startswith("blk."):
        _, index, part = (stem.split(".", 2) + ["", ""])[:3]
        if not index.isdigit() or part not in block_map:
            return None
        return f"{blocks}.{int(index)}.{block_map[part]}.{kind}"
    return f"{top[stem]}.{kind}" if stem in top else None


def gguf_name(arch: str, hf: str) -> str | None:
    """The GGUF name of an HF checkpoint tensor name (hf_name's inverse), None when the
    family has no such tensor. GPT-2's names are taken with or without "transformer."."""
    blocks, block_map, top = _NAMES[arch]
    if arch == "gpt2" and not hf.startswith(("transformer.", "lm_head.")):
        hf = "transformer." + hf
    if arch == "gptneox" and hf == "lm_head.weight":  # transformers 5's name for embed_out
        return "output.weight"
    stem, _, kind = hf.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if stem.startswith(blocks + "."):
        index, _, part = stem[len(blocks) + 1 :].partition(".")
        inverse = {v: k for k, v in block_map.items()}
        if not index.isdigit() or part not in inverse:
            return None
        return f"blk.{int(index)}.{inverse[part]}.{kind}"
    inverse = {v: k for k, v in top.items()}
    return f"{inverse[stem]}.{kind}" if stem in inverse else None


def _permute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's converter's `permute`: each head's rotate-half halves to interleaved pairs."""
    rows = w.shape[0]
    return (
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
        .contiguous()
    )


def _group_qkv(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GPT-NeoX: HF's per-head [q_h; k_h; v_h] rows to llama.cpp's [all q; all k; all v]."""
    per_head = w.reshape(n_head, 3, w.shape[0] // n_head // 3, *w.shape[1:])
    return torch.cat([per_head[:, i].reshape(-1, *w.shape[1:]) for i in range(3)]).contiguous()


def from_hf(arch: str, name: str, t: torch.Tensor, config: dict) -> torch.Tensor:
    """What llama.cpp's converter does to GGUF tensor `name` (the inverse of _to_hf); `config`
    is the HF config dict."""
    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
        heads = config["num_attention_heads"]
        if ".attn_k." in name:
            heads = config.get("num_key_value_heads") or heads
        return _permute_rotary(t, heads)
    if arch == "gemma3" and name.endswith("norm.weight"):
        return (t.float() + 1).to(t.dtype)
    if (
        arch == "gpt2"
        and t.dim() == 2
        and any(f".{p}." in name for p in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"))
    ):
        return t.t().contiguous()
    if arch == "gptneox" and ".attn_qkv." in name:
        return _group_qkv(t, config["num_attention_heads"])
    return t


def _unpermute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's converter reorders each head's q/k rows from rotate-half halves to
    interleaved pairs (`permute` in convert_hf_to_gguf.py); this is its inverse."""
    rows = w.shape[0]
    return (
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
        .contiguous()
    )


def _interleave_qkv(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GPT-NeoX: llama.cpp's [all q; all k; all v] back to HF's per-head [q_h; k_h; v_h]."""
    q, k, v = w.chunk(3, dim=0)
    per_head = [t.reshape(n_head, t.shape[0] // n_head, *t.shape[1:]) for t in (q, k, v)]
    return torch.stack(per_head, dim=1).reshape(w.shape).contiguous()


def _to_hf(arch: str, name: str, t: torch.Tensor, config: dict) -> torch.Tensor:
    """Undoes what llama.cpp's converter did to tensor `name` (see the module doc)."""
    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
        heads = config["num_attention_heads"]
        if ".attn_k." in name:
            heads = config["num_key_value_heads"]
        return _unpermute_rotary(t, heads)
    if arch == "gemma3" and name.endswith("norm.weight"):
        return (t.float() - 1).to(t.dtype)
    if (
        arch == "gpt2"
        and t.dim() == 2
        and any(f".{p}." in name for p in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"))
    ):
        return t.t().contiguous()
    if arch == "gptneox" and ".attn_qkv." in name:
        return _interleave_qkv(t, config["num_attention_heads"])
    return t


def _dequantize(t: TensorInfo, data: mmap.mmap) -> torch.Tensor:
    """One tensor of the file as torch: F32/F16 as stored, BF16 as bfloat16, quantized blocks
    dequantized to float32 by gguf.quants."""
    gguf = _gguf()
    raw = np.frombuffer(data, np.uint8, t.n_bytes, t.offset)
    if t.kind in ("F32", "F16", "BF16"):
        dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.int16}[t.kind]
        values = torch.from_numpy(np.array(raw).view(dtype).reshape(t.shape))
        return values.view(torch.bfloat16) if t.kind == "BF16" else values
    qtype = gguf.GGMLQuantizationType[t.kind]
    rows = raw.reshape(-1, t.n_bytes // max(1, int(np.prod(t.shape[:-1], dtype=np.int64))))
    values = gguf.quants.dequantize(rows, qtype)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(t.shape))


def _blocks(t: TensorInfo, data: mmap.mmap):
    """A quantized 2-d tensor of the file as a QuantTensor: its bytes, one row per output."""
    from ..ggml_blocks import QuantTensor

    raw = np.frombuffer(data, np.uint8, t.n_bytes, t.offset).reshape(t.shape[0], -1)
    return QuantTensor(t.kind, torch.from_numpy(raw.copy()), t.shape[1])


# --- the file ---------------------------------------------------------------------------------


def read_gguf(
    path: str | os.PathLike, tensors: bool = True, check=None, keep: tuple[str, ...] = ()
) -> GGUFModel:
    """Reads a GGUF file (see the module doc). `tensors=False` reads the metadata, tokenizer and
    config only (and still checks every tensor's type and name). `check(hf_config, tokenizer)`,
    when given, runs before any tensor is dequantized (the loader's checks, one read). `keep`:
    the block types whose 2-d weights stay quantized (QuantTensor), on KEEP_ARCHITECTURES."""
    from ..tokenizers import tokenizer_from_gguf

    path = Path(path)
    meta, infos, data = _parse(path)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    names = {t.name for t in infos}
    for t in infos:
        if t.kind not in TENSOR_TYPES:
            raise ModelLoadError(
                f"{path}: tensor {t.name} has GGUF type {t.kind}, which lmgen does "
                f"not read; supported: {', '.join(TENSOR_TYPES)}"
            )
        if t.name not in _DERIVED and hf_name(arch, t.name) is None:
            raise ModelLoadError(f"{path}: unexpected tensor {t.name} for architecture {arch}")
    config = _hf_config(meta, arch, names, path)
    freqs = next((t for t in infos if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        if arch != "llama" or freqs.kind != "F32" or freqs.shape != (config["head_dim"] // 2,):
            raise ModelLoadError(f"{path}: unexpected rope_freqs tensor for {arch}")
        factors = _dequantize(freqs, data).double()
        config["rope_scaling"] = llama3_rope_scaling(factors, config, str(path))
    tokenizer = tokenizer_from_gguf(meta, source=str(path))
    generation = {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
    }
    if check is not None:
        check(config, tokenizer)
    out: dict[str, torch.Tensor] = {}
    if tensors:
        for t in infos:
            if t.name in _DERIVED:
                continue
            if t.kind in keep and len(t.shape) == 2 and arch in KEEP_ARCHITECTURES:
                q = _blocks(t, data)
                q.blocks = _to_hf(arch, t.name, q.blocks, config)  # whole rows reordered
                out[hf_name(arch, t.name)] = q
                continue
            out[hf_name(arch, t.name)] = _to_hf(arch, t.name, _dequantize(t, data), config)
    scalars = {k: v for k, v in meta.items() if not isinstance(v, list)}
    return GGUFModel(
        hf_config=config,
        tensors=out,
        tokenizer=tokenizer,
        chat_template=meta.get("tokenizer.chat_template"),
        generation=generation,
        metadata=scalars,
    )
