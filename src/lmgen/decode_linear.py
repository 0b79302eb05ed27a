"""Matrix products for decode steps on CPU, reading the weights at the memory bandwidth.

A decode step multiplies one row per sequence by every weight matrix, so its speed is how fast
the weights stream from memory. `F.linear` does not get there on CPU for a few rows: MKL's
product with one row reads an (out, in) weight at 10-20 GB/s on one thread, whatever
`torch.get_num_threads()` says. Measured with torch 2.13 on a 2-core AMD EPYC (fp32, 29-35 GB/s
read bandwidth by a plain sum), the same numbers come out faster when the product is turned
around and split:

- up to `SWAP_ROWS` rows, `y.T = W @ x.T` with W's output rows cut into `parts` equal blocks,
  as one batched product (`torch.baddbmm`): 25-30 GB/s on one thread and 30-35 GB/s on two,
  for every shape of GPT-2 small and the 14M benchmark model. Turned around, the down
  projection (out < in) is slow from three rows up (13-14 GB/s at 4), so it takes the next
  path there;
- up to `MAX_ROWS` rows, oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, the kernel
  torch's CPU compiler calls): 14-22 GB/s at 4-8 rows, against 7-11 for `F.linear`.

More rows (a prompt's prefill) are compute-bound and `F.linear` threads them well.

Where lmgen's own kernel builds (lmgen.kernels: x86 with AVX2/FMA/F16C and a C++ compiler), up
to `kernels.MAX_ROWS` rows of every float dtype go to it instead: it converts float16 and
bfloat16 weights to float32 as they stream and reads all three at 25-32 GB/s from memory,
where torch's bfloat16 product reads 12-17 and its float16 one 24-28 (cycled through 300 MB
of weights, so none comes from cache; docs/PERFORMANCE.md). The weights stay as they are (no
copy, no relayout); results equal `F.linear` to float rounding, since the summation order can
differ.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

SWAP_ROWS = 4
MAX_ROWS = 32
# False: every product is F.linear and the model's decode steps use no lmgen.kernels either
# (the reference; tests compare the two)
ENABLED = True


@functools.lru_cache(maxsize=256)
def split_parts(out_features: int, threads: int) -> int:
    """Blocks for the turned-around product: the smallest divisor of `out_features` that is at
    least max(2, threads) and at most 64; 0 when there is none (then no split)."""
    for p in range(max(2, threads), 65):
        if out_features % p == 0:
            return p
    return 0


class DecodeLinear:
    """Callable like `linear.forward`; reads the module's weight and bias at each call, so
    `.to()`, `load_state_dict` and in-place edits are seen."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        if torch.compiler.is_compiling():
            # an opaque op for torch.compile: traced, the batched product's one-column
            # operand becomes a generated loop 3x slower than the kernel
            return torch.ops.lmgen.decode_linear(x, w, b)
        return decode_product(x, w, b)


_onednn = {"ok": hasattr(torch.ops.mkldnn, "_linear_pointwise")}


def decode_product(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, w, b)`, by the fastest path for a decode step's few rows (module doc)."""
    out_features, in_features = w.shape
    rows = x.numel() // in_features if in_features else 0
    if (
        not ENABLED
        or x.device.type != "cpu"
        or not 0 < rows <= MAX_ROWS
        or not w.is_contiguous()
        or x.dtype != w.dtype
        or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
    ):
        return F.linear(x, w, b)  # (these kernels have no backward: autograd gets F.linear)
    if rows <= kernels.MAX_ROWS and w.dtype in kernels.DTYPES and kernels.available():
        y = kernels.decode_gemv(x.reshape(rows, in_features), w, None, b)
        return y.view(*x.shape[:-1], out_features)
    if w.dtype != torch.float32:
        return F.linear(x, w, b)
    x2 = x.reshape(rows, in_features)
    if rows <= 2 or (rows <= SWAP_ROWS and out_features >= in_features):
        parts = split_parts(out_features, torch.get_num_threads())
        if parts:
            return _swapped(x2, w, b, parts).view(*x.shape[:-1], out_features)
    if _onednn["ok"]:
        try:
            y = torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")
            return y.view(*x.shape[:-1], out_features)
        except RuntimeError:  # not in this build: F.linear from now on
            _onednn["ok"] = False
    return F.linear(x, w, b)


@torch.library.custom_op(
    "lmgen::decode_linear", mutates_args=(), schema="(Tensor x, Tensor w, Tensor? b) -> Tensor"
)
def _decode_linear_op(x, w, b):
    return decode_product(x, w, b)  # always a new tensor (an op may not alias its input)


@_decode_linear_op.register_fake
def _(x, w, b):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _swapped(x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, parts: int):
    """x2 @ w.T + b as (w @ x2.T).T, w's rows in `parts` blocks of one batched product."""
    rows = x2.shape[0]
    out_features, in_features = w.shape
    w3 = w.view(parts, out_features // parts, in_features)
    xt = x2.t().expand(parts, in_features, rows)
    if b is None:
        y = torch.bmm(w3, xt)
    else:
        y = torch.baddbmm(b.view(parts, out_features // parts, 1), w3, xt)
    y = y.view(out_features, rows)
    return y.view(1, out_features) if rows == 1 else y.t().contiguous()
