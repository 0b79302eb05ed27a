"""Diverse (group) beam search (Vijayakumar et al. 2016, "Diverse Beam Search").

The `num_beams` beams are split into `num_beam_groups` groups searched one after another at
each step; a group's log-probabilities are lowered by `diversity_penalty` times the number of
times each token was already chosen at this step by the earlier groups (Hamming diversity),
before the other processors run. Each group keeps its own `num_beams / num_beam_groups`
finished hypotheses; the returned sequences are the best over all groups.

The semantics are transformers' `_group_beam_search` with its `BeamSearchScorer` (which it
held in core up to 4.5x), so scores and tokens match it; the bookkeeping is per group and per
prompt in Python, the model step is one batch of every beam.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .beam import DEAD, NEG, BeamRows
from .processor_base import NEG_INF
from .state import DecodeState, Tokens
from .steppers import top_alternatives


@dataclass
class _Hyps:
    """A group's n best finished hypotheses (transformers' BeamHypotheses)."""

    n: int
    length_penalty: float
    early_stopping: bool | str
    max_new: int
    beams: list = field(default_factory=list)  # (score, tokens, raw, proc, top, eos)
    worst: float = 1e9
    done: bool = False

    def add(self, score_sum: float, generated: int, item: tuple) -> None:
        score = score_sum / (generated**self.length_penalty)
        if len(self.beams) < self.n or score > self.worst:
            self.beams.append((score, *item))
            if len(self.beams) > self.n:
                ranked = sorted((s[0], i) for i, s in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum: float, generated: int) -> bool:
        if len(self.beams) < self.n:
            return False
        if self.early_stopping is True:
            return True
        length = generated
        if self.early_stopping == "never" and self.length_penalty > 0:
            length = self.max_new
        return self.worst >= best_sum / (length**self.length_penalty)


class GroupBeamStepper(BeamRows):
    def __init__(self, lm, tokens: Tokens, config, chain, *, record_logits=False):
        self.tok = lm.tokenizer
        self.config = config
        self.chain = chain
        self.record_logits = record_logits
        self.nb, self.G = config.num_beams, config.num_beam_groups
        self.gs = self.nb // self.G
        self.penalty = config.diversity_penalty
        self.eos_ids = [] if config.ignore_eos else lm.eos_token_ids
        self.pad = lm.eos_token_ids[0] if lm.eos_token_ids else 0
        self.tokens = tokens
        self.B, self.P = tokens.rows, tokens.prompt_width
        self.max_new = config.max_new_tokens
        capacity = self.P + self.max_new
        self.state = DecodeState(lm.model, tokens, capacity, config.context_overflow)
        B, nb = self.B, self.nb
        self.device = device = tokens.seq.device
        self.scores = torch.full((B * nb,), NEG, device=device)
        self.scores.view(B, nb)[:, :: self.gs] = 0.0
        self.history = [([], [], []) for _ in range(B * nb)]  # raw, processed, top per row
        self.hyps = [
            [_Hyps(self.gs, config.length_penalty, config.early_stopping, self.max_new)
             for _ in range(self.G)]
            for _ in range(B)
        ]  # fmt: skip
        self.n_gen = 0
        self.raw_logits = self.processed_logits = None
        self.candidates = None
        self.done = False

    def select(self) -> list:
        B, nb, gs, V = self.B, self.nb, self.gs, self.logits.shape[-1]
        raw = torch.log_softmax(self.logits.float(), dim=-1)
        seq = self.tokens.seq[:, : self.tokens.length]
        current = torch.zeros(B * nb, dtype=torch.long, device=self.device)
        reorder = torch.zeros(B * nb, dtype=torch.long, device=self.device)
        new_history = list(self.history)
        top = (
            top_alternatives(self.tok, raw, self.config.logprobs) if self.config.logprobs else None
        )
        processed_all = torch.empty_like(raw) if self.record_logits else None
        n_keep = max(2, 1 + len(self.eos_ids)) * gs
        generated = self.n_gen + 1
        for g in range(self.G):
            rows = torch.tensor(
                [b * nb + g * gs + i for b in range(B) for i in range(gs)], device=self.device
            )
            scores = raw[rows]
            if g and self.penalty:
                for b in range(B):
                    earlier = current[b * nb : b * nb + g * gs]
                    freq = torch.bincount(earlier, minlength=V).to(scores.dtype)
                    scores[b * gs : (b + 1) * gs] -= self.penalty * freq
            if self.chain:
                scores = self.chain(seq[rows], scores)
            if processed_all is not None:
                processed_all[rows] = scores
            proc_logp = scores.log_softmax(-1) if self.chain or (g and self.penalty) else raw[rows]
            total = (scores + self.scores[rows][:, None]).view(B, gs * V)
            top_scores, top_idx = total.topk(n_keep, dim=-1)
            parent = torch.div(top_idx, V, rounding_mode="floor")
            token = top_idx % V
            ts, tk, pr = top_scores.tolist(), token.tolist(), parent.tolist()
            for b in range(B):
                hyps = self.hyps[b][g]
                base = b * nb + g * gs
                if hyps.done:
                    for i in range(gs):
                        current[base + i] = self.pad
                        reorder[base + i] = base
                        self.scores[base + i] = 0.0
                    continue
                chosen = 0
                for rank, (s, t, p) in enumerate(zip(ts[b], tk[b], pr[b], strict=True)):
                    if s <= DEAD:  # impossible, or from a dead beam: so is every one after
                        break
                    src = base + p
                    if t in self.eos_ids:
                        if rank >= gs:
                            continue
                        gen = self._generated(src)
                        raw_l, proc_l, top_l = self.history[src]
                        hyps.add(s, generated, (gen, raw_l, proc_l, top_l, True))
                        continue
                    dst = base + chosen
                    current[dst] = t
                    reorder[dst] = src
                    self.scores[dst] = s
                    r = b * gs + p  # the parent's row among this group's rows
                    raw_l, proc_l, top_l = self.history[src]
                    new_history[dst] = (
                        raw_l + [float(raw[src, t])],
                        proc_l + [float(proc_logp[r, t])],
                        top_l + [top[src]] if top is not None else top_l,
                    )
                    chosen += 1
                    if chosen == gs:
                        break
                for i in range(chosen, gs):  # fewer possible continuations than beams: dead
                    current[base + i] = self.pad
                    reorder[base + i] = base
                    self.scores[base + i] = NEG_INF
                best_sum = max(ts[b])
                # a group with no live beam left has found all it can
                hyps.done = hyps.done or chosen == 0 or hyps.is_done(best_sum, generated)
        if self.record_logits:
            self.raw_logits, self.processed_logits = raw, processed_all
        # every beam's row now continues its chosen parent's, with this step's token
        self.history = new_history
        gen_cols = self.tokens.seq[:, self.P : self.tokens.length]
        self.tokens.seq[:, self.P : self.tokens.length] = gen_cols[reorder]
        self.tokens.append(current)
        self._reorder = reorder
        self.n_gen = generated
        all_done = all(h.done for row in self.hyps for h in row)
        if all_done or self.n_gen == self.max_new:
            self.done = True
            return self.final()
        return []

    def _generated(self, row: int) -> list[int]:
        return self.tokens.seq[row, self.P : self.tokens.length].tolist()

    def advance(self, finished: list[bool]) -> None:
        self.state.reorder(self._reorder)
        self.logits = self.state.feed()[:, -1]

    def final(self) -> list[dict]:
        B, nb, gs = self.B, self.nb, self.gs
        out = []
        for b in range(B):
            for g in range(self.G):
                hyps = self.hyps[b][g]
                if hyps.done:
                    continue
                for i in range(gs):
                    row = b * nb + g * gs + i
                    if float(self.scores[row]) <= DEAD:
                        continue
                    raw_l, proc_l, top_l = self.history[row]
                    item = (self._generated(row), raw_l, proc_l, top_l, False)
                    hyps.add(float(self.scores[row]), self.n_gen, item)
            ranked = sorted((h for group in self.hyps[b] for h in group.beams), key=lambda h: h[0])
            for _ in range(self.config.num_return_sequences):
                # fewer hypotheses than asked for (a constraint allowed fewer): empty ones
                score, gen, raw_l, proc_l, top_l, eos = (
                    ranked.pop() if ranked else (NEG, [], [], [], [], False)
                )
                out.append(
                    {"token_ids": gen, "logprobs": raw_l, "processed_logprobs": proc_l,
                     "top": list(top_l) if self.config.logprobs else None,
                     "finish_reason": "eos" if eos else "length", "score": score}
                )  # fmt: skip
        return out
