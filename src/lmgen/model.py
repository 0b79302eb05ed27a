"""The network: GPT-2-shaped decoder with a preallocated KV cache. No I/O, no decoding."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import decode_linear, kernels
from .decode_linear import DecodeLinear
from .errors import ConfigError, ContextLengthError, GenerationError

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


@dataclass
class GPTConfig:
    """Hyper-parameters; defaults are GPT-2 small's. `activation_function="gelu"` with
    `tie_word_embeddings=False` gives the tutorial's variant (exact GELU, separate head)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True
    dropout: float = 0.1
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}", name)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})", "n_head"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"activation_function {self.activation_function!r} is not supported; "
                f"choose one of {sorted(ACTIVATIONS)}",
                "activation_function",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", "dropout")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


SERIAL_DECODE_ATTENTION = False  # see GPT._inference_blocks
FUSED_DECODE_STEP = True  # False: decode steps run block by block (the reference; tests compare)
_ACTIVATION_CODES = {"gelu_new": 0, "gelu_pytorch_tanh": 0, "gelu": 1, "relu": 2}

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


class KVCache:
    """Keys and values for every layer, preallocated to `max_length` positions.

    Written only through its methods: `update(layer, start, k, v)` stores one layer's keys and
    values at explicit positions and returns the filled prefix (gpt-fast's `KVCache.update`);
    `mark(start, attention_mask)` records which of the new positions are real tokens;
    `advance(n)` moves `length` on once every layer is written; `truncate(n)` rolls back
    (speculative decoding); `reorder` and `repeat_rows` move rows (beam search). `mask`
    (batch, max_length) marks real tokens, so left-padded rows never attend to their padding.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (config.n_layer, batch_size, config.n_head, max_length, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.mask = torch.ones(batch_size, max_length, dtype=torch.bool, device=device)
        self.has_padding = False
        self._length = 0
        self.max_length = max_length
        # Per-layer views, made once: the decode step indexes no 5-d tensor per token.
        self.layers = [(self.k[i], self.v[i]) for i in range(config.n_layer)]
        self._spare = None  # see reorder

    @property
    def length(self) -> int:
        """Positions filled."""
        return self._length

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes `k`, `v` (batch, head, T, dim) at positions start..start+T of `layer`;
        returns that layer's keys and values for positions 0..start+T."""
        end = start + k.shape[2]
        ck, cv = self.layers[layer]
        ck[:, :, start:end] = k
        cv[:, :, start:end] = v
        return ck[:, :, :end], cv[:, :, :end]

    def mark(self, start: int, attention_mask: torch.Tensor | None, T: int = 1) -> None:
        """Records positions start..start+T as real tokens (no mask) or as `attention_mask`
        (batch, T) says."""
        if attention_mask is None:
            self.mask[:, start : start + T] = True
        else:
            self.mask[:, start : start + T] = attention_mask.bool()
            self.has_padding = self.has_padding or not bool(attention_mask.all())

    def advance(self, n: int) -> None:
        if self._length + n > self.max_length:
            raise GenerationError(f"KV cache holds {self.max_length} positions, needs more")
        self._length += n

    def truncate(self, n: int) -> None:
        """Forgets every position from `n` on (the keys stay, to be overwritten)."""
        if not 0 <= n <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} positions to {n}")
        self._length = n

    def repeat_rows(self, n: int, max_length: int | None = None) -> KVCache:
        """A new cache (of `max_length` positions, default this one's) in which each row is
        repeated `n` times in place (row i -> rows i*n .. i*n+n-1), filled as far as this one."""
        L = self._length
        new = KVCache.__new__(KVCache)
        m = max_length or self.max_length
        nl, B, H, _, D = self.k.shape
        new.k = self.k.new_zeros((nl, B * n, H, m, D))
        new.v = self.v.new_zeros((nl, B * n, H, m, D))
        new.mask = self.mask.new_ones((B * n, m))
        new.k[:, :, :, :L] = self.k[:, :, :, :L].repeat_interleave(n, 1)
        new.v[:, :, :, :L] = self.v[:, :, :, :L].repeat_interleave(n, 1)
        new.mask[:, :L] = self.mask[:, :L].repeat_interleave(n, 0)
        new.has_padding = self.has_padding
        new._length = L
        new.max_length = m
        new.layers = [(new.k[i], new.v[i]) for i in range(nl)]
        new._spare = None
        return new

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i].

        The filled positions are gathered into a second set of buffers, which then become the
        cache (one `index_select` per tensor: 4-6x faster than copying rows in place, which
        needs a temporary anyway since rows can be both source and destination). The spare set,
        made on the first reorder, doubles the cache's memory for beam search only."""
        n = self._length
        if self._spare is None:
            self._spare = (
                torch.empty_like(self.k),
                torch.empty_like(self.v),
                torch.empty_like(self.mask),
            )
        k, v, mask = self._spare
        torch.index_select(self.k[:, :, :, :n], 1, index, out=k[:, :, :, :n])
        torch.index_select(self.v[:, :, :, :n], 1, index, out=v[:, :, :, :n])
        torch.index_select(self.mask, 0, index, out=mask)
        self._spare = (self.k, self.v, self.mask)
        self.k, self.v, self.mask = k, v, mask
        self.layers = [(k[i], v[i]) for i in range(len(self.layers))]


