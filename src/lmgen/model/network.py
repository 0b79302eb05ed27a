"""The decoder, read top to bottom: embeddings, blocks of attention and MLP, the head.

One network for every family: GPT-2's learned positions and LayerNorm, Llama's RoPE, RMSNorm,
SwiGLU and grouped-query attention, Qwen's q/k/v bias and QK-norm, Mistral's and Gemma 3's
sliding windows, Gemma's four norms per block and scaled embeddings, GPT-NeoX's partial rotary
and parallel residual — each a field of GPTConfig (config.py), never a second network.

Shapes: B batch, T this call's tokens, S keys so far (cached + new), C n_embd, H query heads,
KV key/value heads, D head_dim, V vocab_size. The KV cache (kv_cache.py) and the inference
plan (plan.py: the same arithmetic without nn.Module dispatch, and the fused C++ step) live
beside this file, out of the network's way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import decode_linear, kernels
from ..errors import ContextLengthError, GenerationError
from .config import ACTIVATIONS, GPTConfig
from .kv_cache import KVCache
from .rope import Rope, apply_rope

# --- the parts ----------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm, in float32 as transformers computes it. Llama scales the result
    cast back to the input's dtype by `weight`; Gemma scales by `1 + weight` before the cast."""

    def __init__(self, dim: int, eps: float, unit_offset: bool = False):
        super().__init__()
        self.eps, self.unit_offset = eps, unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (h * (1.0 + self.weight.float())).type_as(x)
        return self.weight * h.to(x.dtype)


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.layer_norm_epsilon, config.norm_unit_offset)
    return nn.LayerNorm(dim, eps=config.layer_norm_epsilon, bias=config.norm_bias)


class CausalSelfAttention(nn.Module):
    """The fused q/k/v projection (H + 2 KV heads of D), optional QK-norm, and the output
    projection; the attention itself is the `attend` callable the forward pass hands in."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        H, KV, D, C = config.n_head, config.kv_heads, config.head_dim, config.n_embd
        self.layer_idx = layer_idx
        self.c_attn = nn.Linear(C, (H + 2 * KV) * D, bias=config.qkv_bias)  # q, k, v
        self.c_proj = nn.Linear(H * D, C, bias=config.attn_out_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(D, config.layer_norm_epsilon, config.norm_unit_offset)
            self.k_norm = RMSNorm(D, config.layer_norm_epsilon, config.norm_unit_offset)
        self.resid_dropout = nn.Dropout(config.dropout)


class MLP(nn.Module):
    """act(fc(x)) projected back; gated: fc holds [gate; up] and computes act(gate) * up."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        gated = config.mlp == "gated"
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim * (2 if gated else 1),
                              bias=config.mlp_bias)  # fmt: skip
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd, bias=config.mlp_bias)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)


class LayerShape(NamedTuple):
    """What a block's arithmetic needs besides its weights."""

    n_head: int
    n_kv_head: int
    head_dim: int
    gated: bool
    parallel: bool


class BlockOps(NamedTuple):
    """One block's operations, in the order `block_forward` applies them: module calls on the
    module path (hooks fire, dropout applies), plain functions in the inference plan."""

    ln_1: Callable
    c_attn: Callable
    attn_proj: Callable
    ln_2: Callable
    c_fc: Callable
    act: Callable
    mlp_proj: Callable
    attn_drop: Callable | None = None  # dropout (module path), None on the inference path
    mlp_drop: Callable | None = None
    q_norm: Callable | None = None  # QK-norm (Qwen3, Gemma 3)
    k_norm: Callable | None = None
    post_attn: Callable | None = None  # norms after attention / the MLP (Gemma 3)
    post_mlp: Callable | None = None


