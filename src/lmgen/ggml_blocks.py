"""Weights in llama.cpp's (ggml's) block formats, held as the bytes a GGUF file stores.

A `QuantTensor` is a 2-d weight (out, in) as one row of blocks per output: Q8_0 (32 weights,
an fp16 scale and 32 int8), Q4_0 (32 weights, an fp16 scale and 16 bytes of nibbles, value
(q - 8) d), Q4_1 (as Q4_0 plus an fp16 min, value q d + m), Q5_0 (as Q4_0 plus 32 high bits,
value (q - 16) d) or Q4_K (256 weights in 8 sub-blocks with 6-bit scales and mins). These are
the `KEPT` formats: read from a GGUF they stay as they are (lmgen.quantize.QuantLinear
multiplies by them, lmgen.kernels.quant), and written back the bytes are the same. Layouts as
ggml defines them (ggml-common.h); the `gguf` package (llama.cpp's Python reference)
dequantizes them where the kernel does not run.

`interleave_q4_0` lays a Q4_0 weight's rows out for the decode kernel (QuantLinear holds
them so, as kind "Q4_0x8"); `deinterleave_q4_0` gives the file's bytes back.

`quantize_q4_0` makes Q4_0 blocks from float weights (`--quantize int4`), the same bytes as
ggml's reference quantizer (`quantize_row_q4_0_ref`): d = the value of largest magnitude / -8,
q = trunc(w / d + 8.5) clipped to 0..15. `quantize_q8_0` (a tied embedding and head) is the
gguf package's own quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KEPT = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K")
# ggml type: (weights per block, bytes per block)
BLOCKS = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
          "Q4_K": (256, 144)}  # fmt: skip


@dataclass
class QuantTensor:
    """A weight (out, in) as `blocks`, uint8 (out, in / block * block_bytes), of ggml type
    `kind`."""

    kind: str
    blocks: torch.Tensor
    in_features: int

    def __post_init__(self):
        per, size = BLOCKS[self.kind]
        if self.blocks.dtype != torch.uint8 or self.blocks.dim() != 2:
            raise ValueError(f"{self.kind} blocks must be a 2-d uint8 tensor")
        if self.in_features % per or self.blocks.shape[1] != self.in_features // per * size:
            raise ValueError(
                f"{self.kind}: rows of {self.blocks.shape[1]} bytes do not hold "
                f"{self.in_features} weights"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks.shape[0], self.in_features)

    def dequantize(self) -> torch.Tensor:
        """The weight in float32, by the kernel where it runs, else by the gguf package."""
        from .kernels import quant

        if self.blocks.device.type == "cpu" and quant.available():
            return quant.dequantize(self.blocks.contiguous(), self.kind, self.in_features)
        return reference_dequantize(self.blocks, self.kind, self.in_features)


def reference_dequantize(blocks: torch.Tensor, kind: str, in_features: int) -> torch.Tensor:
    """ggml's reference dequantizer (the gguf package), float32 (out, in)."""
    import gguf

    raw = blocks.detach().cpu().contiguous().numpy()
    values = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind])
    out = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return out.reshape(blocks.shape[0], in_features).to(blocks.device)


def interleave_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_0 blocks (out, in / 32 * 18), out % 8 == 0, with each group of 8 rows interleaved
    for the one-row product (lmgen.kernels' quant_dot.h, kind Q4_0x8): per block, the 8 rows'
    fp16 scales, then 4 chunks of 32 bytes, chunk c holding bytes 4c..4c+3 of each row's 16
    quant bytes. The same bytes, moved; `deinterleave_q4_0` puts them back. Why: the kernel
    then unpacks 8 rows' inputs with one load, as llama.cpp's repacked Q4_0 (repack.cpp)."""
    out, row_bytes = blocks.shape
    nb = row_bytes // 18
    x = blocks.reshape(out // 8, 8, nb, 18)
    scales = x[..., :2].permute(0, 2, 1, 3).reshape(out // 8, nb, 16)
    quants = x[..., 2:].reshape(out // 8, 8, nb, 4, 4).permute(0, 2, 3, 1, 4)
    packed = torch.cat([scales, quants.reshape(out // 8, nb, 128)], dim=2)
    return packed.reshape(out, row_bytes).contiguous()


def deinterleave_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """The file's Q4_0 blocks back from `interleave_q4_0`'s layout."""
    out, row_bytes = blocks.shape
    nb = row_bytes // 18
    x = blocks.reshape(out // 8, nb, 144)
    scales = x[..., :16].reshape(out // 8, nb, 8, 2).permute(0, 2, 1, 3)
    quants = x[..., 16:].reshape(out // 8, nb, 4, 8, 4).permute(0, 3, 1, 2, 4)
    rows = torch.cat([scales, quants.reshape(out // 8, 8, nb, 16)], dim=3)
    return rows.reshape(out, row_bytes).contiguous()


def quantize_q4_0(w: torch.Tensor) -> QuantTensor:
    """Q4_0 blocks of a float weight (out, in), in % 32 == 0 (module doc)."""
    out_f, in_f = w.shape
    if in_f % 32:
        raise ValueError(f"Q4_0 needs inputs in whole blocks of 32, got {in_f}")
    b = w.detach().float().reshape(-1, 32)
    idx = b.abs().argmax(dim=1, keepdim=True)
    d = b.gather(1, idx) / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.trunc(b * inv + 8.5).clamp_(0, 15).to(torch.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    scale = d.to(torch.float16).view(torch.uint8)  # (n, 2): the fp16's little-endian bytes
    blocks = torch.cat([scale, packed], dim=1).reshape(out_f, in_f // 32 * 18)
    return QuantTensor("Q4_0", blocks.contiguous(), in_f)


def quantize_q8_0(w: torch.Tensor) -> QuantTensor:
    """Q8_0 blocks of a float weight (out, in), in % 32 == 0, by the gguf package."""
    import gguf

    raw = gguf.quants.quantize(w.detach().float().cpu().numpy(), gguf.GGMLQuantizationType.Q8_0)
    return QuantTensor("Q8_0", torch.from_numpy(np.ascontiguousarray(raw)), w.shape[1])
