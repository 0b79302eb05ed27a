"""p-less and p-less-norm sampling (Tan, Wu and Howard, "p-less Sampling: A Robust
Hyperparameter-Free Approach for LLM Decoding", arXiv 2509.23234).

p-less keeps the tokens whose probability is at least the collision probability
`L = sum_v p(v)^2` of the step's distribution (the chance that two independent draws agree,
`exp(-H_2)`): a peaked step collapses to its top token, a flat one keeps most of the
vocabulary, and there is no knob to tune. p-less-norm subtracts the part of `L` a uniform
distribution would have, `L_norm = (V L - 1) / (V - 1)` over the vocabulary of size V (0 for
a uniform step, `L` less `(1 - L) / (V - 1)` in general), so it keeps at least as many
tokens. Both are the authors' reference samplers (`p_less_decode`, `p_less_norm_decode` in
their p-less-sampling repository: the same thresholds, tokens strictly below them dropped).
Both see the distribution after temperature, as in the paper; since `L <= max p`,
the most likely token always survives (kept explicitly against float rounding).
"""

from __future__ import annotations

import torch

from .processor_base import NEG_INF, LogitsProcessor, keep_top


class PLess(LogitsProcessor):
    def __init__(self, normalised: bool = False):
        self.normalised = bool(normalised)

    def _fields(self) -> dict[str, object]:
        return {"norm": True} if self.normalised else {}

    def threshold(self, probs: torch.Tensor) -> torch.Tensor:
        """The cut of each row [B, 1]: L, or L_norm."""
        collision = (probs * probs).sum(dim=-1, keepdim=True)
        if not self.normalised:
            return collision
        vocab = probs.shape[-1]
        return (vocab * collision - 1) / (vocab - 1)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        remove = probs < self.threshold(probs)
        return logits.masked_fill(keep_top(logits, remove, 1), NEG_INF)