class CausalSelfAttention(nn.Module):
    """The fused q/k/v and output projections; the attention itself is `attend`."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim)
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)


class Block(nn.Module):
    """Pre-LayerNorm block. The residual adds to the un-normalized stream (`x + attn(ln_1(x))`);
    overwriting `x` with `ln_1(x)` first, as the tutorial does, would discard that stream."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def ops(self) -> BlockOps:
        """The block's operations as module calls (hooks fire, dropout applies)."""
        a, m = self.attn, self.mlp
        return BlockOps(
            self.ln_1, a.c_attn, a.c_proj, self.ln_2, m.c_fc, m.act, m.c_proj,
            a.resid_dropout, m.dropout,
        )  # fmt: skip


class BlockOps(NamedTuple):
    """One block's operations, in the order `block_forward` applies them."""

    ln_1: Callable
    c_attn: Callable
    attn_proj: Callable
    ln_2: Callable
    c_fc: Callable
    act: Callable
    mlp_proj: Callable
    attn_drop: Callable | None = None  # dropout (module path), None on the inference path
    mlp_drop: Callable | None = None


def block_forward(
    x: torch.Tensor, ops: BlockOps, B: int, T: int, H: int, D: int, attend: Callable
) -> torch.Tensor:
    """A block's arithmetic, written once: the module path, the inference path and the
    compiled decode step all run this. `x` is (B, T, C) or (B*T, C); `attend(q, k, v)` takes
    (B, H, T, D) queries, keys and values and returns the attended values in that shape (it
    writes the KV cache and chooses the mask)."""
    q, k, v = ops.c_attn(ops.ln_1(x)).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
    a = ops.attn_proj(attend(q, k, v).transpose(1, 2).reshape(x.shape))
    x = x + (a if ops.attn_drop is None else ops.attn_drop(a))
    m = ops.mlp_proj(ops.act(ops.c_fc(ops.ln_2(x))))
    return x + (m if ops.mlp_drop is None else ops.mlp_drop(m))


