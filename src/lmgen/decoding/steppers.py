"""The stepper protocol, and greedy and sampling: the stepper that picks one token per row
per step.

A stepper turns one step's logits into tokens over a shared `DecodeState`; `Session` does the
rest (EOS, stop strings, text, results). Every stepper (sample/greedy here, beam and diverse
beam, contrastive, speculative) subclasses `Stepper`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from lmgen.errors import GenerationError

from .results import TopLogprob
from .sampling import FusedSampler, sample_from_logits
from .state import DecodeState, Tokens


@dataclass
class Pick:
    token_id: int
    logprob: float  # raw model
    processed_logprob: float
    top: list[TopLogprob] | None = None


def top_alternatives(tok, raw_logp: torch.Tensor, n: int) -> list[list[TopLogprob]]:
    """The raw model's `n` most likely tokens per row of `raw_logp` (rows, vocab)."""
    values, ids = raw_logp.topk(n, dim=-1)
    return [
        [TopLogprob(i, tok.token_to_str(i), v) for v, i in zip(vs, js, strict=True)]
        for vs, js in zip(values.tolist(), ids.tolist(), strict=True)
    ]


def processed(chain, tokens: Tokens, logits: torch.Tensor) -> torch.Tensor:
    """The chain's scores for the next position of every row (the logits when it is empty)."""
    return chain(tokens.seq[:, : tokens.length], logits) if chain else logits


class FinishedRows:
    """Rows that have ended go on being computed with their batch; their new tokens are the
    pad token, so the processors of the other rows see nothing change."""

    def __init__(self, rows: int, pad: int | None, device):
        self.pad = pad
        self.unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        self.any = False

    def fill(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pad is None or not self.any:
            return tokens
        return torch.where(self.unfinished, tokens, self.pad)

    def update(self, finished: list[bool]) -> None:
        self.any = any(finished)
        if self.any:
            self.unfinished = torch.tensor(
                [not f for f in finished], dtype=torch.bool, device=self.unfinished.device
            )


class Stepper(Protocol):
    """What `Session` drives: `prefill()` once, then per step `select()` picks the step's
    tokens (a list of `Pick`s per row; beam search: its hypotheses once it is done), then
    `advance(finished)` runs the model for the next step. `done` says when the stepper itself
    has nothing more to do; `raw_logits`/`processed_logits` hold the step's distributions when
    recording them was asked for."""

    done: bool
    raw_logits: torch.Tensor | None
    processed_logits: torch.Tensor | None

    def prefill(self) -> None: ...

    def select(self) -> list: ...

    def advance(self, finished: list[bool]) -> None: ...

    def distributions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, processed) logits of the pending step, without choosing."""
        raise GenerationError(f"{type(self).__name__} does not show a step's distributions")


class SampleStepper(Stepper):
    """Greedy (argmax) or sampling (one seeded draw per row) from the processed logits."""

    def __init__(self, lm, tokens: Tokens, config, chain, generators, *, record_logits=False,
                 step_fn=None):  # fmt: skip
        self.tok = lm.tokenizer
        self.tokens = tokens
        self.config = config
        self.chain = chain
        self.sample = config.effective_strategy() == "sample"
        self.generators = generators
        self.record_logits = record_logits
        capacity = tokens.prompt_width + config.max_new_tokens
        self.state = DecodeState(lm.model, tokens, capacity, config.context_overflow, step_fn)
        self.fused = FusedSampler.from_chain(chain) if self.sample and not record_logits else None
        eos = lm.eos_token_ids
        self.finished = FinishedRows(tokens.rows, eos[0] if eos else None, tokens.seq.device)
        self.logits: torch.Tensor | None = None
        self.raw_logits = self.processed_logits = None
        self.done = False

    def prefill(self) -> None:
        self.logits = self.state.feed()[:, -1]

    def distributions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, processed) logits of the pending step, without choosing."""
        logits = self.logits.float()
        return logits, processed(self.chain, self.tokens, logits)

    def select(self) -> list[list[Pick]]:
        logits = self.logits.float()
        # one fused pass (log_softmax) rather than logsumexp's several reductions
        raw_logp = logits.log_softmax(dim=-1)
        picked = self.fused(logits, self.generators) if self.fused is not None else None
        if picked is not None:
            nxt, proc_lp = picked
        else:
            scores = processed(self.chain, self.tokens, logits)
            if self.sample:
                nxt = sample_from_logits(scores, self.generators)
            else:
                nxt = scores.argmax(dim=-1)
            if self.chain:
                proc_lp = scores.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0]
            if self.record_logits:
                self.raw_logits, self.processed_logits = logits, scores
        raw_lp = raw_logp.gather(1, nxt[:, None])[:, 0]
        if picked is None and not self.chain:
            proc_lp = raw_lp
        nxt = self.finished.fill(nxt)
        self.tokens.append(nxt)
        top = None
        if self.config.logprobs:
            top = top_alternatives(self.tok, raw_logp, self.config.logprobs)
        ids, raw, proc = nxt.tolist(), raw_lp.tolist(), proc_lp.tolist()
        return [
            [Pick(ids[b], raw[b], proc[b], top[b] if top is not None else None)]
            for b in range(len(ids))
        ]

    def advance(self, finished: list[bool]) -> None:
        self.finished.update(finished)
        self.logits = self.state.feed()[:, -1]
