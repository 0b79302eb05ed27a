"""Adaptive-p (llama.cpp's `adaptive-p` sampler, ggml-org/llama.cpp#17927): sampling that
steers the probability of the chosen tokens towards a target.

Each step it takes the distribution it is given (after temperature and any truncation) as the
*original* probabilities `p`, and an adapted target from an exponential moving average of the
original probabilities of the tokens chosen so far:

    target_t = clamp(2 * target - weighted_sum / total_weight, 0, 1)

(the average starts at `target` as if it had always been there: `weighted_sum = target /
(1 - decay)`, `total_weight = 1 / (1 - decay)`). Every token still in play gets the logit

    5 - 10 * d**2 / (1 + d),   d = |p - target_t| / 0.3

(quadratic near the target, linear in the tails), and the draw is from the softmax of those.
After the draw, `weighted_sum = p[chosen] + decay * weighted_sum` and `total_weight = 1 +
decay * total_weight`. When recent tokens were likelier than the target, the adapted target
drops, and the next steps favour less likely tokens, and the other way round.

llama.cpp always runs it last, in place of the final draw; so does `build_chain`. As with
Mirostat, the token chosen at a step is read from the next step's sequence, and the state
after each prefix is kept per row (prefix_state.py), so beams of one request, a
`next_logits()` before a `step()` and speculative decoding's rollbacks all find theirs.
"""

from __future__ import annotations

import logging

import torch

from lmgen.settings import between

from .prefix_state import PrefixStates
from .processor_base import NEG_INF, LogitsProcessor, check_int, check_number

log = logging.getLogger(__name__)

WIDTH = 0.3  # llama.cpp's DISTRIBUTION_WIDTH
PEAK_LOGIT = 5.0
SHARPNESS = 10.0


class AdaptiveP(LogitsProcessor):
    def __init__(self, target: float, decay: float = 0.9, *, prompt_length: int):
        self.target = check_number("adaptive_target", target, between(0, 1))
        self.decay = check_number("adaptive_decay", decay, between(0, 0.99))
        self.prompt_length = check_int("prompt_length", prompt_length, 0)
        # (row, generated tokens) -> (EMA after that prefix, original probs of the next step)
        self._states: PrefixStates[tuple[tuple[float, float], torch.Tensor]] = PrefixStates()

    def _fields(self) -> dict[str, object]:
        return {"target": self.target, "decay": self.decay}

    def initial(self) -> tuple[float, float]:
        """(weighted_sum, total_weight) before any token: the target's own average."""
        return self.target / (1.0 - self.decay), 1.0 / (1.0 - self.decay)

    def ema(self, row: int, generated: tuple[int, ...]) -> tuple[float, float]:
        """(weighted_sum, total_weight) at the step after `generated` in batch row `row`."""
        if not generated:
            return self.initial()
        parent = self._states.get((row, generated[:-1]))
        if parent is None:
            log.debug("adaptive-p: no state for row %d after %d tokens", row, len(generated) - 1)
            return self.initial()  # llama.cpp's reset
        (weighted, total), probs = parent
        chosen = generated[-1]
        if not 0 <= chosen < probs.shape[-1]:
            return weighted, total
        return float(probs[chosen]) + self.decay * weighted, 1.0 + self.decay * total

    def history(self, row: int, generated: list[int]) -> list[float]:
        """The probability each token of `generated` had in the distribution this sampler was
        given at its step (the quantity whose moving average it steers), as far as the states
        kept reach back (the newest 256 prefixes, or 8 per row)."""
        out = []
        for j, token in enumerate(generated):
            state = self._states.get((row, tuple(generated[:j])))
            if state is not None:
                out.append(float(state[1][token]))
        return out

    def adapted_target(self, weighted: float, total: float) -> float:
        return min(max(2.0 * self.target - weighted / total, 0.0), 1.0)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        rows = [tuple(r) for r in input_ids[:, self.prompt_length :].tolist()]
        self._states.grow(len(rows))
        emas = [self.ema(b, g) for b, g in enumerate(rows)]
        targets = [self.adapted_target(*e) for e in emas]
        probs = logits.softmax(dim=-1)
        target = torch.tensor(targets, dtype=logits.dtype, device=logits.device)[:, None]
        d = ((probs - target) * (1.0 / WIDTH)).abs()
        transformed = PEAK_LOGIT - SHARPNESS * d * d / (1.0 + d)
        out = torch.where(logits == NEG_INF, logits, transformed)
        for b, g in enumerate(rows):
            self._states.put((b, g), (emas[b], probs[b].detach()))
        return out
