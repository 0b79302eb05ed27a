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

from .model import InferencePlan, block_forward

# model -> (the plan it was compiled against, the step); a model whose plan is rebuilt
# (reset_plan, e.g. after quantizing) gets a new step.
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _AttendAt:
    """The decode step's attention: write one position, attend to all before it."""

    def __init__(self, layer: int, ks, vs, length: int):
        self.layer, self.ks, self.vs, self.length = layer, ks, vs, length

    def __call__(self, q, k, v):
        ck, cv = self.ks[self.layer], self.vs[self.layer]
        ck[:, :, self.length - 1 : self.length] = k
        cv[:, :, self.length - 1 : self.length] = v
        return F.scaled_dot_product_attention(q, ck[:, :, : self.length], cv[:, :, : self.length])


def _step(plan: InferencePlan, wte, wpe, input_ids, pos, length: int, ks, vs):
    B = input_ids.shape[0]
    H, D = plan.n_head, plan.head_dim
    x = (F.embedding(input_ids, wte) + F.embedding(pos, wpe)).view(B, -1)
    for i, ops in enumerate(plan.layers):
        x = block_forward(x, ops, B, 1, H, D, _AttendAt(i, ks, vs, length))
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
        cache.mark(start, None)
        pos = model.position(start, input_ids.device)
        ks = [kv[0] for kv in cache.layers]
        vs = [kv[1] for kv in cache.layers]
        logits = compiled(
            model.inference_plan(), model.wte.weight, model.wpe.weight, input_ids, pos,
            start + 1, ks, vs,
        )  # fmt: skip
        cache.advance(1)
        return logits

    if not compile_options:
        _compiled[model] = (plan, step)
    return step
