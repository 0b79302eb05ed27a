"""int8 weight-only quantization of the linear layers, for decoding.

Each output row of a weight gets one scale (`max |w| / 127`, symmetric, round to nearest); the
int8 matrix is read directly by the matrix-vector product, so a decode step reads a quarter of
the fp32 bytes. Activations stay floating point. Up to 4 rows (a decode step, beams) go to
lmgen's own kernel where it builds (lmgen.kernels: activations in float32, 2-2.5x the speed of
torch's kernel from memory); up to `DECODE_ROWS` rows, or without it, to torch's
`_weight_int8pack_mm`, which takes them in bfloat16; longer inputs (a prompt's prefill) and
devices without either dequantize the weight and use `F.linear`. The token embedding stays in
its dtype (a step reads one row of it); a tied head gets its own int8 copy.

The quantized model is for inference: training and saving use the float weights.

`QuantLinear` holds weights in ggml's block formats instead (lmgen.ggml_blocks: Q8_0, Q4_0,
Q4_1, Q4_K, as a GGUF file stores them): a `.gguf` loads into it without dequantizing, and
`quantize="int4"` makes Q4_0 blocks from float weights. Up to `GEMV_ROWS` rows go to
lmgen.kernels.quant (int8 activations, integer block products, as llama.cpp); more rows (a
prompt) go to its GEMM (the same int8 activations, 16 weight rows at a time, AVX512-VNNI), or,
where that is not built, dequantize the weight and use torch's GEMM (docs/PERFORMANCE.md);
without the kernel the weight is dequantized once by the gguf package (float fallback).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .cli_args import QUANTIZE_METHODS
from .errors import ConfigError
from .ggml_blocks import (
    QuantTensor,
    deinterleave_q4_0,
    interleave_q4_0,
    quantize_q4_0,
    quantize_q8_0,
)
from .kernels import quant

METHODS = QUANTIZE_METHODS  # "int8", "int4", "none"
DECODE_ROWS = 8  # at most this many rows use the int8 kernel; more dequantize (prefill)
# At most this many rows use the block kernel's row product; more its GEMM. Measured on the
# products of SmolLM2-135M (Q8_0, Q4_0, Q4_1; 2 threads, AVX512-VNNI): the GEMM takes 0.40-0.45
# ms for seven products at 1 row against the row product's 0.13-0.18, about the same at 6 rows,
# 0.8x at 8 and 0.5-0.6x at 16 (a 16-token prompt's prefill of the Q4_1 file: 38 -> 25.6 ms).
GEMV_ROWS = 6


class Int8Linear(nn.Module):
    """`y = x @ (q * scale[:, None]).T + bias` with `q` int8 (out, in) and one scale per row."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = qweight.shape[1]
        self.out_features = qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)  # in the model's float dtype
        self.register_buffer("bias", bias)
        # torch's int8 product reads past the row when in_features is not a multiple of 16
        # (a segmentation fault with 40 or 72 inputs, torch 2.13): those dequantize instead
        self._kernel_ok = hasattr(torch, "_weight_int8pack_mm") and self.in_features % 16 == 0

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_weight(linear.weight.detach())
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(q, scale, bias)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.scale.dtype
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if x.device.type == "cpu" and 0 < rows <= kernels.MAX_ROWS and kernels.available():
            x2 = x.reshape(rows, self.in_features)
            y = kernels.decode_gemv(x2, self.qweight, self.scale, self.bias)
            return y.view(*x.shape[:-1], self.out_features)
        if self._kernel_ok and x.device.type == "cpu" and rows <= DECODE_ROWS:
            try:
                x2 = x.reshape(rows, self.in_features).to(torch.bfloat16)
                y = torch._weight_int8pack_mm(x2, self.qweight, self._bf16_scale())
                y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
                return y + self.bias if self.bias is not None else y
            except RuntimeError:  # kernel missing for this build: dequantize from now on
                self._kernel_ok = False
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def _bf16_scale(self) -> torch.Tensor:
        s = self.__dict__.get("_scale_bf16")
        if s is None or s.device != self.scale.device:
            s = self.scale.to(torch.bfloat16)
            self.__dict__["_scale_bf16"] = s
        return s

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, per-row scale in w's dtype): symmetric, round to nearest."""
    w32 = w.float()
    scale = (w32.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.to(w.dtype)


class QuantLinear(nn.Module):
    """`y = x @ W.T + bias` with W held as ggml blocks (module doc). W's output rows may come
    in parts of different types (a fused q/k/v whose v is Q6_K in a Q4_K_M file): each part is
    a QuantTensor, or a float weight where its type is not kept, and the outputs are
    concatenated. `parts[i]` is `self.blocks{i}` (uint8) or `self.weight{i}` (float).

    A Q4_0 part of whole groups of 8 rows is held interleaved for the kernel (kind "Q4_0x8",
    lmgen.ggml_blocks.interleave_q4_0: the one-row product's same bits, faster) where the
    kernel runs and `INTERLEAVE` is on; `kinds` names the layouts held, `parts()` gives the
    file's blocks back."""

    INTERLEAVE = True  # hold Q4_0 interleaved (off: the file's layout, for A/B measurements)

    def __init__(self, parts: list, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = parts[0].shape[1]
        self.out_features = sum(p.shape[0] for p in parts)
        self.kinds: list[str | None] = []
        self.names: list[str] = []  # each part's buffer name
        for i, p in enumerate(parts):
            quantized = isinstance(p, QuantTensor)
            kind = p.kind if quantized else None
            if quantized:
                held = p.blocks
                if kind == "Q4_0" and self._interleaves(p):
                    kind, held = "Q4_0x8", interleave_q4_0(p.blocks)
            self.names.append(f"blocks{i}" if quantized else f"weight{i}")
            self.register_buffer(self.names[-1], held if quantized else p)
            self.kinds.append(kind)
        self.register_buffer("bias", bias)

    def _interleaves(self, part: QuantTensor) -> bool:
        return (
            self.INTERLEAVE
            and part.shape[0] % 8 == 0
            and part.blocks.device.type == "cpu"
            and quant.available()
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> QuantLinear:
        """Q4_0 blocks of a float linear layer (`quantize="int4"`)."""
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls([quantize_q4_0(linear.weight)], bias)

    def parts(self) -> list:
        """Each part as a QuantTensor in the file's layout or a float weight, in output order."""
        out = []
        for k, n in zip(self.kinds, self.names, strict=True):
            t = self._buffers[n]
            if k == "Q4_0x8":
                k, t = "Q4_0", deinterleave_q4_0(t)
            out.append(QuantTensor(k, t, self.in_features) if k else t)
        return out

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        ws = [p.dequantize() if isinstance(p, QuantTensor) else p for p in self.parts()]
        return torch.cat([w.to(dtype) for w in ws]) if len(ws) > 1 else ws[0].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if x.device.type != "cpu" or not quant.available():
            w = self.__dict__.get("_float_weight")  # the fallback: dequantized once
            if w is None or w.device != x.device or w.dtype != x.dtype:
                w = self.__dict__["_float_weight"] = self.dequantized(x.dtype).to(x.device)
            return F.linear(x, w, self.bias)
        product = quant.gemv
        if rows > GEMV_ROWS:  # a prompt: the block GEMM, else torch's on the dequantized weight
            if not quant.has_gemm():
                return F.linear(x, self.dequantized(x.dtype), self.bias)
            product = quant.gemm
        return self._product(x, rows, product)

    def row_product(self, x: torch.Tensor) -> torch.Tensor:
        """`forward(x)` by the block kernel's row product for any number of rows: each row's
        bits its own, whatever the other rows (the server's running batch); every part ggml
        blocks, on CPU with lmgen.kernels.quant built."""
        return self._product(x, x.numel() // self.in_features, quant.gemv)

    def _product(self, x: torch.Tensor, rows: int, product) -> torch.Tensor:
        x2 = x.reshape(rows, self.in_features)
        buffers, ys = self._buffers, []  # (not nn.Module's attribute lookup: once per layer)
        for k, name in zip(self.kinds, self.names, strict=True):
            t = buffers[name]
            ys.append(product(x2, t, k) if k else F.linear(x2.float(), t.float()))
        y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
        bias = buffers["bias"]
        if bias is not None:
            y = y + bias
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kinds = ",".join(k or "float" for k in self.kinds)
        return f"in_features={self.in_features}, out_features={self.out_features}, {kinds}"


def quantize_model(model, method: str = "int8"):
    """Replaces every nn.Linear of a GPT (attention, MLP, head) by its int8 version (or, for
    "int4", Q4_0 blocks, and a tied embedding and head Q8_0; a layer whose inputs are not
    whole blocks of 32 stays float), in place; returns the model. "none" leaves it as is."""
    if method not in METHODS:
        raise ConfigError(f"quantize must be one of {METHODS}, got {method!r}", "quantize")
    if method == "none":
        return model

    def convert(linear):
        if not isinstance(linear, nn.Linear):
            return linear  # already quantized (a GGUF's blocks)
        if method == "int8":
            return Int8Linear.from_linear(linear)
        return QuantLinear.from_linear(linear) if linear.in_features % 32 == 0 else linear

    with torch.no_grad():
        for block in model.h:
            for parent, name in (
                (block.attn, "c_attn"),
                (block.attn, "c_proj"),
                (block.mlp, "c_fc"),
                (block.mlp, "c_proj"),
            ):
                setattr(parent, name, convert(getattr(parent, name)))
        tied = model.lm_head.weight is model.wte.weight if hasattr(model.lm_head, "weight") else 0
        if method == "int4" and tied and model.config.n_embd % 32 == 0:
            # the embedding in Q8_0 (as llama-quantize keeps it), read by the head as blocks
            q = quantize_q8_0(model.wte.weight)
            model.wte.weight.copy_(q.dequantize().to(model.wte.weight.dtype))
            model.ggml_embedding = q
            model.lm_head = QuantLinear([q], None)
        else:
            model.lm_head = convert(model.lm_head)
    model.reset_plan()
    return model


def is_quantized(model) -> bool:
    return any(isinstance(m, (Int8Linear, QuantLinear)) for m in model.modules())
