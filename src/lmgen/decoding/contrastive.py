"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

At each step the `top_k` most likely tokens (after the processors) are candidates; each is run
through the model, and the one chosen maximises

    (1 - penalty_alpha) * p(candidate) - penalty_alpha * max_j cos(h_candidate, h_j)

where h are the final hidden states (after ln_f) and j runs over every earlier position,
prompt included (left padding excluded): likely, but unlike what was already said. The
semantics are transformers' (`penalty_alpha`, `top_k`; it held them in core up to 4.5x).

The k candidates of every row run as k rows of one batch: the cache is expanded to B x k rows
after the prefill, and after each step every row's k copies are made copies of the chosen
candidate's row (the beam-search reorder).
"""

from __future__ import annotations

import torch

from .processor_base import NEG_INF
from .state import DecodeState, Tokens
from .steppers import FinishedRows, Pick, Stepper, processed, top_alternatives


class ContrastiveStepper(Stepper):
    def __init__(self, lm, tokens: Tokens, config, chain, *, record_logits=False):
        self.tok = lm.tokenizer
        self.model = lm.model
        self.tokens = tokens
        self.config = config
        self.chain = chain
        self.k, self.alpha = config.top_k, config.penalty_alpha
        self.record_logits = record_logits
        capacity = tokens.prompt_width + config.max_new_tokens
        self.state = DecodeState(lm.model, tokens, capacity, config.context_overflow)
        eos = lm.eos_token_ids
        self.finished = FinishedRows(tokens.rows, eos[0] if eos else None, tokens.seq.device)
        self.raw_logits = self.processed_logits = None
        self.done = False

    def prefill(self) -> None:
        t = self.tokens
        B, P = t.rows, t.prompt_width
        x, mask = t.seq[:, :P], (t.mask[:, :P] if t.padded else None)
        logits, hidden = self.model(
            x, attention_mask=mask, cache=self.state.cache, logits_to_keep=1,
            output_hidden_states=True,
        )  # fmt: skip
        self.state.fed = P
        self.logits = logits[:, -1]
        C = hidden.shape[-1]
        self.context = hidden.new_zeros((B, P + self.config.max_new_tokens, C))
        self.context[:, :P] = hidden / hidden.norm(dim=-1, keepdim=True)
        self.context_mask = t.mask[:, : P + self.config.max_new_tokens].bool().clone()
        self.n_context = P
        self.state.repeat_rows(self.k)  # every row's k candidates run as k rows

    def distributions(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits.float()
        return logits, processed(self.chain, self.tokens, logits)

    def select(self) -> list[list[Pick]]:
        B, k = self.tokens.rows, self.k
        logits, scores = self.distributions()
        if self.record_logits:
            self.raw_logits, self.processed_logits = logits, scores
        probs = scores.softmax(dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)  # (B, k)
        cand_logits, cand_hidden = self.model(
            top_i.reshape(B * k, 1), cache=self.state.cache, output_hidden_states=True
        )
        h = cand_hidden[:, -1].view(B, k, -1)
        h = h / h.norm(dim=-1, keepdim=True)
        L = self.n_context
        cosine = h @ self.context[:, :L].transpose(1, 2)  # (B, k, L)
        cosine = cosine.masked_fill(~self.context_mask[:, None, :L], NEG_INF)
        degeneration = cosine.max(dim=-1).values
        score = (1.0 - self.alpha) * top_p - self.alpha * degeneration
        # A candidate the chain ruled out (a grammar's mask, top-p, ...: -inf) is never chosen,
        # however unlike the context it is (transformers' search would take it when
        # penalty_alpha is high, breaking the constraint and running on to max_new_tokens).
        possible = torch.isfinite(scores.gather(1, top_i))
        score = score.masked_fill(~possible, NEG_INF)
        best = score.argmax(dim=-1)  # (B,)
        rows = torch.arange(B, device=best.device)
        nxt = top_i[rows, best]
        nxt = self.finished.fill(nxt)
        chosen = rows * k + best
        self.context[:, L] = h[rows, best]
        self.n_context = L + 1
        self.tokens.append(nxt)
        self.state.fed = self.tokens.length
        self.state.reorder(chosen.repeat_interleave(k))
        self.logits = cand_logits[chosen, -1]
        raw_logp = logits.log_softmax(dim=-1)
        raw_lp = raw_logp.gather(1, nxt[:, None])[:, 0].tolist()
        proc_lp = scores.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0].tolist()
        top = None
        if self.config.logprobs:
            top = top_alternatives(self.tok, raw_logp, self.config.logprobs)
        ids = nxt.tolist()
        return [
            [Pick(ids[b], raw_lp[b], proc_lp[b], top[b] if top is not None else None)]
            for b in range(B)
        ]

    def advance(self, finished: list[bool]) -> None:
        self.finished.update(finished)
