"""GGUF export: a GPT written as a GGUF file of llama.cpp's `gpt2` architecture.

The `gguf` package (llama.cpp's own writer) is an optional extra, `pip install 'lmgen[gguf]'`,
imported on first use. Tensors keep their values, 2-d weights in float32 or float16, norms and
biases in float32, as llama.cpp's converter writes them.

The file carries a placeholder vocabulary (`<0>`, `<1>`, ...): enough for `llama-bench`, which
decodes random token ids and never tokenizes text; llama.cpp's BPE loader also asks for at
least one merge and for bos/eos ids, which are given as placeholders too. To chat with the
file in llama.cpp, convert the model directory with llama.cpp's `convert_hf_to_gguf.py`
instead (lmgen model directories are Hugging Face GPT-2 directories).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ConfigError

GGUF_DTYPES = {"float32": torch.float32, "float16": torch.float16}


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


def write_gguf(
    model, path: str | os.PathLike, dtype: torch.dtype = torch.float32, name: str = "lmgen export"
) -> Path:
    """Writes `model` (lmgen GPT) as GGUF; 2-d weights in `dtype` (float32 or float16)."""
    if dtype not in GGUF_DTYPES.values():
        raise ConfigError(f"GGUF export supports float32 and float16, got {dtype}", "dtype")
    cfg = model.config
    if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"llama.cpp's gpt2 uses the tanh GELU; this model uses {cfg.activation_function!r}",
            "activation_function",
        )
    if any(getattr(m, "qweight", None) is not None for m in model.modules()):
        raise ConfigError("cannot export an int8-quantized model: load it unquantized", "quantize")
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
    w.add_file_type(
        gguf.LlamaFileType.ALL_F32 if dtype == torch.float32 else gguf.LlamaFileType.MOSTLY_F16
    )
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"<{i}>" for i in range(cfg.vocab_size)])
    w.add_token_types([gguf.TokenType.NORMAL] * cfg.vocab_size)
    w.add_token_merges(["<0> <1>"])  # llama.cpp refuses a BPE vocabulary without merges
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    for tname, t in _tensors(model).items():
        t = t.detach().float().cpu()
        if t.dim() == 2 and tname != "position_embd.weight":
            t = t.to(dtype)
        w.add_tensor(tname, t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