def attention_weights(q, k, v, mask):
    """Explicit softmax attention that also returns its weights (for plots)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is None:
        mask = _causal_mask(q.shape[2], k.shape[2], q.device)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return weights @ v, weights


def _decode_fn(module: nn.Module):
    return DecodeLinear(module) if isinstance(module, nn.Linear) else module.forward


class InferencePlan:
    """The submodules' forward functions, looked up once rather than through
    `nn.Module.__getattr__` and `__call__` on every token (no hooks run on this path). Linear
    layers go through `DecodeLinear` (decode_linear.py). `refresh()` (every forward) looks
    again after any module, parameter or buffer was assigned anywhere (`_REGISTRATIONS`):
    the fused step's tensor list is gathered anew, and the functions too if a layer was
    swapped; the plan stays the same object (compile.py keys its compiled step on it)."""

    def __init__(self, model: GPT):
        self.n_head = model.config.n_head
        self.head_dim = model.config.head_dim
        self.activation = _ACTIVATION_CODES[model.config.activation_function]
        self.eps = model.config.layer_norm_epsilon
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
        self.step_params = _step_params(model)
        self._generation = _REGISTRATIONS[0]
        return self

    def _look_up(self, model: GPT) -> None:
        self.layers = [
            BlockOps(
                b.ln_1.forward,
                _decode_fn(b.attn.c_attn),
                _decode_fn(b.attn.c_proj),
                b.ln_2.forward,
                _decode_fn(b.mlp.c_fc),
                b.mlp.act,
                _decode_fn(b.mlp.c_proj),
            )
            for b in model.h
        ]
        self.ln_f = model.ln_f.forward
        self.lm_head = _decode_fn(model.lm_head)
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


def _step_params(model: GPT) -> list | None:
    """The blocks' tensors in the order lmgen.kernels.decode_step takes them (16 per layer), or
    None when a block holds a layer it does not know (then steps run block by block)."""
    from .quantize import Int8Linear

    def linear(m):
        if type(m) is nn.Linear:
            return [m.weight, None, m.bias]
        if isinstance(m, Int8Linear):
            return [m.qweight, m.scale, m.bias]
        return None

    out = []
    for b in model.h:
        parts = [linear(m) for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
        if None in parts or b.ln_1.bias is None or b.ln_2.bias is None:
            return None
        qkv, proj, fc, mproj = parts
        out += [b.ln_1.weight, b.ln_1.bias, *qkv, *proj, b.ln_2.weight, b.ln_2.bias, *fc, *mproj]
    return out


def _causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """Boolean (q_len, k_len) mask; query i sits at key position k_len - q_len + i."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
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
        return sum(p.numel() for p in self.parameters())

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
    ):
        """Logits (batch, seq, vocab) for `input_ids` (batch, seq).

        `attention_mask` (batch, seq) marks real tokens (1) and left padding (0) of this call's
        tokens; with a `cache` it is appended to the cached mask and the cache advances.
        `logits_to_keep=n` computes the head for the last n positions only (1 when generating).
        With `output_attentions`, returns (logits, [weights per layer (batch, head, q, k)]);
        with `output_hidden_states`, (logits, the final hidden states (batch, seq, n_embd)
        after ln_f, every position) — what contrastive search compares.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ContextLengthError(
                f"sequence of {past + T} tokens exceeds the model's context of "
                f"{self.config.n_positions} positions (n_positions)"
            )
        if cache is not None and past + T > cache.max_length:
            raise GenerationError(f"KV cache holds {cache.max_length} positions, needs {past + T}")

        if T == 1 and cache is not None and cache.length > 0:
            key_mask, mask = self._step_mask(attention_mask, cache)
            if position_ids is None:
                if key_mask is not None:  # == positions_from_mask(key_mask)[:, past]
                    position_ids = (key_mask.sum(-1, keepdim=True) - 1).clamp_min(0)
                else:
                    position_ids = self.position(past, input_ids.device)
        else:
            key_mask, mask = self._key_mask(attention_mask, cache, B, T, input_ids.device)
            if mask is not None:
                mask = mask[:, None, :, :]
            if position_ids is None:
                if key_mask is not None:
                    position_ids = positions_from_mask(key_mask)[:, past : past + T]
                else:
                    position_ids = torch.arange(past, past + T, device=input_ids.device)[None]

        causal = mask is None and T > 1 and past == 0
        if not (self.training or output_attentions or self.inference_plan().hooked()):
            plan = self.inference_plan()
            x = F.embedding(input_ids, self.wte.weight) + F.embedding(position_ids, self.wpe.weight)
            x = x.view(B * T, -1)  # 2-d rows for the products (DecodeLinear, F.linear)
            serial = (
                SERIAL_DECODE_ATTENTION
                and T == 1
                and x.device.type == "cpu"
                and torch.get_num_threads() > 1
            )
            if (
                T == 1
                and mask is None
                and cache is not None
                and past > 0
                and B <= kernels.MAX_ROWS
                and FUSED_DECODE_STEP
                and decode_linear.ENABLED
                and not serial
                and plan.step_params is not None
                and x.device.type == "cpu"
                and x.dtype in kernels.DTYPES
                and not (torch.is_grad_enabled() and self.wte.weight.requires_grad)
                and kernels.available()
            ):
                # every block in one call (lmgen.kernels.decode_step): a small model's step
                # is mostly the dispatch of ~30 small operations per block
                x = kernels.decode_step(
                    x, plan.step_params, cache.k, cache.v, past, plan.n_head, plan.eps,
                    plan.activation,
                )  # fmt: skip
            else:
                attend = _Attend(0, cache, past, mask, causal, 0.0, serial)
                for i, ops in enumerate(plan.layers):
                    attend.layer = i
                    x = block_forward(x, ops, B, T, plan.n_head, plan.head_dim, attend)
            if cache is not None:
                cache.advance(T)
            x = x.view(B, T, -1)
            if output_hidden_states:
                h = plan.ln_f(x)
                return plan.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h), h
            if logits_to_keep and logits_to_keep < T:
                x = x[:, -logits_to_keep:]
            return plan.lm_head(plan.ln_f(x))

        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        attentions = []
        dropout = self.config.dropout if self.training else 0.0
        H, D = self.config.n_head, self.config.head_dim
        for i, block in enumerate(self.h):
            attend = _Attend(i, cache, past, mask, causal, dropout, False, output_attentions)
            x = block_forward(x, block.ops(), B, T, H, D, attend)
            if output_attentions:
                attentions.append(attend.weights)
        if cache is not None:
            cache.advance(T)
        if output_hidden_states:
            h = self.ln_f(x)
            return self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h), h
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.ln_f(x))
        return (logits, attentions) if output_attentions else logits

    def position(self, past: int, device) -> torch.Tensor:
        """A (1, 1) position tensor for `past`, from a table made once per device."""
        table = self.__dict__.get("_positions")
        if table is None or table.device != torch.device(device):
            table = torch.arange(self.config.n_positions, device=device)[:, None, None]
            self.__dict__["_positions"] = table
        return table[past]

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

    def inference_plan(self) -> InferencePlan:
        """The eval-mode operations, looked up once (rebuilt by `reset_plan`)."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = InferencePlan(self)
            self.__dict__["_plan"] = plan
        return plan.refresh()

    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        state.pop("_plan", None)
        state.pop("_positions", None)
        return state

    def reset_plan(self) -> None:
        """Forget the inference plan; call after replacing submodules (quantize does)."""
        self.__dict__.pop("_plan", None)

    def _key_mask(self, attention_mask, cache, B, T, device):
        """Returns (mask over all keys so far or None, attention mask (B, T, S) or None).

        None means "no padding anywhere": the fast causal paths apply."""
        if cache is not None:
            start, end = cache.length, cache.length + T
            cache.mark(start, attention_mask, T)
            if not cache.has_padding:
                if T == 1 or start == 0:
                    return None, None
                return None, _causal_mask(T, end, device)[None].expand(B, T, end)
            key_mask = cache.mask[:, :end]
        else:
            if attention_mask is None or bool(attention_mask.all()):
                return None, None
            key_mask = attention_mask.bool()
        S = key_mask.shape[1]
        allowed = _causal_mask(T, S, device)[None] & key_mask[:, None, :]
        # A padding query sees no key at all; let it see everything so softmax has no NaN.
        # Its output is never read: real tokens never attend to padding keys.
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        return key_mask, allowed


