"""Matrix products for decode steps on CPU, reading the weights at the memory bandwidth.

A decode step multiplies one row per sequence by every weight matrix, so its speed is how fast
the weights stream from memory. Measured with torch 2.13 (MKL) on a 2-core AMD EPYC, fp32:

- Layout. `x @ W` with W stored (in, out) runs at 20-27 GB/s when out >= in, while the
  (out, in) layout that `nn.Linear` keeps runs at 12-13 GB/s; for out < in (the MLP's down
  projection) it is the other way round. `relayout_for_decode` stores each weight in its faster
  layout, in place: the parameter keeps its shape and values, only its strides change.
- Threads. A product with one row runs on one thread whatever `torch.get_num_threads()` says.
  `DecodeLinear` splits the weight into one part per thread (along the outputs, or along the
  inputs when the outputs do not divide) and multiplies the parts as one batched product,
  which torch spreads over the threads: 23-34 GB/s on two threads, against a measured 29-33 GB/s
  read bandwidth.

Results equal `F.linear` to float rounding (the summation order can differ); with one thread,
or more rows than `MAX_ROWS` (a prompt's prefill), it *is* `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 32  # more rows than this (prefill) use F.linear, which threads well on its own


def relayout_for_decode(model: nn.Module) -> None:
    """Stores every CPU `nn.Linear` weight of `model` with out > in as an (in, out) matrix
    (a tied embedding follows its head). Values, shapes and the state dict are unchanged.

    `lmgen.load` calls it. It replaces the parameters' storage, so it is for models loaded to
    generate, not for one being trained (an optimizer or DDP holds views of the old storage)."""
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            w = module.weight
            if w.device.type == "cpu" and w.shape[0] > w.shape[1] and w.is_contiguous():
                w.data = w.data.t().contiguous().t()


class DecodeLinear:
    """Callable like `linear.forward`; reads the module's weight and bias at each call, so
    `.to()`, `load_state_dict` and in-place edits are seen."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self._key = None
        self._parts = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        rows = x.numel() // w.shape[1] if w.shape[1] else 0
        if x.device.type != "cpu" or rows > MAX_ROWS or rows == 0:
            return F.linear(x, w, b)
        threads = torch.get_num_threads()
        if threads < 2:
            return F.linear(x, w, b)
        parts = self._split(w, b, threads)
        if parts is None:
            return F.linear(x, w, b)
        kind, w3, b3 = parts
        out_features, in_features = w.shape
        x2 = x.reshape(rows, in_features)
        if kind == "out":  # part j computes outputs [j*n, (j+1)*n)
            if b3 is None:
                y = torch.bmm(x2.expand(threads, rows, in_features), w3)
            else:
                y = torch.baddbmm(b3, x2.expand(threads, rows, in_features), w3)
            y = y.view(rows, out_features) if rows == 1 else y.transpose(0, 1).reshape(
                rows, out_features)
        else:  # part j sums over inputs [j*n, (j+1)*n); the parts are added
            x3 = x2.view(rows, threads, in_features // threads).transpose(0, 1)
            y = torch.bmm(x3, w3).sum(0)
            if b is not None:
                y = y + b
        return y.view(*x.shape[:-1], out_features)

    def _split(self, w: torch.Tensor, b: torch.Tensor | None, parts: int):
        key = (w.data_ptr(), w.stride(), w.dtype, None if b is None else b.data_ptr(), parts)
        if key != self._key:
            self._key, self._parts = key, _split_views(w, b, parts)
        return self._parts


def _split_views(w: torch.Tensor, b: torch.Tensor | None, parts: int):
    """("out" | "in", weight parts (parts, in/..., out/...), bias parts or None), all views of
    the weight; None when no split fits its layout."""
    out_features, in_features = w.shape
    if w.stride() == (1, out_features):  # stored (in, out)
        wt = w.t()
        if out_features % parts == 0:
            w3 = wt.view(in_features, parts, out_features // parts).permute(1, 0, 2)
            return "out", w3, None if b is None else b.view(parts, 1, out_features // parts)
        if in_features % parts == 0:
            return "in", wt.view(parts, in_features // parts, out_features), None
        return None
    if w.is_contiguous() and out_features % parts == 0:  # stored (out, in)
        w3 = w.view(parts, out_features // parts, in_features).transpose(1, 2)
        return "out", w3, None if b is None else b.view(parts, 1, out_features // parts)
    return None
