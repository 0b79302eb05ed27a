"""The inference plan: the network's eval-mode arithmetic without nn.Module dispatch.

A small model's decode step is mostly the dispatch of ~30 small operations per block; the plan
looks the submodules' functions up once (linear layers through `DecodeLinear`), runs the same
`block_forward` the modules run, and hands an unpadded CPU decode step of GPT-2 blocks to
`lmgen.kernels.decode_step` (rotary blocks to `decode_step_rope`), every block in one call,
whether the linear layers hold float, int8 or ggml-block weights (a QuantLinear's parts go
beside the parameter list: `_Blocks`); `rows_step` does the same for the server's rows, each
with a cache of its own. The network
(network.py) stays free of all this; `GPT.forward` takes the plan whenever no hook has to fire
and nothing trains.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .. import decode_linear, kernels
from ..decode_linear import DecodeLinear
from . import network, prefill
from .network import Attend, RMSNorm, block_forward, layer_shape

SERIAL_DECODE_ATTENTION = False  # one-query attention on one thread (see Attend.__call__)
FUSED_DECODE_STEP = True  # False: decode steps run block by block (the reference; tests compare)
_ACTIVATION_CODES = {"gelu_new": 0, "gelu_pytorch_tanh": 0, "gelu_fast": 0, "gelu": 1, "relu": 2,
                     "silu": 3, "swish": 3}  # fmt: skip

# Counts every parameter, buffer and submodule assigned to any module in the process (torch's
# global registration hooks): the fused decode step holds the blocks' tensors in a list, which
# must be gathered again when one is replaced (`load_state_dict(assign=True)`, a new Parameter,
# a swapped layer), while `.to()`, `load_state_dict` and in-place edits keep the same tensors.
_REGISTRATIONS = [0]


def _count_registration(*args) -> None:
    _REGISTRATIONS[0] += 1


for _register in (
    nn.modules.module.register_module_parameter_registration_hook,
    nn.modules.module.register_module_buffer_registration_hook,
    nn.modules.module.register_module_module_registration_hook,
):
    _register(_count_registration)


def _decode_fn(module: nn.Module | None):
    if module is None:
        return None
    return DecodeLinear(module) if isinstance(module, nn.Linear) else module.forward


class InferencePlan:
    """The submodules' forward functions, looked up once rather than through
    `nn.Module.__getattr__` and `__call__` on every token (no hooks run on this path).
    `refresh()` (every forward) looks again after any module, parameter or buffer was assigned
    anywhere (`_REGISTRATIONS`): the fused step's tensor list is gathered anew, and the
    functions too if a layer was swapped; the plan stays the same object (compile.py keys its
    compiled step on it)."""

    def __init__(self, model):
        c = model.config
        self.n_head = c.n_head
        self.head_dim = c.head_dim
        self.shape = layer_shape(c)
        self.windows = [c.window(i) for i in range(c.n_layer)]
        self.scale = model.attn_scale
        self.activation = _ACTIVATION_CODES.get(c.activation_function)
        self.eps = c.layer_norm_epsilon
        self._model = weakref.ref(model)  # weak: the plan lives in the model (and compile.py's
        # per-model cache holds plans)
        self._generation = None
        self._module_ids = None
        self.refresh()

    def refresh(self) -> InferencePlan:
        if self._generation == _REGISTRATIONS[0]:
            return self
        model = self._model()
        module_ids = [id(m) for m in model.modules()]
        if module_ids != self._module_ids:
            self._look_up(model)
            self._module_ids = module_ids
        self.step_params, self.rope_params, self.blocks = None, None, ((), ())
        if self.activation is not None:
            self.step_params, self.blocks = _gather(_step_params, model)
            if self.step_params is None:
                self.rope_params, self.blocks = _gather(_rope_step_params, model)
        self.head_params, self.head_blocks = _gather(_head_params, model)
        self._generation = _REGISTRATIONS[0]
        return self

    def _look_up(self, model) -> None:
        self.layers = [b.plain_ops(_decode_fn) for b in model.h]
        # a prompt's blocks (model/prefill.py): prefill_linear's products; float16 widened
        self.prefill_layers = prefill.prefill_ops(model.h)
        self.widened_layers = prefill.widened_ops(model.h)
        self.ln_f = model.ln_f.forward
        self.lm_head = _decode_fn(model.lm_head)
        norm = model.ln_f
        self.head_eps = norm.eps
        self.head_norm = (2 if norm.unit_offset else 1) if isinstance(norm, RMSNorm) else 0
        # each layer's index among the distinct rotary frequency sets (_rope_tables)
        ropes = model.ropes()
        distinct = list({id(r): r for r in ropes if r is not None}.values())
        self.distinct_ropes = distinct
        self.rope_layers = torch.tensor([distinct.index(r) for r in ropes if r is not None])
        self.modules = [m for m in model.modules() if m is not model]
        self._hook_dicts = [m._forward_hooks for m in self.modules] + [
            m._forward_pre_hooks for m in self.modules
        ]

    def hooked(self) -> bool:
        """Whether any submodule has forward hooks: then the module path runs, so they fire."""
        from torch.nn.modules import module as M

        if M._global_forward_hooks or M._global_forward_pre_hooks:
            return True
        # the modules' hook dicts, gathered once: registering a hook fills the same dict, and
        # `any` over them runs in C (a generator over 70+ modules cost 80 us a token)
        return any(self._hook_dicts)

    def run(self, input_ids, position_ids, cache, past: int, masks) -> torch.Tensor:
        """The blocks' output (B, T, C) for this call."""
        model = self._model()
        B, T = input_ids.shape
        x = model.embed(input_ids, position_ids).view(B * T, -1)  # 2-d rows for the products
        serial = (
            SERIAL_DECODE_ATTENTION
            and T == 1
            and x.device.type == "cpu"
            and torch.get_num_threads() > 1
        )
        if T == 1 and masks.mask is None and not serial and self._fused(x, B, cache, past):
            # every block in one call (lmgen.kernels.decode_step / decode_step_rope)
            if self.step_params is not None:
                x = kernels.decode_step(
                    x, self.step_params, cache.k, cache.v, past, self.n_head, self.eps,
                    self.activation, self.blocks,
                )  # fmt: skip
            else:
                x = self._rope_step(model, x, position_ids, cache, past)
            return x.view(B, T, -1)
        dtype, layers = x.dtype, self.layers
        if T > 1:  # a prompt (model/prefill.py)
            layers = self.prefill_layers
            if prefill.widens(model, x):
                x, layers = x.float(), self.widened_layers
        cos_sin = model.rope_cos_sin(position_ids, x.dtype)
        for i, ops in enumerate(layers):
            attend = Attend(i, cache, past, masks.for_layer(self.windows[i]), 0.0, serial,
                            False, self.scale)  # fmt: skip
            x = block_forward(x, ops, self.shape, B, T, cos_sin[i], attend)
        return x.to(dtype).view(B, T, -1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """`lm_head(ln_f(x))` for x (B, T, C): in one call (`head_rows`) for the few rows of a
        decode step or a prompt's last position where it runs, op by op otherwise."""
        B, T, C = x.shape
        if B * T <= kernels.MAX_ROWS and self.fuses_head(x):
            return self.head_rows(x.reshape(B * T, C)).view(B, T, -1)
        return self.lm_head(self.ln_f(x))

    def head_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (rows, vocab) of x (rows, C) by `lmgen.kernels.decode_head`: the final norm
        and the head's product in one call, each row's bits the same whatever the other rows
        (the server's running batch takes it for all its rows); only where `fuses_head(x)`."""
        return kernels.decode_head(x, self.head_params, self.head_eps, self.head_norm,
                                   self.head_blocks)  # fmt: skip

    def fuses_head(self, x: torch.Tensor) -> bool:
        """Whether `head_rows` runs for activations like `x`: a final norm and a head the kernel
        knows, and the fused step's conditions."""
        return self.head_params is not None and self.fuses_rows(x)

    def _rope_step(self, model, x, position_ids, cache, past: int) -> torch.Tensor:
        """The rotary families' fused step at one position for every row."""
        cos, sin = self._rope_tables(model, position_ids[:1, :1])
        return kernels.decode_step_rope(x, self.rope_params, cache.k, cache.v, past,
                                        *self._rope_shape(model), cos[0], sin[0],
                                        *self._rope_tail(model), self.blocks)  # fmt: skip

    def rows_step(self, x: torch.Tensor, caches: list, positions: list[int]) -> torch.Tensor:
        """Every block of one decode step for rows that each have a cache of their own (the
        server's running batch; `caches[b]` a 1-row `KVCache` written at `positions[b]`):
        `x` (rows, C) the step's embeddings, returned as the residual stream after the last
        block. Only where `fuses_rows(x)`; the caches are written but not advanced."""
        model = self._model()
        k = [c.k for c in caches]
        v = [c.v for c in caches]
        if self.step_params is not None:
            return kernels.decode_step_rows(
                x, self.step_params, k, v, positions, self.n_head, self.eps, self.activation,
                self.blocks,
            )  # fmt: skip
        cos, sin = self._rope_tables(model, torch.tensor([positions], device=x.device))
        return kernels.decode_step_rope_rows(x, self.rope_params, k, v, positions,
                                             *self._rope_shape(model), cos, sin,
                                             *self._rope_tail(model), self.blocks)  # fmt: skip

    def _rope_tables(self, model, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (rows, n_layer, rot) float32 at each row's position (position_ids
        (1, rows)), as the rotary fused steps take them: each distinct frequency set's rows
        looked up once (`Rope.cos_sin`), then spread to the layers that use it."""
        rows, n_layer = position_ids.shape[1], len(self.rope_layers)
        tables = [rope.cos_sin(position_ids, torch.float32) for rope in self.distinct_ropes]
        if len(tables) == 1:  # one set for every layer (all but Gemma's local/global)
            return tuple(t.reshape(rows, 1, -1).expand(rows, n_layer, -1).contiguous()
                         for t in tables[0])  # fmt: skip
        return tuple(torch.stack([t.reshape(rows, -1) for t in ts], 1)
                     .index_select(1, self.rope_layers.to(position_ids.device)).contiguous()
                     for ts in zip(*tables, strict=True))  # fmt: skip

    def _rope_shape(self, model) -> tuple:
        """The rotary steps' arguments before cos and sin: (heads, KV heads, head_dim), eps,
        the activation."""
        c = model.config
        return (c.n_head, c.kv_heads, c.head_dim), self.eps, self.activation

    def _rope_tail(self, model) -> tuple:
        """The rotary steps' arguments after cos and sin: windows, scale, Gemma's unit offset."""
        c = model.config
        scale = self.scale if self.scale is not None else c.head_dim**-0.5
        return [w or 0 for w in self.windows], scale, c.norm_unit_offset

    def fuses_rows(self, x: torch.Tensor) -> bool:
        """Whether `rows_step` runs for activations like `x`: the fused step's conditions,
        for any number of rows."""
        return (
            FUSED_DECODE_STEP
            and decode_linear.ENABLED
            and (self.step_params is not None or self.rope_params is not None)
            and x.device.type == "cpu"
            and x.dtype in kernels.DTYPES
            and not (torch.is_grad_enabled() and x.requires_grad)
            and kernels.available()
        )

    def _fused(self, x, B: int, cache, past: int) -> bool:
        return cache is not None and past > 0 and B <= kernels.MAX_ROWS and self.fuses_rows(x)


class _Blocks:
    """The linear layers held as ggml blocks, as the fused steps take them (decode.cpp's
    BlockReader): `tensors` every part in order, `parts` per linear layer of the parameter
    list its count of parts (0: a plain weight in the list) and each part's ggml type (0 a
    float part)."""

    def __init__(self):
        self.tensors: list[torch.Tensor] = []
        self.parts: list[int] = []


def _gather(params_of, model) -> tuple[list | None, tuple]:
    """(the fused step's parameter list, (block tensors, parts)) by `params_of`, or (None, ((),
    ())) where the model is not for that step."""
    blocks = _Blocks()
    params = params_of(model, blocks)
    return (params, (blocks.tensors, blocks.parts)) if params is not None else (None, ((), ()))


def _linear_params(m, blocks: _Blocks) -> list | None:
    """A linear layer's three slots of the parameter list (weight, scale, bias); a QuantLinear's
    weight slot is None and its parts go to `blocks`. None: a layer the kernel does not know."""
    from ..kernels import quant
    from ..quantize import Int8Linear, QuantLinear

    if type(m) is nn.Linear:
        blocks.parts.append(0)
        return [m.weight, None, m.bias]
    if isinstance(m, Int8Linear):
        blocks.parts.append(0)
        return [m.qweight, m.scale, m.bias]
    if isinstance(m, QuantLinear) and quant.available():
        blocks.parts += [len(m.kinds), *(quant.KINDS[k] if k else 0 for k in m.kinds)]
        blocks.tensors += [m._buffers[n] for n in m.names]
        return [None, None, m.bias]
    return None


def _rope_step_params(model, blocks: _Blocks) -> list | None:
    """The blocks' tensors in the order lmgen.kernels.decode_step_rope takes them (18 per
    layer), or None when the model is not a rotary, RMSNorm, gated-MLP, sequential-residual
    decoder of plain, int8 or ggml-block linears (then steps run block by block)."""
    c = model.config
    if not (c.positions == "rope" and c.norm == "rmsnorm" and c.mlp == "gated"
            and not c.parallel_residual and c.activation_function in ("silu", "swish",
            "gelu_pytorch_tanh", "gelu_new", "gelu_fast")):  # fmt: skip
        return None
    out = []
    for b in model.h:
        a = b.attn
        parts = [_linear_params(m, blocks) for m in (a.c_attn, a.c_proj, b.mlp.c_fc,
                                                     b.mlp.c_proj)]  # fmt: skip
        if None in parts or not isinstance(b.ln_1, RMSNorm):
            return None
        qkv, o, fc, down = parts
        q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        post_attn, post_mlp = getattr(b, "ln_post_attn", None), getattr(b, "ln_post_mlp", None)
        out += [b.ln_1.weight, *qkv, *o, q_norm and q_norm.weight, k_norm and k_norm.weight,
                b.ln_2.weight, *fc, *down, post_attn and post_attn.weight,
                post_mlp and post_mlp.weight]  # fmt: skip
    return out


def _head_params(model, blocks: _Blocks) -> list | None:
    """The final norm's and the head's tensors as lmgen.kernels.decode_head takes them (norm
    weight, norm bias, head weight, scale, bias), or None where the norm or the head is one
    the kernel does not know (then the head runs op by op)."""
    norm = model.ln_f
    if not (isinstance(norm, RMSNorm) or (type(norm) is nn.LayerNorm and norm.weight is not None)):
        return None
    head = _linear_params(model.lm_head, blocks)
    if head is None:
        return None
    return [norm.weight, getattr(norm, "bias", None), *head]


def _step_params(model, blocks: _Blocks) -> list | None:
    """The blocks' tensors in the order lmgen.kernels.decode_step takes them (16 per layer), or
    None when a block is not GPT-2's or holds a layer the kernel does not know (then steps run
    block by block)."""
    if not model.config.is_gpt2_block:
        return None

    out = []
    for b in model.h:
        parts = [
            _linear_params(m, blocks)
            for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
        ]
        if None in parts or b.ln_1.bias is None or b.ln_2.bias is None:
            return None
        qkv, proj, fc, mproj = parts
        out += [b.ln_1.weight, b.ln_1.bias, *qkv, *proj, b.ln_2.weight, b.ln_2.bias, *fc, *mproj]
    return out


network.PLAN[0] = InferencePlan  # GPT.inference_plan builds this
