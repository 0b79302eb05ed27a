"""Mirostat v2 (Basu et al. 2021, as llama.cpp implements it): sampling that steers the
surprise of the text towards a target.

Each step keeps the tokens whose surprise `-log2 p` is at most `mu` (at least the most likely
one) and renormalises; after the draw, `mu` moves against the error of the chosen token's
surprise under that renormalised distribution: `mu -= eta * (surprise - tau)`. `mu` starts
at `2 * tau`. It runs last in the chain (after temperature), as llama.cpp's chain is
temperature -> mirostat_v2.

The draw itself is the one every sampling path uses (sampling.py); this processor only
truncates. It learns which token was chosen from the next step's sequence, so it needs no hook
from the steppers: the state after each prefix is kept per row (prefix_state.py).
"""

from __future__ import annotations

import logging

import torch

from lmgen.settings import above

from .prefix_state import PrefixStates
from .processor_base import NEG_INF, LogitsProcessor, check_int, check_number

log = logging.getLogger(__name__)


class MirostatV2(LogitsProcessor):
    def __init__(self, tau: float = 5.0, eta: float = 0.1, *, prompt_length: int):
        self.tau = check_number("mirostat_tau", tau, above(0))
        self.eta = check_number("mirostat_eta", eta, above(0))
        self.prompt_length = check_int("prompt_length", prompt_length, 0)
        # (row, generated tokens) -> (mu used at that step, kept ids, their renormalised probs)
        self._states: PrefixStates[tuple[float, torch.Tensor, torch.Tensor]] = PrefixStates()

    def _fields(self) -> dict[str, object]:
        return {"tau": self.tau, "eta": self.eta}

    def mu(self, row: int, generated: tuple[int, ...]) -> float:
        """The target surprise at the step after `generated` in batch row `row`."""
        if not generated:
            return 2.0 * self.tau
        parent = self._states.get((row, generated[:-1]))
        if parent is None:
            # Not seen (the chain first applied mid-sequence): start afresh, as llama.cpp's
            # sampler does after a reset.
            log.debug("mirostat: no state for row %d after %d tokens", row, len(generated) - 1)
            return 2.0 * self.tau
        mu, ids, probs = parent
        hit = probs[ids == generated[-1]]
        if hit.numel() == 0:
            return mu  # a token the step did not offer (a finished row's padding): no update
        surprise = -float(torch.log2(hit[0]))
        return mu - self.eta * (surprise - self.tau)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        rows = [tuple(r) for r in input_ids[:, self.prompt_length :].tolist()]
        self._states.grow(len(rows))
        mus = [self.mu(b, g) for b, g in enumerate(rows)]
        mu = torch.tensor(mus, dtype=logits.dtype, device=logits.device)[:, None]
        surprise = -torch.log2(logits.softmax(dim=-1))
        keep = surprise <= mu
        keep.scatter_(1, logits.argmax(dim=-1, keepdim=True), True)  # at least the top one
        out = logits.masked_fill(~keep, NEG_INF)
        renormalised = out.softmax(dim=-1)
        for b, g in enumerate(rows):
            ids = keep[b].nonzero().flatten()
            self._states.put((b, g), (mus[b], ids.cpu(), renormalised[b, ids].cpu()))
        return out
