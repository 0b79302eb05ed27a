"""Matrix products for a prompt's prefill on CPU: many rows, bound by arithmetic, not memory.

A 512-token prompt multiplies (512, in) activations by every weight, compute-bound work for
whichever GEMM does it. Measured with torch 2.13 on a 2-core AMD EPYC (Zen 4, two threads, the
GPT-2-small and SmolLM2-135M shapes, 512 rows; docs/PERFORMANCE.md):

- `F.linear` in float32 (MKL's sgemm, which on an AMD CPU does not take its best code path)
  reaches 170-205 GFLOP/s, and with a bias first copies the bias into every output row;
- oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, the kernel torch's CPU compiler
  calls) reaches 210-225 GFLOP/s, near the two cores' peak, with the bias added in the kernel;
- torch's float16 product has no fast CPU kernel (38-47 GFLOP/s), while converting a float16
  weight to float32 costs a small part of the product over 512 rows. A float16 weight is
  therefore widened to float32 for the call and multiplied by oneDNN; the result is rounded to
  the activations' dtype once, as torch's float16 product rounds its float32 sums (the same
  numbers within float16 rounding). bfloat16 stays `F.linear`: torch already sends it to
  oneDNN's AVX512-BF16 kernel (400+ GFLOP/s).

Only the prefill takes these paths (`PrefillLinear`, above `decode_linear.MAX_ROWS` rows): a
decode step's products, and so its bits, stay decode_linear's.

A short prompt, up to `decode_linear.MAX_ROWS` rows of float32, is too few rows for oneDNN's
GEMM to reach its speed, and there lmgen's row kernel (`lmgen.kernels.decode_gemv`: register
tiles of several rows that reuse each block of W from cache) is faster: for one GPT-2-small
block's four products, 0.50x oneDNN's time at 8 rows, 0.64x at 16 and 0.77x at 32 (0.91x at
64, even near 100; one thread, alternated in one process on a shared 2-core EPYC), and
`lm.generate`'s time to first token after a 16-token prompt of the 124M shape went from 71 to
46 ms. The server's running batch feeds each prompt chunk through this same path
(lmgen.server.engine), so its short prompts gain the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import decode_linear, kernels

WIDENED = (torch.float32, torch.float16)  # weight dtypes multiplied in float32 by oneDNN
_onednn = {"ok": hasattr(torch.ops.mkldnn, "_linear_pointwise")}


def available() -> bool:
    """Whether oneDNN's linear is there (and lmgen's fast paths are on)."""
    return decode_linear.ENABLED and _onednn["ok"]


def takes(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `prefill_product` runs for these operands (otherwise: the decode paths):
    more than MAX_ROWS rows on CPU, float32 or float16 weights, float32 activations or
    activations of the weight's dtype, no autograd."""
    in_features = w.shape[1]
    rows = x.numel() // in_features if in_features else 0
    return (
        rows > decode_linear.MAX_ROWS
        and x.device.type == "cpu"
        and w.dtype in WIDENED
        and x.dtype in (w.dtype, torch.float32)
        and available()
        and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
    )


def prefill_product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, w, b)` by oneDNN in float32, in `x`'s dtype (module doc); only where
    `takes(x, w)`."""
    out_features, in_features = w.shape
    x2 = x.reshape(-1, in_features).float()
    w = w.float()
    b = None if b is None else b.float()
    try:
        y = torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")
    except RuntimeError:  # not in this build: F.linear from now on
        _onednn["ok"] = False
        y = F.linear(x2, w, b)
    return y.to(x.dtype).view(*x.shape[:-1], out_features)


def row_kernel_takes(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a short prompt's product goes to lmgen's row kernel (module doc): 1 to
    `decode_linear.MAX_ROWS` rows of float32 activations and weights on CPU, lmgen's fast
    paths on and its kernel built, no autograd."""
    in_features = w.shape[1]
    rows = x.numel() // in_features if in_features else 0
    return (
        0 < rows <= decode_linear.MAX_ROWS
        and x.dtype == w.dtype == torch.float32
        and x.device.type == "cpu"
        and w.is_contiguous()
        and decode_linear.ENABLED
        and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
        and kernels.available()
    )


class PrefillLinear:
    """Callable like `linear.forward` for the prefill's rows: `prefill_product` where it
    `takes` them, lmgen's row kernel for a short float32 prompt, `decode_linear.decode_product`
    otherwise (few rows of other dtypes, autograd). Reads the module's weight and bias at each
    call, as DecodeLinear does."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        if not torch.compiler.is_compiling():
            if takes(x, w):
                return prefill_product(x, w, b)
            if row_kernel_takes(x, w):
                y = kernels.decode_gemv(x.reshape(-1, w.shape[1]).contiguous(), w, None, b)
                return y.view(*x.shape[:-1], w.shape[0])
        return decode_linear.decode_product(x, w, b)