class _Attend:
    """One layer's attention for `block_forward`: writes this call's keys and values into the
    cache, then attends with the mask the call needs (causal, padding, or none)."""

    __slots__ = ("layer", "cache", "start", "mask", "causal", "dropout", "serial", "explicit",
                 "weights")  # fmt: skip

    def __init__(self, layer, cache, start, mask, causal, dropout, serial, explicit=False):
        self.layer, self.cache, self.start, self.mask = layer, cache, start, mask
        self.causal, self.dropout, self.serial, self.explicit = causal, dropout, serial, explicit
        self.weights = None

    def __call__(self, q, k, v):
        if self.cache is not None:
            k, v = self.cache.update(self.layer, self.start, k, v)
        if self.explicit:
            y, self.weights = attention_weights(q, k, v, self.mask)
            return y
        if self.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout)
        # a decode step's one query goes to lmgen.kernels where it can: torch's kernel takes
        # 20-35 us a layer in float32 and 60-150 in half precision at 100 positions, this 20-27
        one_query = (
            self.mask is None
            and q.shape[2] == 1
            and q.device.type == "cpu"
            and not self.dropout
            and q.dtype in kernels.DTYPES
            and decode_linear.ENABLED
            and not (torch.is_grad_enabled() and q.requires_grad)
            and kernels.available()
        )
        if self.serial:
            # SERIAL_DECODE_ATTENTION runs the one-query attention of a decode step on one
            # thread: on a machine whose cores are busy with other jobs, the kernel's fork/join
            # stalls for milliseconds. Off by default: on an idle machine the threads win (7-10%
            # for beams and batches of 8 on the 14M shape).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                if one_query:
                    return kernels.decode_attention(q, k, v)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
            finally:
                torch.set_num_threads(threads)
        if one_query:
            return kernels.decode_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=self.dropout)
