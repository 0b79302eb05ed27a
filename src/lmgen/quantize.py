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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .errors import ConfigError

METHODS = ("int8",)
DECODE_ROWS = 8  # at most this many rows use the int8 kernel; more dequantize (prefill)


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


def quantize_model(model, method: str = "int8"):
    """Replaces every nn.Linear of a GPT (attention, MLP, head) by its int8 version, in place;
    returns the model."""
    if method not in METHODS:
        raise ConfigError(f"quantize must be one of {METHODS}, got {method!r}", "quantize")
    with torch.no_grad():
        for block in model.h:
            for parent, name in (
                (block.attn, "c_attn"),
                (block.attn, "c_proj"),
                (block.mlp, "c_fc"),
                (block.mlp, "c_proj"),
            ):
                setattr(parent, name, Int8Linear.from_linear(getattr(parent, name)))
        model.lm_head = Int8Linear.from_linear(model.lm_head)
    model.reset_plan()
    return model


def is_quantized(model) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
