"""The model: one decoder for every family (network.py), its config (config.py), the families'
Hugging Face mappings (families.py), the KV cache (kv_cache.py), rotary positions (rope.py),
the inference plan (plan.py) and GGUF files (gguf.py). No I/O of its own, no decoding."""

from . import plan  # noqa: E402,F401  (registers the hooks the plan counts; tests switch its flags)
from .config import ACTIVATIONS, GPTConfig
from .kv_cache import KVCache
from .network import (
    GPT,
    Attend,
    Block,
    BlockOps,
    LayerShape,
    RMSNorm,
    attention_weights,
    block_forward,
    causal_mask,
    positions_from_mask,
)

ModelConfig = GPTConfig  # the same class: "GPT" is the decoder, whatever the family

__all__ = [
    "ACTIVATIONS",
    "GPT",
    "Attend",
    "Block",
    "BlockOps",
    "GPTConfig",
    "KVCache",
    "LayerShape",
    "ModelConfig",
    "RMSNorm",
    "attention_weights",
    "block_forward",
    "causal_mask",
    "positions_from_mask",
]
