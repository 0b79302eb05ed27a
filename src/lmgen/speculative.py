"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one
forward pass, and the output follows the target's distribution exactly.

- Greedy: a proposal is kept while it equals the target's argmax; at the first mismatch the
  target's token is taken. The tokens are identical to plain greedy decoding.
- Sampling (Leviathan et al. 2023; Chen et al. 2023): proposal x drawn from the draft's
  processed distribution q is kept with probability min(1, p(x) / q(x)) under the target's
  processed distribution p; at the first rejection a token is drawn from norm(max(0, p - q));
  when all k are kept, one more is drawn from the target. Every emitted token is distributed
  exactly as p, for any draft.

Both models see the same processor chain (penalties, temperature, top-k, ...), applied to each
position with the sequence up to it. One prompt, one sequence; both KV caches roll back by
setting their length. Draws come from the request's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError
from .processors import build_chain, make_generator


@dataclass
class SpeculativeStats:
    """Counts over calls: proposals made, proposals kept, target passes."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def tokens_per_round(self) -> float:
        return (self.accepted + self.rounds) / self.rounds if self.rounds else float("nan")

    def reset(self) -> None:
        self.proposed = self.accepted = self.rounds = 0


def check_draft(lm, draft, config) -> None:
    if draft.config.vocab_size != lm.config.vocab_size:
        raise ConfigError(
            f"the draft model's vocabulary ({draft.config.vocab_size}) differs from the "
            f"target's ({lm.config.vocab_size}); speculative decoding needs a shared tokenizer",
            "draft",
        )
    if config.effective_strategy() == "beam":
        raise ConfigError(
            "speculative decoding works with greedy and sampling, not beam search", "draft"
        )
    if config.num_return_sequences != 1:
        raise ConfigError(
            "speculative decoding makes one sequence (num_return_sequences=1)", "draft"
        )
    if config.stop or config.logprobs:
        raise ConfigError(
            "speculative decoding does not support stop strings or top logprobs", "draft"
        )


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().softmax(dim=-1)


def _draw(probs: torch.Tensor, gen: torch.Generator | None) -> int:
    """Inverse-CDF draw from a 1-d probability vector (float64)."""
    cdf = probs.cumsum(0)
    where = gen.device if gen is not None else probs.device
    u = torch.rand(1, generator=gen, dtype=torch.float64, device=where).to(probs.device)
    i = int(torch.searchsorted(cdf, u * cdf[-1], right=True))
    nz = (probs > 0).nonzero()
    return min(i, int(nz[-1])) if len(nz) else i


def accept_or_resample(
    p: torch.Tensor, q: torch.Tensor, token: int, gen: torch.Generator | None
) -> tuple[int, bool]:
    """The rule that keeps the target's distribution: `token` ~ q is kept with probability
    min(1, p[token] / q[token]); otherwise a token is drawn from norm(max(0, p - q)).
    Returns (token, kept)."""
    u = torch.rand(
        1, generator=gen, dtype=torch.float64, device=gen.device if gen is not None else p.device
    )
    if float(u) * float(q[token]) < float(p[token]):  # u < p/q without dividing
        return token, True
    residual = (p - q).clamp_min(0)
    return _draw(residual if float(residual.sum()) > 0 else p, gen), False


def speculative_tokens(
    lm, draft, prompt: list[int], config, k: int = 4, stats: SpeculativeStats | None = None
):
    """Yields (token, raw logprob, processed logprob) for each generated token."""
    if k < 1:
        raise ConfigError(f"speculative_k must be >= 1, got {k}", "speculative_k")
    target, small = lm.model, draft.model
    device = lm.device
    sample = config.effective_strategy() == "sample"
    gen = make_generator(config.seed, device) if sample else None
    n_pos = min(lm.config.n_positions, draft.config.n_positions)
    P = len(prompt)
    total = P + config.max_new_tokens
    if total + k + 1 > n_pos:
        raise ConfigError(
            f"prompt + max_new_tokens + speculative_k + 1 = {total + k + 1} "
            f"exceeds the models' context ({n_pos})",
            "max_new_tokens",
        )
    chain = build_chain(config, prompt_length=P, eos_token_ids=lm.eos_token_ids)
    eos = set() if config.ignore_eos else set(lm.eos_token_ids)
    seq = torch.tensor([prompt], device=device)
    seq = torch.cat(
        [seq, torch.zeros((1, config.max_new_tokens + k + 1), dtype=torch.long, device=device)], 1
    )
    n = P  # tokens in seq
    tcache = target.new_cache(1, total + k + 1)
    dcache = small.new_cache(1, total + k + 1)
    process = (
        (lambda upto, logits: chain(seq[:, :upto], logits))
        if chain
        else (lambda upto, logits: logits)
    )
    made = 0
    with torch.inference_mode():
        # Both caches hold seq[:n - 1]; seq[n - 1] is pending.
        target(seq[:, : n - 1], cache=tcache) if n > 1 else None
        small(seq[:, : n - 1], cache=dcache) if n > 1 else None
        while made < config.max_new_tokens:
            kk = min(k, config.max_new_tokens - made)
            # 1. the draft proposes kk tokens
            d_probs, d_tokens = [], []
            pending = seq[:, dcache.length : n]
            for j in range(kk):
                logits = small(pending, cache=dcache, logits_to_keep=1)[:, -1].float()
                q_scores = process(n + j, logits)[0]
                if sample:
                    q = _probs(q_scores)
                    t = _draw(q, gen)
                    d_probs.append(q)
                else:
                    t = int(q_scores.argmax())
                d_tokens.append(t)
                seq[0, n + j] = t
                pending = seq[:, n + j : n + j + 1]
            # 2. the target scores the pending token and all proposals in one pass
            t_logits = target(seq[:, tcache.length : n + kk], cache=tcache, logits_to_keep=kk + 1)[
                0
            ].float()
            raw = t_logits.log_softmax(-1)
            accepted = 0
            out, p_lps = [], []
            for j in range(kk + 1):
                p_scores = process(n + j, t_logits[j : j + 1])[0]
                p_lps.append(p_scores.log_softmax(-1))
                if j == kk:  # all kept: one more from the target
                    t = _draw(_probs(p_scores), gen) if sample else int(p_scores.argmax())
                    out.append(t)
                    break
                t = d_tokens[j]
                if sample:
                    t, kept = accept_or_resample(_probs(p_scores), d_probs[j], t, gen)
                    out.append(t)
                    if kept:
                        accepted += 1
                        continue
                    break
                best = int(p_scores.argmax())
                if t == best:
                    accepted += 1
                    out.append(t)
                    continue
                out.append(best)
                break
            if stats is not None:
                stats.proposed += kk
                stats.accepted += accepted
                stats.rounds += 1
            # 3. emit, then roll both caches back to seq[:n - 1]
            for j, t in enumerate(out):
                seq[0, n] = t
                yield t, float(raw[j, t]), float(p_lps[j][t])
                n += 1
                made += 1
                if t in eos or made >= config.max_new_tokens:
                    return
            tcache.length = n - 1
            dcache.length = min(dcache.length, n - 1)
