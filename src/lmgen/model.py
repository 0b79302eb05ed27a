"""The network: GPT-2-shaped decoder with a preallocated KV cache. No I/O, no decoding."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, GenerationError

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


class KVCache:
    """Keys and values for every layer, preallocated to `max_length` positions.

    `length` counts the positions filled; `mask` (batch, max_length) marks real tokens, so
    left-padded rows never attend to their padding. Beam search reorders rows with `reorder`.
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
        self.length = 0
        self.max_length = max_length

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def reorder(self, index: torch.Tensor) -> None:
        n = self.length
        self.k[:, :, :, :n] = self.k[:, index, :, :n]
        self.v[:, :, :, :n] = self.v[:, index, :, :n]
        self.mask = self.mask[index]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            start, end = cache.length, cache.length + T
            cache.k[self.layer_idx, :, :, start:end] = k
            cache.v[self.layer_idx, :, :, start:end] = v
            k = cache.k[self.layer_idx, :, :, :end]
            v = cache.v[self.layer_idx, :, :, :end]
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if mask is None:
                mask = _causal_mask(T, k.shape[2], x.device)
            scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            y = weights @ v
        elif mask is None and T > 1 and k.shape[2] == T:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0
            )
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y)), weights


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.inner_dim)
        self.c_proj = nn.Linear(config.inner_dim, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm block. The residual adds to the un-normalized stream (`x + attn(ln_1(x))`);
    overwriting `x` with `ln_1(x)` first, as the tutorial does, would discard that stream."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, mask, cache, need_weights=False):
        a, weights = self.attn(self.ln_1(x), mask, cache, need_weights)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights


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
    ):
        """Logits (batch, seq, vocab) for `input_ids` (batch, seq).

        `attention_mask` (batch, seq) marks real tokens (1) and left padding (0) of this call's
        tokens; with a `cache` it is appended to the cached mask and the cache advances.
        `logits_to_keep=n` computes the head for the last n positions only (1 when generating).
        With `output_attentions`, returns (logits, [weights per layer (batch, head, q, k)]).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise GenerationError(
                f"sequence of {past + T} tokens exceeds the model's context of "
                f"{self.config.n_positions} positions (n_positions)"
            )
        if cache is not None and past + T > cache.max_length:
            raise GenerationError(f"KV cache holds {cache.max_length} positions, needs {past + T}")

        key_mask, mask = self._key_mask(attention_mask, cache, B, T, input_ids.device)
        if mask is not None:
            mask = mask[:, None, :, :]
        if position_ids is None:
            if key_mask is not None:
                position_ids = positions_from_mask(key_mask)[:, past : past + T]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None]

        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        attentions = []
        for block in self.h:
            x, weights = block(x, mask, cache, output_attentions)
            if output_attentions:
                attentions.append(weights)
        if cache is not None:
            cache.length += T
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.ln_f(x))
        return (logits, attentions) if output_attentions else logits

    def _key_mask(self, attention_mask, cache, B, T, device):
        """Returns (mask over all keys so far or None, attention mask (B, T, S) or None).

        None means "no padding anywhere": the fast causal paths apply."""
        if cache is not None:
            start, end = cache.length, cache.length + T
            if attention_mask is not None:
                cache.mask[:, start:end] = attention_mask.bool()
                cache.has_padding = cache.has_padding or not bool(attention_mask.all())
            else:
                cache.mask[:, start:end] = True
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
