"""The playground's pipeline view: one step's distribution after each processor of the chain,
in chain order, and draws from the last one with the generation loop's own sampler.

A `Session` runs its chain in one call; here the same chain (`build_chain` on the request's
settings) runs one processor at a time on the step's logits, so that a learner sees what each
rule did: which tokens it removed, how it reshaped the rest, the entropy and the number of
candidates left. The last stage is the distribution the step samples from, `next_token`'s
processed distribution (tests/test_playground_api.py checks it number for number).

"Draw N" (theory against practice) inverts N uniforms of one seeded generator through
`sampling.sample_from_logits`, the draw every sampling path uses, so the observed frequencies
are what N seeded sampling steps from this distribution give; the first draw is the token
`/v1/lmgen/next` chooses with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lmgen.decoding.sampling import make_generator, sample_from_logits

from .schemas import Int, NextRequest

MAX_DRAWS = 10_000  # a few seconds on a 50k vocabulary; the page draws 1,000
DRAW_CHUNK = 64  # rows drawn per call: N x vocab float64 at once would be large


class PipelineRequest(NextRequest):
    """`POST /v1/lmgen/pipeline`: `/v1/lmgen/next`'s body, plus `draws` (0 = none): that many
    seeded draws from the step's final distribution."""

    draws: Int(0, MAX_DRAWS) = 0


def stage_scores(chain: Sequence, input_ids: torch.Tensor, logits: torch.Tensor) -> list:
    """The scores [1, V] before the chain and after each of its processors, in order:
    len(chain) + 1 tensors, the last one what the chain as a whole returns."""
    out = [logits]
    for p in chain:
        out.append(p(input_ids, out[-1].clone()))
    return out


def stage_view(scores: torch.Tensor, token_ids: list[int]) -> dict:
    """One chart of the strip: the renormalised probabilities of `token_ids` (0 where removed),
    which of them survive, the entropy in bits and how many candidates are left."""
    row = scores[0].float()
    kept = torch.isfinite(row)
    probs = row.softmax(-1).masked_fill(~kept, 0.0)
    p = probs[kept].double()
    p = p[p > 0]
    entropy = float(-(p * p.log2()).sum()) if p.numel() else 0.0
    return {
        "probs": [float(probs[t]) for t in token_ids],
        "kept": [bool(kept[t]) for t in token_ids],
        "entropy_bits": entropy,
        "candidates": int(kept.sum()),
    }


def shown_tokens(first: torch.Tensor, last: torch.Tensor, top: int) -> list[int]:
    """The tokens every chart of the strip shows, so that a removed one stays in place: the
    model's `top` most likely, then those of the final distribution's `top` not among them."""
    n = min(top, first.shape[-1])
    ids = first[0].float().topk(n).indices.tolist()
    final = last[0].float()
    extra = [t for t in final.topk(n).indices.tolist() if math.isfinite(final[t]) and t not in ids]
    return ids + extra


def draw_counts(processed: torch.Tensor, n: int, seed: int | None) -> dict[int, int]:
    """{token id: how often} over `n` draws from softmax(processed) [V], every draw from one
    generator seeded with `seed` (None: torch's global generator), as a sampling loop draws
    one token a step."""
    g = make_generator(seed, processed.device)
    row = processed.float()[None]
    counts = torch.zeros(row.shape[-1], dtype=torch.long)
    for start in range(0, n, DRAW_CHUNK):
        m = min(DRAW_CHUNK, n - start)
        tokens = sample_from_logits(row.expand(m, -1), [g] * m)
        counts += torch.bincount(tokens.cpu(), minlength=row.shape[-1])
    nz = counts.nonzero().flatten().tolist()
    return {t: int(counts[t]) for t in nz}
