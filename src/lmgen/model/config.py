"""GPTConfig: one decoder's hyper-parameters, with the real differences between families as
fields (litgpt's habit). Defaults are GPT-2 small's; a family (families.py) fills the fields
from its Hugging Face config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch.nn.functional as F

from ..errors import ConfigError

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("plain", "gated")
LAYER_TYPES = ("full_attention", "sliding_attention")
# transformers' rope_type values (modeling_rope_utils) that lmgen computes; see rope.py
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass
class GPTConfig:
    """Hyper-parameters of the one decoder. `activation_function="gelu"` with
    `tie_word_embeddings=False` gives the tutorial's variant (exact GELU, separate head)."""

    vocab_size: int = 50257
    n_positions: int = 1024  # the context length (max_position_embeddings)
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # the MLP's width (default 4 * n_embd)
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True
    dropout: float = 0.1
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    # --- what differs between families (GPT-2's values by default) ---
    model_type: str = "gpt2"  # the family, as transformers names it (families.py)
    n_kv_head: int | None = None  # grouped-query / multi-query attention (default n_head)
    head_size: int | None = None  # per-head width when not n_embd // n_head (Gemma, Qwen3)
    positions: str = "learned"  # "learned" table (GPT-2) | "rope"
    rope_theta: float = 10000.0
    rotary_pct: float = 1.0  # the fraction of each head's dimensions rotated (GPT-NeoX)
    rope_scaling: dict | None = None  # transformers' rope parameters: rope_type, factor, ...
    rope_local_theta: float | None = None  # the sliding layers' own base (Gemma 3)
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_bias: bool = True  # LayerNorm's bias
    norm_unit_offset: bool = False  # RMSNorm scales by (1 + weight) (Gemma)
    post_norms: bool = False  # norms after attention and after the MLP too (Gemma 3)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Qwen3, Gemma 3)
    mlp: str = "plain"  # "plain" (act(fc(x))) | "gated" (act(gate(x)) * up(x): SwiGLU, GeGLU)
    mlp_bias: bool = True
    qkv_bias: bool = True
    attn_out_bias: bool = True
    parallel_residual: bool = False  # x + attn(ln_1(x)) + mlp(ln_2(x)) (GPT-NeoX)
    sliding_window: int | None = None  # keys within this many positions, on sliding layers
    layer_types: list[str] | None = None  # per layer "full_attention" | "sliding_attention"
    query_pre_attn_scalar: float | None = None  # attention scale 1/sqrt(this) (Gemma)
    scale_embeddings: bool = False  # token embeddings times sqrt(n_embd) (Gemma)
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            _positive_int(name, getattr(self, name))
        for name in ("n_kv_head", "head_size", "n_inner", "sliding_window"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.head_size is None and self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})", "n_head"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.kv_heads})",
                "n_kv_head",
            )
        for name, allowed in (
            ("activation_function", ACTIVATIONS),
            ("positions", POSITIONS),
            ("norm", NORMS),
            ("mlp", MLPS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} {getattr(self, name)!r} is not supported; choose one of "
                    f"{sorted(allowed)}",
                    name,
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}", "dropout")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ConfigError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}", "rotary_pct")
        if self.positions == "rope" and self.rotary_dim % 2:
            raise ConfigError(
                f"the rotated dimensions ({self.rotary_dim} = head_dim * rotary_pct) must be even",
                "rotary_pct",
            )
        for name in ("rope_theta", "rope_local_theta", "query_pre_attn_scalar"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive number, got {v!r}", name)
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layer or any(
                t not in LAYER_TYPES for t in self.layer_types
            ):
                raise ConfigError(
                    f"layer_types must list one of {list(LAYER_TYPES)} for each of the "
                    f"{self.n_layer} layers, got {self.layer_types!r}",
                    "layer_types",
                )
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ROPE_TYPES:
                raise ConfigError(
                    f"rope scaling {kind!r} is not supported; choose one of {list(ROPE_TYPES)}",
                    "rope_scaling",
                )

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def window(self, layer: int) -> int | None:
        """The sliding window of `layer`, or None where it attends to every earlier key."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    @property
    def is_gpt2_block(self) -> bool:
        """Whether every block is GPT-2's (what lmgen.kernels.decode_step computes)."""
        return (
            self.positions == "learned"
            and self.norm == "layernorm"
            and self.norm_bias
            and self.mlp == "plain"
            and self.qkv_bias
            and self.attn_out_bias
            and self.mlp_bias
            and self.kv_heads == self.n_head
            and self.head_size in (None, self.n_embd // self.n_head)
            and not (self.post_norms or self.qk_norm or self.parallel_residual)
            and self.sliding_window is None
            and self.query_pre_attn_scalar is None
            and not self.scale_embeddings
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", name)
