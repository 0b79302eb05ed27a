"""Training: corpus → token shards (`data`), the loop (`train`), bits per byte (`evaluate`)."""

from ..lazy import lazy_names

# loaded on first use: `evaluate` imports torch, which `lmgen train --help` does not need
__getattr__, __dir__, __all__ = lazy_names(
    __name__, {".evaluate": ["Evaluation", "evaluate_bits_per_byte", "evaluate_text"]}
)
