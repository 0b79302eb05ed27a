"""Choosing a token: the one inverse-CDF draw every sampling path uses, per-request seeded
generators, and a fused temperature -> top-k -> top-p sampler that works on the top
candidates only.

The processor chain (processors.py) is the definition: it rewrites the whole vocabulary
(a top-k pass, a pass per mask, a sort for top-p) and `sample_from_logits` then builds a CDF
over the whole vocabulary again. When the chain is only temperature, top-k and top-p, every
token outside the top k (or outside a prefix of the ranking that already holds mass p) gets
probability zero, so the same distribution can be computed on those few candidates:

- top-k keeps `logits >= kth value`; `topk(k + 1)` shows whether a tie with the k-th value
  would keep more than k tokens, and then we fall back to the chain;
- top-p keeps, in descending order with ties broken by larger token id first (the reverse of
  the chain's stable ascending sort), every token whose mass *above* it is < p (the chain
  removes `cumsum_ascending <= 1 - p`, the same set in exact arithmetic), and at least
  `min_tokens_to_keep`. Where the mass above a candidate is within `eps` of p (a few float32
  ulps), rounding could decide differently, so that step falls back to the chain;
- the draw uses one float64 uniform per row from the row's generator and inverts the CDF of
  the kept tokens in token-id order, exactly as `sample_from_logits` does over the whole
  vocabulary (zeros add nothing to a CDF), so a seed gives the same tokens on either path.

`FusedSampler.from_chain` returns None for any other chain; `__call__` returns None when a
step must fall back. Both paths are tested against each other (tests/test_perf_sampling.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmgen.errors import GenerationError

from .processor_base import NEG_INF
from .processors import Temperature, TopK, TopP


class FusedSampler:
    def __init__(
        self, temperature: float, temperature_after: bool, top_k: int, top_p: float, min_keep: int
    ):
        self.temperature = temperature
        self.temperature_after = temperature_after
        self.top_k = top_k  # 0: off
        self.top_p = top_p  # 1.0: off
        self.min_keep = min_keep
        self.fallbacks = 0  # steps that went to the reference chain (for tests and reports)

    @classmethod
    def from_chain(cls, chain: Sequence) -> FusedSampler | None:
        kinds = [type(p) for p in chain]
        if not chain or any(k not in (Temperature, TopK, TopP) for k in kinds):
            return None
        if len(set(kinds)) != len(kinds):
            return None
        warpers = [k for k in kinds if k is not Temperature]
        if warpers not in ([TopK], [TopP], [TopK, TopP]):
            return None
        temperature, temperature_after = 1.0, False
        if Temperature in kinds:
            temperature = chain[kinds.index(Temperature)].temperature
            temperature_after = kinds.index(Temperature) == len(kinds) - 1 and len(kinds) > 1
            if kinds.index(Temperature) not in (0, len(kinds) - 1):
                return None
        top_k = chain[kinds.index(TopK)].k if TopK in kinds else 0
        top_p = chain[kinds.index(TopP)].top_p if TopP in kinds else 1.0
        keeps = {p.min_tokens_to_keep for p in chain if isinstance(p, TopK | TopP)}
        if len(keeps) != 1:
            return None
        return cls(temperature, temperature_after, top_k, top_p, keeps.pop())

    def __call__(
        self, logits: torch.Tensor, generators: Sequence[torch.Generator | None]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tokens [B], processed log-probabilities of those tokens [B]) or None: fall back."""
        cand = self.candidates(logits)
        if cand is None:
            self.fallbacks += 1
            return None
        ids, scores = cand
        # Draw in token-id order, as sample_from_logits does over the whole vocabulary.
        pick = draw(scores.double().softmax(dim=-1), generators)[:, None]
        tokens = ids.gather(1, pick)[:, 0]
        logprob = (scores.gather(1, pick) - torch.logsumexp(scores, -1, keepdim=True))[:, 0]
        return tokens, logprob

    def candidates(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(token ids [B, K] ascending, processed scores [B, K], -inf where removed): every
        token outside `ids` has probability zero. None: this step needs the chain."""
        V = logits.shape[-1]
        x = logits
        scale = self.temperature != 1.0 and not self.temperature_after
        if scale and not self.top_k:
            x = x / self.temperature  # the same operation as the Temperature processor
        if self.top_k:
            k = min(self.top_k, V)
            vals, ids = x.topk(min(k + 1, V), dim=-1)
            if scale:
                # Dividing by T > 0 keeps the order, so the candidates are the same; divided
                # here, k + 1 values rather than the vocabulary, with the same bits. Two values
                # that become equal when divided are caught by the tie check below: a tie
                # reaching past the k-th value always includes the (k+1)-th.
                vals = vals / self.temperature
            if k < V and bool((vals[:, k] == vals[:, k - 1]).any()):
                return None  # a tie with the k-th value: the chain keeps more than k
            vals, ids = vals[:, :k], ids[:, :k]
            if not bool(torch.isfinite(vals).all()):
                return None
            # mass over the candidates only: the others are -inf after top-k
            lse = torch.logsumexp(vals, dim=-1, keepdim=True)
        else:
            logp = x.log_softmax(dim=-1)  # one pass; logsumexp takes several
            k = min(256, V)
            while True:
                vals, ids = x.topk(min(k + 1, V), dim=-1)
                if k < V:
                    if bool((vals[:, k] == vals[:, k - 1]).any()):
                        return None  # a tie across the cut: let the chain order it
                    vals, ids = vals[:, :k], ids[:, :k]
                mass = logp.gather(1, ids).double().exp().sum(-1)
                if bool((mass >= self.top_p + 1e-3).all()) or k == V:
                    break
                if 4 * k > V // 4:
                    return None
                k *= 4
            if not bool(torch.isfinite(vals).all()):
                return None
            lse = (vals - logp.gather(1, ids))[:, :1]
        keep = torch.ones_like(vals, dtype=torch.bool)
        if self.top_p < 1.0:
            # canonical descending order: by value, ties by larger token id first
            ids, order = ids.sort(dim=-1, descending=True)
            vals, order = vals.gather(1, order).sort(dim=-1, descending=True, stable=True)
            ids = ids.gather(1, order)
            probs = (vals - lse).double().exp()
            above = probs.cumsum(-1) - probs
            # The chain's float32 softmax over n finite logits is off by at most ~n ulps; its
            # cumsum accumulates in double. Closer than this to p, let the chain decide.
            eps = 1.2e-7 * (vals.shape[-1] + 8) if self.top_k else 2e-5
            if bool(((above - self.top_p).abs() < eps).any()):
                return None
            keep = above < self.top_p
            keep[:, : self.min_keep] = True
        scores = vals.masked_fill(~keep, NEG_INF)
        if self.temperature != 1.0 and self.temperature_after:
            scores = scores / self.temperature
        ids, order = ids.sort(dim=-1)
        return ids, scores.gather(1, order)


def make_generator(seed: int | None, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A generator seeded for one request, or None (use torch's global RNG)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """The one token draw: row i of `probs` [B, V] (float64, any non-negative weights) is
    inverted at one float64 uniform from `generators[i]` (None: torch's global RNG), so a
    seeded row draws the same tokens whatever else shares the batch. Tokens of weight zero are
    never drawn. Every path that samples (the chain, the fused sampler, speculative decoding)
    draws here."""
    cdf = probs.cumsum(dim=-1)
    u = torch.cat([_uniform(g, probs.device) for g in generators]).unsqueeze(1)
    total = cdf[:, -1:]
    at = u * total
    picked = torch.searchsorted(cdf, at, right=True)
    # u * total can round up to the total: clamp to the last token that has weight. Below a
    # finite total the search stops at or before that token (the cdf reaches the total there
    # and stays), so the token is looked for only when some row needs it: finding it costs
    # more than the rest of the draw over a large vocabulary.
    if bool((at >= total).any()) or not bool(total.isfinite().all()):
        last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).to(torch.uint8).argmax(-1, keepdim=True)
        picked = torch.minimum(picked, last)
    return picked[:, 0]


def sample_from_logits(
    logits: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """One token per row from softmax(logits); tokens at -inf are never drawn."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    if len(generators) != logits.shape[0]:
        raise ValueError(f"need one generator per row: {len(generators)} for {logits.shape[0]}")
    probs = logits.double().softmax(dim=-1)
    bad = ~(probs.sum(-1) > 0)  # nan (all -inf, or nan logits) or no mass
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise GenerationError(f"no token can be sampled in rows {rows}: every logit is -inf")
    return draw(probs, generators)


def _uniform(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.rand(1, generator=generator, dtype=torch.float64, device=where).to(device)
