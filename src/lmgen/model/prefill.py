"""A prompt's blocks (more than one token per call) in the inference plan.

The prefill runs the same `block_forward` as a decode step, with its linear layers wrapped by
`prefill_linear.PrefillLinear` (oneDNN's float32 GEMM for many rows) instead of DecodeLinear.

A float16 model's prefill is *widened*: torch has no fast float16 GEMM on CPU and its float16
elementwise operations convert to float32 and back at every step, so the residual stream, the
norms, rotary embeddings and attention run in float32 and each product widens its float16
weight for the call (prefill_linear). Keys and values are rounded to float16 where they are
written into the cache, as the float16 path writes them, and the blocks' output is rounded to
float16 before the final norm and the head. The results equal the float16 op-by-op path within
float16 rounding; every rounding the widened path skips, it skips towards the float32 model's
numbers (tests/test_prefill.py checks both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import decode_linear, prefill_linear
from ..prefill_linear import PrefillLinear


def _prefill_fn(module: nn.Module | None):
    if module is None:
        return None
    return PrefillLinear(module) if isinstance(module, nn.Linear) else module.forward


def _widened_norm(module: nn.Module | None):
    """The norm's forward for float32 input with float16 parameters: LayerNorm's CPU kernel
    wants parameters of the input's dtype; RMSNorm (network.py) promotes by itself."""
    if not isinstance(module, nn.LayerNorm):
        return _prefill_fn(module)
    m = module

    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        w = None if m.weight is None else m.weight.float()
        b = None if m.bias is None else m.bias.float()
        return F.layer_norm(x, m.normalized_shape, w, b, m.eps)

    return layer_norm


def prefill_ops(blocks) -> list:
    """Each block's operations for a prompt (module doc)."""
    return [b.plain_ops(_prefill_fn) for b in blocks]


def widened_ops(blocks) -> list:
    """Each block's operations for a widened float16 prompt: float32 activations, float16
    parameters widened as they are used."""
    out = []
    for b in blocks:
        ops = b.plain_ops(_prefill_fn)
        out.append(ops._replace(
            ln_1=_widened_norm(b.ln_1), ln_2=_widened_norm(b.ln_2),
            post_attn=_widened_norm(getattr(b, "ln_post_attn", None)),
            post_mlp=_widened_norm(getattr(b, "ln_post_mlp", None)),
        ))  # fmt: skip
    return out


def widens(model, x: torch.Tensor) -> bool:
    """Whether this call's prefill runs widened: float16 activations of more than MAX_ROWS
    rows on CPU, every linear layer of the blocks a plain float16 `nn.Linear`, oneDNN there,
    no autograd."""
    rows = x.numel() // x.shape[-1]
    return (
        x.dtype == torch.float16
        and x.device.type == "cpu"
        and rows > decode_linear.MAX_ROWS
        and prefill_linear.available()
        and not (torch.is_grad_enabled() and x.requires_grad)
        and all(
            type(m) is nn.Linear and m.weight.dtype == torch.float16
            for b in model.h
            for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
        )
    )