class Block(nn.Module):
    """Pre-norm block. The residual adds to the un-normalized stream (`x + attn(ln_1(x))`);
    overwriting `x` with `ln_1(x)` first, as the tutorial does, would discard that stream."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        if config.post_norms:
            self.ln_post_attn = make_norm(config)
            self.ln_post_mlp = make_norm(config)
        self.shape = layer_shape(config)

    def ops(self) -> BlockOps:
        """The block's operations as module calls (hooks fire, dropout applies)."""
        a, m = self.attn, self.mlp
        return BlockOps(
            self.ln_1, a.c_attn, a.c_proj, self.ln_2, m.c_fc, m.act, m.c_proj,
            a.resid_dropout, m.dropout, getattr(a, "q_norm", None), getattr(a, "k_norm", None),
            getattr(self, "ln_post_attn", None), getattr(self, "ln_post_mlp", None),
        )  # fmt: skip

    def plain_ops(self, linear: Callable) -> BlockOps:
        """The block's operations as plain functions (no hooks, no dropout), each linear layer
        wrapped by `linear` (the inference plan's DecodeLinear, the server's batch-invariant
        RowLinear)."""
        a, m = self.attn, self.mlp

        def fn(module):
            return None if module is None else module.forward

        return BlockOps(
            self.ln_1.forward, linear(a.c_attn), linear(a.c_proj), self.ln_2.forward,
            linear(m.c_fc), m.act, linear(m.c_proj), None, None,
            fn(getattr(a, "q_norm", None)), fn(getattr(a, "k_norm", None)),
            fn(getattr(self, "ln_post_attn", None)), fn(getattr(self, "ln_post_mlp", None)),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, attend: Callable, rope) -> torch.Tensor:
        B, T, _ = x.shape
        return block_forward(x, self.ops(), self.shape, B, T, rope, attend)


def layer_shape(config: GPTConfig) -> LayerShape:
    return LayerShape(config.n_head, config.kv_heads, config.head_dim,
                      config.mlp == "gated", config.parallel_residual)  # fmt: skip


def block_forward(
    x: torch.Tensor,
    ops: BlockOps,
    shape: LayerShape,
    B: int,
    T: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    attend: Callable,
) -> torch.Tensor:
    """A block's arithmetic, written once: the module path, the inference plan and the
    compiled decode step all run this. `x` is (B, T, C) or (B*T, C); `rope` is (cos, sin) or
    None; `attend(q, k, v)` takes (B, H, T, D) queries and (B, KV, T, D) keys and values and
    returns (B, H, T, D) (it writes the KV cache and chooses the mask)."""
    H, KV, D = shape.n_head, shape.n_kv_head, shape.head_dim
    qkv = ops.c_attn(ops.ln_1(x))  # (.., (H + 2KV) D)
    q, k, v = qkv.split((H * D, KV * D, KV * D), dim=-1)
    q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = k.view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
    v = v.view(B, T, KV, D).transpose(1, 2)  # (B, KV, T, D)
    if ops.q_norm is not None:
        q, k = ops.q_norm(q), ops.k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, k, *rope)
    y = attend(q, k, v).transpose(1, 2).reshape(*x.shape[:-1], H * D)  # (.., H D)
    a = ops.attn_proj(y)  # (.., C)
    if ops.post_attn is not None:
        a = ops.post_attn(a)
    if ops.attn_drop is not None:
        a = ops.attn_drop(a)
    if shape.parallel:  # GPT-NeoX: attention and MLP both read x
        return _mlp(ops, shape, ops.ln_2(x)) + a + x
    x = x + a
    return x + _mlp(ops, shape, ops.ln_2(x))


def _mlp(ops: BlockOps, shape: LayerShape, h: torch.Tensor) -> torch.Tensor:
    h = ops.c_fc(h)  # (.., inner) or (.., 2 inner)
    if shape.gated:
        gate, up = h.chunk(2, dim=-1)
        h = ops.act(gate) * up  # (.., inner)
    else:
        h = ops.act(h)
    m = ops.mlp_proj(h)  # (.., C)
    if ops.post_mlp is not None:
        m = ops.post_mlp(m)
    return m if ops.mlp_drop is None else ops.mlp_drop(m)


