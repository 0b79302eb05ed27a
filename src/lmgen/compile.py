"""An optional torch.compile'd decode step (CPU inductor or CUDA).

`compile_decode_step(model)` returns `step(input_ids, cache=)`, a drop-in for
`model(input_ids, cache=cache)` on one-token steps: the step is a pure function of the token,
its position and the KV cache tensors, compiled once with the position and the cache length
dynamic, so a new length does not recompile. Rows with left padding, and anything but one
token, go to the eager model. The first call pays the compile time (tens of seconds on a small
CPU); the benchmark reports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _step(model, input_ids: torch.Tensor, pos: torch.Tensor, length: int, ks, vs):
    plan = model._get_plan()
    B = input_ids.shape[0]
    H, D = plan.n_head, plan.head_dim
    C = H * D
    x = F.embedding(input_ids, model.wte.weight) + F.embedding(pos, model.wpe.weight)
    for i, (ln_1, c_attn, attn_proj, ln_2, c_fc, act, mlp_proj) in enumerate(plan.layers):
        q, k, v = c_attn(ln_1(x)).view(B, 1, 3, H, D).permute(2, 0, 3, 1, 4)
        ks[i][:, :, length - 1 : length] = k
        vs[i][:, :, length - 1 : length] = v
        y = F.scaled_dot_product_attention(q, ks[i][:, :, :length], vs[i][:, :, :length])
        x = x + attn_proj(y.transpose(1, 2).reshape(B, 1, C))
        x = x + mlp_proj(act(c_fc(ln_2(x))))
    return plan.lm_head(plan.ln_f(x))


def compile_decode_step(model, **compile_options):
    """A compiled one-token decode step for `model` (cached on the model)."""
    cached = model.__dict__.get("_compiled_step")
    if cached is not None and not compile_options:
        return cached
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
        cache.mask[:, start] = True
        pos = model._position(start, input_ids.device)
        ks = [kv[0] for kv in cache.layers]
        vs = [kv[1] for kv in cache.layers]
        logits = compiled(model, input_ids, pos, start + 1, ks, vs)
        cache.length = start + 1
        return logits

    if not compile_options:
        model.__dict__["_compiled_step"] = step
    return step
