"""Top-H (Potraghloo et al., "Top-H Decoding", arXiv 2509.02510), as transformers'
`TopHLogitsWarper` computes it.

Among the 100 most likely tokens (a cap transformers fixes for speed), renormalised, the
tokens are taken in order of probability while the running sum of their entropy terms
`-p log p` stays within `top_h` times the entropy of those 100; the most likely token is
always kept. A peaked step keeps few tokens, a flat one many: the bound is on how much
uncertainty the kept set may carry, not on its mass.
"""

from __future__ import annotations

import torch

from lmgen.settings import between

from .processor_base import NEG_INF, LogitsProcessor, check_number

TOP_N = 100  # transformers' cap on the candidates considered


class TopH(LogitsProcessor):
    def __init__(self, top_h: float):
        self.top_h = check_number("top_h", top_h, between(0, 1, low_open=True))

    def _fields(self) -> dict[str, object]:
        return {"top_h": self.top_h}

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        top_logits, top_ids = torch.topk(logits, min(TOP_N, logits.shape[-1]), dim=-1)
        # the candidates' distribution, and its entropy computed as torch.distributions does
        # (log-probabilities clamped at the smallest float, so 0 * -inf counts as 0)
        dist = torch.distributions.Categorical(logits=top_logits)
        probs = dist.probs
        tau = dist.entropy()[:, None] * self.top_h
        cumulative = torch.cumsum(-probs * torch.log(probs), dim=-1)
        keep_top = cumulative <= tau
        keep_top[:, 0] = True
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top_ids, keep_top)
        return logits.masked_fill(~keep, NEG_INF)
