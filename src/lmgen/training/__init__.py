"""Training: corpus → token shards (`data`), the loop (`train`), bits per byte (`evaluate`)."""

from .evaluate import Evaluation, evaluate_bits_per_byte, evaluate_text

__all__ = ["Evaluation", "evaluate_bits_per_byte", "evaluate_text"]
