"""lmgen's CPU kernel for weights in ggml's block formats (quant.cpp), compiled on first use.

`gemv(x, blocks, kind, bias)` multiplies rows of x by a weight held as Q8_0, Q4_0, Q4_1, Q5_0
or Q4_K blocks (the GGUF bytes, one row of blocks per output; or Q4_0 with rows interleaved by
8, "Q4_0x8", the same bits), the activations quantized to int8 blocks and the block products
done in integers, as llama.cpp does; `gemm` is the same product for a prompt's many rows
(AVX512-VNNI builds: `has_gemm()`); `dequantize(blocks, kind, in)` gives the float32 weight
(the prompt path where the GEMM is not built). Built like
decode.cpp (lmgen.kernels.build_extension) with AVX2/FMA/F16C, plus AVX512-VNNI or AVX-VNNI
where /proc/cpuinfo lists them (their integer sums equal AVX2's, so results do not change).
Where it cannot be built, or `LMGEN_KERNELS=0`, `available()` is False and lmgen.quantize
dequantizes the weights with the gguf package instead (the float fallback).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from . import (
    BASE_FLAGS,
    TURNED_OFF,
    build_extension,
    integer_dot_flags,
    say_not_used,
    turned_off,
)

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("quant.cpp")
# BASE_FLAGS: the decode kernel's AVX2 base (-ffp-contract=off: no fused multiply-adds but the
# written ones, so a row's arithmetic is the same in every instantiation)
# ggml type numbers, and Q4_0 with rows interleaved by 8 (lmgen.ggml_blocks.interleave_q4_0)
KINDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q4_0x8": 102}
_state: dict = {"ok": None, "why": "", "gemm": None}
_lock = threading.Lock()


def build_flags(flags: set[str] | None = None) -> list[str]:
    """Compiler flags for this CPU: the AVX2 base, plus the VNNI dot product where present."""
    return [*BASE_FLAGS, *integer_dot_flags(flags)]


def integer_dot() -> str:
    """Which integer dot product the kernel uses here (for reports)."""
    flags = build_flags()
    if "-DLMGEN_VNNI512" in flags:
        return "AVX512-VNNI"
    return "AVX-VNNI" if "-DLMGEN_AVXVNNI" in flags else "AVX2"


def available() -> bool:
    """Whether the kernel runs here (builds and loads it on the first call)."""
    if _state["ok"] is not None:
        return _state["ok"]
    with _lock:
        if _state["ok"] is None:
            why = ""
            if turned_off():
                why = TURNED_OFF
            elif torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
                why = "it needs an x86-64 CPU with AVX2, FMA and F16C"
            if not why:
                try:
                    build_extension(_SOURCE, build_flags(), "lmgen_quant")
                except Exception as e:  # no compiler, a failed build: the float fallback
                    why = f"building it failed ({type(e).__name__}: {str(e).strip()[-300:]})"
            if why:
                say_not_used("lmgen's quantized-weight kernel", why)
            _state["ok"], _state["why"] = not why, why
    return _state["ok"]


def why_not() -> str:
    return _state["why"]


def gemv(
    x: torch.Tensor, blocks: torch.Tensor, kind: str, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """(rows, out) float32 = x (rows, in) @ W.T + bias, W the weight `blocks` (out, row_bytes)
    of ggml type `kind` hold."""
    return torch.ops.lmgen_quant.quant_gemv(x, blocks, KINDS[kind], bias)


def has_gemm() -> bool:
    """Whether `gemm` runs here (an AVX512-VNNI build of the kernel); asked of the kernel once
    (a prompt's prefill asks at every product: the op's dispatch cost ~3 us a time)."""
    if _state["gemm"] is None:
        _state["gemm"] = available() and bool(torch.ops.lmgen_quant.quant_has_gemm())
    return _state["gemm"]


def gemm(
    x: torch.Tensor, blocks: torch.Tensor, kind: str, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`gemv`'s product for a prompt's many rows (quant_gemm.h): 16 weight rows at a time
    unpacked to bytes and multiplied by every row with 512-bit integer dots. A row's bits do
    not depend on the other rows, but differ from `gemv`'s in float rounding."""
    return torch.ops.lmgen_quant.quant_gemm(x, blocks, KINDS[kind], bias)


def dequantize(blocks: torch.Tensor, kind: str, in_features: int) -> torch.Tensor:
    """The weight `blocks` hold, (out, in_features) float32."""
    return torch.ops.lmgen_quant.quant_dequantize(blocks, KINDS[kind], in_features)
