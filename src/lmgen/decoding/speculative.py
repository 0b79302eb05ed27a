"""Speculative decoding: a proposer offers k tokens, the target checks them in one forward
pass, and the output follows the target's distribution exactly.

The proposer (proposers.py) is a small draft model sharing the tokenizer, the text itself
(prompt lookup), or a draft model with a tokenizer of its own (universal assisted decoding).

- Greedy: a proposal is kept while it equals the target's argmax; at the first mismatch the
  target's token is taken. The tokens are identical to plain greedy decoding.
- Sampling with a draft distribution q (a draft model sharing the tokenizer; Leviathan et al.
  2023; Chen et al. 2023): proposal x ~ q is kept with probability min(1, p(x) / q(x)) under
  the target's processed distribution p; at the first rejection a token is drawn from
  norm(max(0, p - q)); when all k are kept, one more is drawn from the target. Every emitted
  token is distributed exactly as p, for any draft.
- Sampling without one (prompt lookup, a draft with its own tokenizer; transformers' rule for
  candidates without logits): at each place the target draws its own token, with one uniform
  from the request's generator as plain sampling draws it, and the proposals are kept up to
  the first that differs. The tokens are those of plain sampling with the same seed.

Both models see the same processor chain (penalties, temperature, top-k, ...), applied to each
position with the sequence up to it. One prompt, one sequence; both caches roll back through
`DecodeState.rewind`. Draws come from the request's generator. Past the context (under
`context_overflow="slide"`) every step would slide both windows, so the stepper goes on with
plain one-token steps of the target: the same tokens the plain loop makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmgen.errors import ConfigError

from .proposers import CrossTokenizerDraft, DraftModel, PromptLookup
from .sampling import draw
from .state import DecodeState, Tokens
from .steppers import Pick, Stepper, top_alternatives


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


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers give every id the same piece (then a draft's distribution is
    over the target's tokens)."""
    if a is b:
        return True
    size = getattr(a, "vocab_size", None)
    if size is None or size != getattr(b, "vocab_size", None):
        return False
    return all(a.token_to_str(i) == b.token_to_str(i) for i in range(size))


