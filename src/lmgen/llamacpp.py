"""The benchmark's optional reference point: llama.cpp decoding the same weights.

`write_gguf` stores a GPT as a GGUF file of llama.cpp's `gpt2` architecture (the `gguf` package
writes it; tensors keep their values, in float32 or float16). `llama_bench` runs a
`llama-bench` binary on it and returns its decode rate. Nothing here downloads anything: the
binary comes from $LLAMA_BENCH or PATH, and without one the comparison is skipped.

The file carries a placeholder vocabulary (`<0>`, `<1>`, ...): `llama-bench` decodes random
token ids and never tokenizes text, so only the vocabulary's size matters.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import torch

from .errors import ConfigError


def find_llama_bench() -> str | None:
    explicit = os.environ.get("LLAMA_BENCH")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("llama-bench")


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


def write_gguf(model, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Writes `model` (lmgen GPT) as GGUF; 2-d weights in `dtype` (float32 or float16),
    norms and biases in float32, as llama.cpp's converter does."""
    try:
        import gguf
    except ImportError:
        raise ConfigError("writing GGUF needs the gguf package: pip install gguf") from None
    if dtype not in (torch.float32, torch.float16):
        raise ConfigError(f"GGUF export supports float32 and float16, got {dtype}", "dtype")
    cfg = model.config
    if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(
            f"llama.cpp's gpt2 uses the tanh GELU; this model uses {cfg.activation_function!r}",
            "activation_function",
        )
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("lmgen export")
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
    for name, t in _tensors(model).items():
        t = t.detach().float()
        if t.dim() == 2 and name != "position_embd.weight":
            t = t.to(dtype)
        w.add_tensor(name, t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_bench(
    binary: str,
    gguf_path: str | os.PathLike,
    new_tokens: int,
    threads: int,
    repeats: int = 1,
    timeout: float = 600,
) -> float:
    """Decode tokens/s (`llama-bench -p 0 -n new_tokens`, the mean over `repeats`)."""
    cmd = [
        binary,
        "-m",
        str(gguf_path),
        "-p",
        "0",
        "-n",
        str(new_tokens),
        "-t",
        str(threads),
        "-r",
        str(repeats),
        "-o",
        "json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-500:]}")
    results = json.loads(p.stdout)
    return float(results[0]["avg_ts"])