# --- the model ----------------------------------------------------------------------------


class GPT(nn.Module):
    """Token embeddings (+ a learned position table, GPT-2), `n_layer` blocks, a final norm and
    the head (tied to the embeddings or not)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.positions == "learned":
            self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init for the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """The weights the model has in float form: its parameters, plus each linear layer
        held quantized (int8, or a GGUF's blocks: buffers, not parameters) counted as its
        out x in weights and its bias; a tied head once, as its embedding."""
        n = sum(p.numel() for p in self.parameters())
        for name, m in self.named_modules():
            float_weight = isinstance(getattr(m, "weight", None), nn.Parameter)
            if float_weight or not hasattr(m, "in_features"):
                continue  # a float layer (counted above), or not a linear layer
            if name == "lm_head" and self.config.tie_word_embeddings:
                continue
            bias = getattr(m, "bias", None)
            n += m.in_features * m.out_features + (bias.numel() if bias is not None else 0)
        return n

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_length, dtype=p.dtype, device=p.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        early_exit: tuple[int, ...] = (),
    ):
        """Logits (batch, seq, vocab) for `input_ids` (batch, seq).

        `attention_mask` (batch, seq) marks real tokens (1) and left padding (0) of this call's
        tokens; with a `cache` it is appended to the cached mask and the cache advances.
        `logits_to_keep=n` computes the head for the last n positions only (1 when generating).
        With `output_attentions`, returns (logits, [weights per layer (batch, head, q, k)]);
        with `output_hidden_states`, (logits, the final hidden states (batch, seq, n_embd)
        after ln_f, every position) — what contrastive search compares. With `early_exit`
        (layer numbers: 0 the embeddings, i the output of block i), (logits, {layer: that
        layer's residual stream put through the LM head, the kept positions}) — DoLa's
        early layers, taken as transformers takes them (the head alone, no final norm).
        """
        B, T = input_ids.shape
        past = self._check_room(T, cache)
        masks, position_ids = self._masks_and_positions(
            input_ids, attention_mask, position_ids, cache, past
        )
        plan = None
        if not (self.training or output_attentions or early_exit):
            plan = self.inference_plan()
            if plan.hooked():  # forward hooks must fire: the module path
                plan = None
        attentions = []
        early: dict | None = {} if early_exit else None  # layer -> its output (B, T, C)
        if plan is not None:
            x = plan.run(input_ids, position_ids, cache, past, masks)  # (B, T, C)
        else:
            x = self._run_modules(input_ids, position_ids, cache, past, masks, attentions,
                                  output_attentions, early)  # fmt: skip
        if cache is not None:
            cache.advance(T)
        out = self._logits(x, plan, logits_to_keep, output_hidden_states, output_attentions,
                           attentions)  # fmt: skip
        if early_exit:
            keep = logits_to_keep or T
            return out, {i: self.lm_head(early[i][:, -keep:]) for i in early_exit}  # (B, keep, V)
        return out

    def run_blocks(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The residual stream after the last block (B, T, C) for `input_ids` (B, T) written
        into `cache` at its length, which then advances: `forward`'s eval-mode path through
        the inference plan (a prompt takes the prefill's products, plan.py), with neither the
        final norm nor the head, and no hooks. The server's running batch feeds each prompt
        chunk through it on its own, so a chunk gets the bits `forward` gives it."""
        T = input_ids.shape[1]
        past = self._check_room(T, cache)
        masks, position_ids = self._masks_and_positions(input_ids, None, None, cache, past)
        x = self.inference_plan().run(input_ids, position_ids, cache, past, masks)
        cache.advance(T)
        return x

    # --- the forward pass's steps ---

    def _check_room(self, T: int, cache: KVCache | None) -> int:
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ContextLengthError(
                f"sequence of {past + T} tokens exceeds the model's context of "
                f"{self.config.n_positions} positions (n_positions)"
            )
        if cache is not None and past + T > cache.max_length:
            raise GenerationError(f"KV cache holds {cache.max_length} positions, needs {past + T}")
        return past

    def embed(self, input_ids, position_ids, modules: bool = False) -> torch.Tensor:
        """Token embeddings (scaled by sqrt(C) in Gemma), plus learned positions (GPT-2);
        `modules=True` calls the embedding modules, so their hooks fire."""
        wte = self.wte if modules else lambda ids: F.embedding(ids, self.wte.weight)
        x = wte(input_ids)  # (B, T, C)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.n_embd**0.5, dtype=x.dtype)
        if self.config.positions == "learned":
            wpe = self.wpe if modules else lambda pos: F.embedding(pos, self.wpe.weight)
            x = x + wpe(position_ids)  # (B, T, C)
        return x

    @property
    def attn_scale(self) -> float | None:
        """The attention's scale when not 1/sqrt(head_dim) (Gemma's query_pre_attn_scalar)."""
        s = self.config.query_pre_attn_scalar
        return None if s is None else s**-0.5

    def ropes(self) -> list[Rope | None]:
        """Each layer's rotary frequencies (None with learned positions); sliding layers of
        Gemma 3 have a base of their own."""
        ropes = self.__dict__.get("_ropes")
        if ropes is None:
            c = self.config
            if c.positions != "rope":
                ropes = [None] * c.n_layer
            else:
                full = Rope(c.rotary_dim, c.rope_theta, c.rope_scaling, c.n_positions)
                local = full
                if c.rope_local_theta is not None:
                    local = Rope(c.rotary_dim, c.rope_local_theta, None, c.n_positions)
                ropes = [local if c.window(i) else full for i in range(c.n_layer)]
            self.__dict__["_ropes"] = ropes
        return ropes

    def rope_cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> list:
        """(cos, sin) per layer for this call (computed once per distinct frequency set)."""
        done: dict = {}
        out = []
        for rope in self.ropes():
            if rope is None:
                out.append(None)
                continue
            if id(rope) not in done:
                done[id(rope)] = rope.cos_sin(position_ids, dtype)
            out.append(done[id(rope)])
        return out

    def _run_modules(self, input_ids, position_ids, cache, past, masks, attentions, explicit,
                     layers: dict | None = None):  # fmt: skip
        """Every block as a module call: training (dropout), hooks, attention weights; each
        layer's output into `layers` when given (0: the embeddings)."""
        x = self.drop(self.embed(input_ids, position_ids, modules=True))
        dropout = self.config.dropout if self.training else 0.0
        cos_sin = self.rope_cos_sin(position_ids, x.dtype)
        if layers is not None:
            layers[0] = x
        for i, block in enumerate(self.h):
            attend = Attend(i, cache, past, masks.for_layer(self.config.window(i)), dropout,
                            False, explicit, self.attn_scale)  # fmt: skip
            x = block(x, attend, cos_sin[i])
            if explicit:
                attentions.append(attend.weights)
            if layers is not None:
                layers[i + 1] = x  # (B, T, C)
        return x

    def _logits(self, x, plan, logits_to_keep, output_hidden_states, output_attentions,
                attentions):  # fmt: skip
        ln_f, lm_head = (plan.ln_f, plan.lm_head) if plan is not None else (self.ln_f, self.lm_head)
        if output_hidden_states:
            h = ln_f(x)  # (B, T, C)
            return self.cap_logits(lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)), h
        if logits_to_keep and logits_to_keep < x.shape[1]:
            x = x[:, -logits_to_keep:]
        logits = plan.logits(x) if plan is not None else lm_head(ln_f(x))
        logits = self.cap_logits(logits)  # (B, T', V)
        return (logits, attentions) if output_attentions else logits

    def cap_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Gemma's final soft cap, cap * tanh(logits / cap), where the family has one."""
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def position(self, past: int, device) -> torch.Tensor:
        """A (1, 1) position tensor for `past`, from a table made once per device."""
        table = self.__dict__.get("_positions")
        if table is None or table.device != torch.device(device):
            table = torch.arange(self.config.n_positions, device=device)[:, None, None]
            self.__dict__["_positions"] = table
        return table[past]

    def _masks_and_positions(self, input_ids, attention_mask, position_ids, cache, past):
        B, T = input_ids.shape
        device = input_ids.device
        if T == 1 and cache is not None and cache.length > 0:
            key_mask, mask = self._step_mask(attention_mask, cache)
            if position_ids is None:
                if key_mask is not None:  # == positions_from_mask(key_mask)[:, past]
                    position_ids = (key_mask.sum(-1, keepdim=True) - 1).clamp_min(0)
                else:
                    position_ids = self.position(past, device)
        else:
            key_mask, mask = self._key_mask(attention_mask, cache, B, T, device)
            if mask is not None:
                mask = mask[:, None, :, :]
            if position_ids is None:
                if key_mask is not None:
                    position_ids = positions_from_mask(key_mask)[:, past : past + T]
                else:
                    position_ids = torch.arange(past, past + T, device=device)[None]
        masks = Masks(mask, mask is None and T > 1 and past == 0, past, T, device)
        return masks, position_ids

    def _step_mask(self, attention_mask, cache):
        """The one-token-step case of `_key_mask`: (key mask or None, SDPA mask or None)."""
        start = cache.length
        cache.mark(start, attention_mask[:, :1] if attention_mask is not None else None)
        if not cache.has_padding:
            return None, None
        key_mask = cache.mask[:, : start + 1]
        # The causal part is all-true for the last query; a padding query (never produced by
        # the decode loops) that sees nothing is let to see everything, as in `_key_mask`.
        allowed = key_mask | ~key_mask.any(-1, keepdim=True)
        return key_mask, allowed[:, None, None, :]

    def _key_mask(self, attention_mask, cache, B, T, device):
        """Returns (mask over all keys so far or None, attention mask (B, T, S) or None).

        None means "no padding anywhere": the fast causal paths apply."""
        if cache is not None:
            start, end = cache.length, cache.length + T
            cache.mark(start, attention_mask, T)
            if not cache.has_padding:
                if T == 1 or start == 0:
                    return None, None
                return None, causal_mask(T, end, device)[None].expand(B, T, end)
            key_mask = cache.mask[:, :end]
        else:
            if attention_mask is None or bool(attention_mask.all()):
                return None, None
            key_mask = attention_mask.bool()
        S = key_mask.shape[1]
        allowed = causal_mask(T, S, device)[None] & key_mask[:, None, :]
        # A padding query sees no key at all; let it see everything so softmax has no NaN.
        # Its output is never read: real tokens never attend to padding keys.
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        return key_mask, allowed

    # --- the inference plan (plan.py) ---

    def inference_plan(self):
        """The eval-mode operations, looked up once (rebuilt by `reset_plan`)."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = PLAN[0](self)
            self.__dict__["_plan"] = plan
        return plan.refresh()

    def reset_plan(self) -> None:
        """Forget the inference plan; call after replacing submodules (quantize does)."""
        self.__dict__.pop("_plan", None)

    def __getstate__(self):
        state = dict(super().__getstate__())
        for key in ("_plan", "_positions", "_ropes"):
            state.pop(key, None)
        return state


# plan.py's InferencePlan, registered there when the package is imported (plan.py builds on
# this module, so this module does not import it)
PLAN: list = [None]


# --- masks and attention ------------------------------------------------------------------


def causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """Boolean (q_len, k_len) mask; query i sits at key position k_len - q_len + i."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


class Masks:
    """What each layer may attend to in one call: the call's mask (None: causal, no padding)
    and, for sliding layers whose window the keys outgrow, that mask cut to the window
    (query at cache index i sees keys j with i - j < window, transformers' rule)."""

    def __init__(self, mask, causal: bool, past: int, T: int, device):
        self.mask, self.causal = mask, causal
        self.past, self.T, self.device = past, T, device
        self._windowed: dict[int, torch.Tensor] = {}

    def for_layer(self, window: int | None) -> tuple[torch.Tensor | None, bool]:
        """(mask or None, whether the plain causal fast path applies)."""
        S = self.past + self.T
        if window is None or S <= window:
            return self.mask, self.causal
        if window not in self._windowed:
            q = torch.arange(self.past, S, device=self.device)[:, None]
            k = torch.arange(S, device=self.device)[None, :]
            near = (q - k < window) & (k <= q)  # (T, S)
            allowed = near if self.mask is None else self.mask & near
            allowed = allowed | ~allowed.any(-1, keepdim=True)
            self._windowed[window] = allowed if allowed.dim() == 4 else allowed[None, None]
        return self._windowed[window], False


def attention_weights(q, k, v, mask, scale=None):
    """Explicit softmax attention that also returns its weights (for plots)."""
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale
    if mask is None:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return weights @ v, weights


def repeat_kv(k: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, KV, S, D) -> (B, H, S, D): each key/value head serves H / KV query heads."""
    n = n_head // k.shape[1]
    return k if n == 1 else k.repeat_interleave(n, dim=1)


class Attend:
    """One layer's attention for `block_forward`: writes this call's keys and values into the
    cache, then attends with the mask the call needs (causal, padding, window, or none)."""

    __slots__ = ("layer", "cache", "start", "mask", "causal", "dropout", "serial", "explicit",
                 "weights", "scale")  # fmt: skip

    def __init__(self, layer, cache, start, mask_causal, dropout, serial, explicit=False,
                 scale=None):  # fmt: skip
        self.layer, self.cache, self.start = layer, cache, start
        self.mask, self.causal = mask_causal
        self.dropout, self.serial, self.explicit = dropout, serial, explicit
        self.scale = scale
        self.weights = None

    def __call__(self, q, k, v):
        if self.cache is not None:
            k, v = self.cache.update(self.layer, self.start, k, v)  # (B, KV, S, D)
            if k.dtype != q.dtype:  # a widened float16 prefill (prefill.py): float32 queries
                k, v = k.to(q.dtype), v.to(q.dtype)
        H = q.shape[1]
        k, v = repeat_kv(k, H), repeat_kv(v, H)  # (B, H, S, D)
        if self.explicit:
            y, self.weights = attention_weights(q, k, v, self.mask, self.scale)
            return y
        if self.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout,
                                                  scale=self.scale)  # fmt: skip
        # a decode step's one query goes to lmgen.kernels where it can: torch's kernel takes
        # 20-35 us a layer in float32 and 60-150 in half precision at 100 positions, this 20-27
        one_query = (
            self.mask is None
            and self.scale is None
            and q.shape[2] == 1
            and q.device.type == "cpu"
            and not self.dropout
            and q.dtype in kernels.DTYPES
            and decode_linear.ENABLED
            and not (torch.is_grad_enabled() and q.requires_grad)
            and kernels.available()
        )
        if self.serial:
            # plan.SERIAL_DECODE_ATTENTION runs the one-query attention of a decode step on one
            # thread: on a machine whose cores are busy with other jobs, the kernel's fork/join
            # stalls for milliseconds. Off by default: on an idle machine the threads win (7-10%
            # for beams and batches of 8 on the 14M shape).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                if one_query:
                    return kernels.decode_attention(q, k, v)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask,
                                                      scale=self.scale)  # fmt: skip
            finally:
                torch.set_num_threads(threads)
        if one_query:
            return kernels.decode_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=self.dropout,
                                              scale=self.scale)  # fmt: skip
