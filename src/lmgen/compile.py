"""An optional torch.compile'd decode step (CPU inductor or CUDA).

`compile_decode_step(model)` returns `step(input_ids, cache=)`, a drop-in for
`model(input_ids, cache=cache)` on one-token steps: the step is a pure function of the token,
its position and the KV cache tensors, running the model's own `block_forward`, compiled once
with the position and the cache length dynamic, so a new length does not recompile. Rows with
left padding, and anything but one token, go to the eager model. The first call pays the
compile time (tens of seconds on a small CPU); the benchmark reports it.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from .model.network import block_forward, repeat_kv
from .model.plan import InferencePlan

# model -> (the plan it was compiled against, the step); a model whose plan is rebuilt
# (reset_plan, e.g. after quantizing) gets a new step.
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _AttendAt:
    """The decode step's attention: write one position, attend to all before it."""

    def __init__(self, layer: int, ks, vs, length: int, scale):
        self.layer, self.ks, self.vs, self.length, self.scale = layer, ks, vs, length, scale

    def __call__(self, q, k, v):
        ck, cv = self.ks[self.layer], self.vs[self.layer]
        ck[:, :, self.length - 1 : self.length] = k
        cv[:, :, self.length - 1 : self.length] = v
        H = q.shape[1]
        k, v = repeat_kv(ck[:, :, : self.length], H), repeat_kv(cv[:, :, : self.length], H)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)


def _step(plan: InferencePlan, x, cos_sin, length: int, ks, vs):
    """The blocks and the head for one token a row; x (B, C) is the embedded token."""
    B = x.shape[0]
    for i, ops in enumerate(plan.layers):
        attend = _AttendAt(i, ks, vs, length, plan.scale)
        x = block_forward(x, ops, plan.shape, B, 1, cos_sin[i], attend)
    return plan.lm_head(plan.ln_f(x.view(B, 1, -1)))


def compile_decode_step(model, **compile_options):
    """A compiled one-token decode step for `model` (remembered per model)."""
    plan = model.inference_plan()
    known = _compiled.get(model)
    if known is not None and known[0] is plan and not compile_options:
        return known[1]
    options = {"dynamic": True, **compile_options}
    compiled = torch.compile(_step, **options)

    def step(input_ids: torch.Tensor, *, cache, attention_mask=None, **kwargs):
        if (
            input_ids.shape[1] != 1
            or cache is None
            or cache.has_padding
            or kwargs
            or attention_mask is not None
            or cache.length == 0
            or model.training
        ):
            return model(input_ids, attention_mask=attention_mask, cache=cache, **kwargs)
        start = cache.length
        if start + 1 > min(cache.max_length, model.config.n_positions):
            return model(input_ids, cache=cache)  # raises the usual error
        if any(w is not None and start + 1 > w for w in plan.windows):
            return model(input_ids, cache=cache)  # a sliding window needs its mask
        cache.mark(start, None)
        pos = model.position(start, input_ids.device)
        ks = [kv[0] for kv in cache.layers]
        vs = [kv[1] for kv in cache.layers]
        x = model.embed(input_ids, pos).view(input_ids.shape[0], -1)  # (B, C)
        cos_sin = model.rope_cos_sin(pos, x.dtype)
        logits = model.cap_logits(compiled(model.inference_plan(), x, cos_sin, start + 1, ks, vs))
        cache.advance(1)
        return logits

    if not compile_options:
        _compiled[model] = (plan, step)
    return step