def check_draft(lm, draft, config, k: int, draft_param: str = "draft") -> None:
    """Refuses what speculative decoding cannot serve, before any model work: a bad `k`, and
    with a draft model (named `draft_param` in the messages: `draft` in Python, the server's
    request field there) every setting it would otherwise drop or change silently (beam and
    contrastive search, several sequences, DoLa, prompt lookup)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"speculative_k must be an int >= 1, got {k!r}", "speculative_k")
    strategy = config.effective_strategy()
    if strategy not in ("greedy", "sample"):
        raise ConfigError(
            f"speculative decoding ({draft_param}) works with greedy and sampling, not "
            f"strategy {strategy!r}",
            draft_param,
        )
    if config.num_return_sequences != 1:
        raise ConfigError(
            f"speculative decoding ({draft_param}) makes one sequence: num_return_sequences "
            f"must be 1, got {config.num_return_sequences}",
            "num_return_sequences",
        )
    if draft is None:
        return
    if config.dola_layers is not None:
        raise ConfigError(
            f"dola_layers cannot be combined with speculative decoding ({draft_param})",
            "dola_layers",
        )
    if config.prompt_lookup_num_tokens:
        raise ConfigError(
            f"prompt_lookup_num_tokens cannot be combined with {draft_param}: both propose the "
            "tokens the model checks; choose one",
            "prompt_lookup_num_tokens",
        )


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().softmax(dim=-1)


def _draw(probs: torch.Tensor, gen: torch.Generator | None) -> int:
    return int(draw(probs[None], [gen])[0])


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


class SpeculativeStepper(Stepper):
    """Speculative decoding: a proposer (proposers.py: a draft model, prompt lookup, a draft
    with its own tokenizer) offers up to k tokens, the model checks them in one step; the
    output distribution is the model's own."""

    def __init__(self, lm, tokens: Tokens, config, chain, generators, k: int,
                 stats: SpeculativeStats | None = None, *, draft=None,
                 proposer: str = "draft"):  # fmt: skip
        if tokens.rows != 1:
            raise ConfigError("speculative decoding takes one prompt", "prompt")
        self.tok = lm.tokenizer
        self.tokens = tokens
        self.config = config
        self.chain = chain
        self.sample = config.effective_strategy() == "sample"
        self.gen = generators[0]
        self.k = k
        self.stats = stats
        capacity = tokens.prompt_width + config.max_new_tokens
        policy = config.context_overflow
        self.target = DecodeState(lm.model, tokens, capacity, policy)
        if proposer == "draft":
            self.proposer = DraftModel(draft, tokens, capacity, policy, self._process,
                                       self.sample, self.gen)  # fmt: skip
        elif proposer == "cross_tokenizer":
            self.proposer = CrossTokenizerDraft(lm, draft, tokens, capacity)
        else:
            self.proposer = PromptLookup(tokens, config.prompt_lookup_max_ngram)
        self.capacity = min(self.target.capacity, self.proposer.capacity or capacity)
        self.made = 0
        self.raw_logits = self.processed_logits = None
        self.done = False

    def _process(self, upto: int, logits: torch.Tensor) -> torch.Tensor:
        return self.chain(self.tokens.seq[:, :upto], logits) if self.chain else logits

    def prefill(self) -> None:
        # The caches hold every token but the last, which each round feeds first.
        n = self.tokens.length
        if n > 1 and n <= self.capacity:
            self.tokens.length = n - 1
            self.target.feed()
            self.proposer.prefill()
            self.tokens.length = n

    def _choose(self, scores: torch.Tensor) -> int:
        """The model's own token from processed scores: the draw (or argmax) plain decoding
        makes, from the same generator."""
        return _draw(_probs(scores), self.gen) if self.sample else int(scores.argmax())

    def select(self) -> list[list[Pick]]:
        n = self.tokens.length
        kk = min(self.k, self.config.max_new_tokens - self.made)
        if n + kk > self.capacity:
            return [self._plain_step()]
        # 1. the proposer offers up to kk tokens (written from column n on)
        d_tokens, d_probs = self.proposer.propose(n, kk)
        kk = len(d_tokens)
        # 2. the model scores the pending token and all proposals in one pass
        self.tokens.length = n + kk
        t_logits = self.target.feed(keep=kk + 1)[0].float()
        raw = t_logits.log_softmax(-1)
        accepted = 0
        out, p_lps = [], []
        for j in range(kk + 1):
            p_scores = self._process(n + j, t_logits[j : j + 1])[0]
            p_lps.append(p_scores.log_softmax(-1))
            if j == kk:  # all kept: one more from the model
                out.append(self._choose(p_scores))
                break
            t = d_tokens[j]
            if d_probs is not None:  # a draft distribution: the rejection rule
                t, kept = accept_or_resample(_probs(p_scores), d_probs[j], t, self.gen)
            else:  # none: the model's own choice, kept while it equals the proposal
                t = self._choose(p_scores)
                kept = t == d_tokens[j]
            out.append(t)
            if not kept:
                break
            accepted += 1
        if self.stats is not None:
            self.stats.proposed += kk
            self.stats.accepted += accepted
            self.stats.rounds += 1
        # 3. keep what was accepted; the caches roll back to all but the newest token
        out = out[: self.config.max_new_tokens - self.made]
        self.tokens.write(n, out)
        self.tokens.length = n + len(out)
        self.made += len(out)
        self.target.rewind(self.tokens.length - 1)
        self.proposer.rewind(self.tokens.length - 1)
        top = None
        if self.config.logprobs:
            top = top_alternatives(self.tok, raw[: len(out)], self.config.logprobs)
        return [
            [
                Pick(t, float(raw[j, t]), float(p_lps[j][t]), top[j] if top else None)
                for j, t in enumerate(out)
            ]
        ]

    def _plain_step(self) -> list[Pick]:
        """One token from the target alone (the sliding window past the context)."""
        logits = self.target.feed()[:, -1].float()
        raw = logits.log_softmax(-1)
        scores = self._process(self.tokens.length, logits)[0]
        t = self._choose(scores)
        self.tokens.write(self.tokens.length, [t])
        self.tokens.length += 1
        self.made += 1
        n_top = self.config.logprobs
        top = top_alternatives(self.tok, raw, n_top) if n_top else None
        proc = float(scores.log_softmax(-1)[t])
        return [Pick(t, float(raw[0, t]), proc, top[0] if top else None)]

    def advance(self, finished: list[bool]) -> None:
        pass  # each round starts by feeding what the caches have not seen
