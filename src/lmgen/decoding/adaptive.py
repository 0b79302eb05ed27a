"""Processors that adapt to each step's distribution, as llama.cpp defines them: top-nσ (the
spread of the logits), XTC (the most likely choices) and dynamic temperature (the entropy).

Each has the semantics of llama.cpp's `src/llama-sampling.cpp` (the expected values of its
`tests/test-sampling.cpp` are ported in tests/test_processors_llama.py); the code is our own.
llama.cpp works on a candidate list that earlier samplers shorten; here a removed token is a
-inf logit, so "the candidates" are the finite logits of a row.
"""

from __future__ import annotations

import hashlib

import torch

from lmgen.settings import MIN_TEMPERATURE, above, between, from_

from .processor_base import NEG_INF, LogitsProcessor, check_int, check_number


class TopNSigma(LogitsProcessor):
    """Top-nσ (Tang et al. 2024): keep the tokens whose logit is within `n` standard
    deviations of the largest, `logit >= max - n * std`, mean and std taken over the finite
    logits. Scaling every logit by a temperature scales max and std alike, so the kept set
    does not depend on where temperature runs."""

    def __init__(self, n: float):
        self.n = check_number("top_n_sigma", n, above(0))

    def _fields(self) -> dict[str, object]:
        return {"n": self.n}

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(logits)
        count = finite.sum(-1, keepdim=True)
        values = torch.where(finite, logits, 0.0)
        mean = values.sum(-1, keepdim=True) / count.clamp(min=1)
        var = (torch.where(finite, logits - mean, 0.0) ** 2).sum(-1, keepdim=True)
        std = (var / count.clamp(min=1)).sqrt()
        top = logits.amax(-1, keepdim=True)
        remove = (logits < top - self.n * std) & (count > 1)
        return logits.masked_fill(remove, NEG_INF)


class XTC(LogitsProcessor):
    """Exclude Top Choices: with probability `probability` per step, remove every token whose
    probability is at least `threshold` except the least likely of them, so that the most
    obvious continuations give way to the next most plausible one. Nothing is removed when
    fewer than two tokens reach the threshold.

    The per-step chance is drawn per row: from the row's own tokens and `seed` (a seeded run
    draws the same whatever else shares its batch, and never perturbs the token draw), or
    from torch's global RNG without a seed. Among tokens of equal probability at the cut, the
    one with the largest id is the one kept."""

    def __init__(self, probability: float, threshold: float, min_tokens_to_keep: int = 1,
                 seed: int | None = None):  # fmt: skip
        self.probability = check_number("xtc_probability", probability, between(0, 1))
        self.threshold = check_number("xtc_threshold", threshold, between(0, 0.5, low_open=True))
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep)
        self.seed = seed

    def _fields(self) -> dict[str, object]:
        return {"probability": self.probability, "threshold": self.threshold}

    def chances(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One uniform in [0, 1) per row: this step's draw against `probability`."""
        rows = input_ids.shape[0]
        if self.seed is None:
            return torch.rand(rows, dtype=torch.float64)
        seed = self.seed.to_bytes(8, "little")
        out = []
        for row in input_ids.to("cpu", torch.int64).numpy():
            digest = hashlib.blake2b(seed + row.tobytes(), digest_size=8).digest()
            out.append((int.from_bytes(digest, "little") >> 11) * 2.0**-53)
        return torch.tensor(out, dtype=torch.float64)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.probability == 0:
            return logits
        applies = (self.chances(input_ids) <= self.probability).to(logits.device)
        probs = logits.softmax(dim=-1)
        above = probs >= self.threshold
        n_above = above.sum(-1)
        n_finite = torch.isfinite(logits).sum(-1)
        # The least likely token above the threshold stays (of equal ones, the largest id).
        least = torch.where(above, probs, 2.0).amin(-1, keepdim=True)
        ids = torch.arange(logits.shape[-1], device=logits.device)
        keep_one = torch.where(above & (probs == least), ids, -1).argmax(-1, keepdim=True)
        remove = above.scatter(1, keep_one, False)
        kept = n_finite - n_above + 1
        ok = applies & (n_above >= 2) & (kept >= self.min_tokens_to_keep)
        return logits.masked_fill(remove & ok[:, None], NEG_INF)


class DynamicTemperature(LogitsProcessor):
    """Entropy-based temperature (llama.cpp's dynatemp): each step's temperature goes from
    `max(0, T - range)` to `T + range` as the step's normalised entropy `H / log n` (n the
    number of candidates) goes from 0 to 1, raised to `exponent` on the way: a confident step
    is cooled and an uncertain one heated. With one candidate nothing changes; a step whose
    temperature comes out below MIN_TEMPERATURE (1e-4) keeps only its most likely token (the
    first of equal ones). `range=0` is the fixed temperature T."""

    def __init__(self, temperature: float, range_: float, exponent: float = 1.0):
        self.temperature = check_number("temperature", temperature, above(0))
        self.range = check_number("dynatemp_range", range_, from_(0))
        self.exponent = check_number("dynatemp_exponent", exponent, above(0))

    def _fields(self) -> dict[str, object]:
        return {"temperature": self.temperature, "range": self.range, "exponent": self.exponent}

    def temperatures(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch, 1]: each row's temperature for this step."""
        low = max(0.0, self.temperature - self.range)
        high = self.temperature + self.range
        count = torch.isfinite(logits).sum(-1, keepdim=True)
        logp = logits.log_softmax(dim=-1)
        entropy = -(logp.exp() * logp).nansum(dim=-1, keepdim=True)  # 0 * -inf is nan: skip
        normalised = entropy / count.clamp(min=2).to(logits.dtype).log()
        return low + (high - low) * normalised.clamp(min=0) ** self.exponent

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.range == 0:
            return logits / self.temperature
        temps = self.temperatures(logits)
        count = torch.isfinite(logits).sum(-1, keepdim=True)
        scaled = logits / temps.clamp(min=MIN_TEMPERATURE)
        # T -> 0: only the most likely token (the first of equal ones) survives
        top = logits.argmax(dim=-1, keepdim=True)
        greedy = torch.full_like(logits, NEG_INF).scatter(1, top, logits.gather(1, top))
        out = torch.where(temps >= MIN_TEMPERATURE, scaled, greedy)
        return torch.where(count > 1, out, logits)
