"""Beam search: a different selector over the same model step and the same processors.

Vectorised over batch x beams; the shared decode state's rows are the running beams, and the
KV cache is reordered by beam index each step. The bookkeeping follows transformers' beam
search so results are identical: the top `2 * num_beams` continuations per prompt are scored,
those ending in EOS or a stop string (among the top `num_beams`) become finished hypotheses
scored by `sum_logprobs / generated_len ** length_penalty`, and the best `num_beams`
unfinished ones keep running. One `select()` is one step of the search, so a server can
interleave a long search with other requests.
"""

from __future__ import annotations

import torch

from .processor_base import NEG_INF
from .results import BeamStep, TopLogprob
from .state import DecodeState, Tokens
from .steppers import Stepper, processed
from .text import stop_cut

NEG = -1.0e9  # transformers' "impossible" score; kept identical so scores match exactly
# A running beam scored at or below this is dead: it holds only because fewer than num_beams
# continuations were possible (a grammar, top-k or min-tokens mask left EOS alone, or -inf
# everywhere), and it carries an EOS already chosen (scored NEG) or an impossible token. It
# can neither become a finished hypothesis nor keep the search going (transformers' search
# would run such beams to max_new_tokens: a beam + guided_choice request ran 2048 steps).
DEAD = NEG / 2


class BeamRows(Stepper):
    """What beam and diverse beam search share: each prompt is prefilled once and its cache
    copied to its beams; the distributions are log-probabilities, then the chain."""

    def prefill(self) -> None:
        logits = self.state.feed()[:, -1]
        self.tokens.repeat_rows(self.nb)
        self.state.repeat_rows(self.nb)
        self.logits = logits.repeat_interleave(self.nb, 0)

    def distributions(self) -> tuple[torch.Tensor, torch.Tensor]:
        raw = torch.log_softmax(self.logits.float(), dim=-1)
        return raw, processed(self.chain, self.tokens, raw)


class BeamStepper(BeamRows):
    def __init__(self, lm, tokens: Tokens, config, chain, *, record_logits=False,
                 record_candidates=False):  # fmt: skip
        self.tok = lm.tokenizer
        self.config = config
        self.chain = chain
        self.record_logits = record_logits
        self.record_candidates = record_candidates
        device = tokens.seq.device
        self.device = device
        nb = config.num_beams
        self.nb, self.lp, self.early = nb, config.length_penalty, config.early_stopping
        self.eos_ids = [] if config.ignore_eos else lm.eos_token_ids
        self.eos = torch.tensor(self.eos_ids, dtype=torch.long, device=device)
        self.keep = max(2, 1 + len(self.eos_ids)) * nb
        self.top_mask = torch.arange(self.keep, device=device) < nb
        self.stop = list(config.stop or [])
        self.n_top = config.logprobs

        self.tokens = tokens
        B = tokens.rows
        self.B, self.P = B, tokens.prompt_width
        self.max_new = M = config.max_new_tokens
        capacity = self.P + M
        # Prefill each prompt once, then give each of its beams a copy (`prefill`).
        self.state = DecodeState(lm.model, tokens, capacity, config.context_overflow)
        self.run_raw = torch.zeros((B, nb, M), device=device)
        self.run_proc = torch.zeros((B, nb, M), device=device)
        self.run_scores = torch.zeros((B, nb), device=device)
        self.run_scores[:, 1:] = NEG
        self.fin_gen = torch.zeros((B, nb, M), dtype=torch.long, device=device)
        self.fin_raw = torch.zeros((B, nb, M), device=device)
        self.fin_proc = torch.zeros((B, nb, M), device=device)
        self.fin_scores = torch.full((B, nb), NEG, device=device)
        self.fin_len = torch.zeros((B, nb), dtype=torch.long, device=device)
        self.fin_done = torch.zeros((B, nb), dtype=torch.bool, device=device)
        if self.n_top:
            self.run_top_v = torch.zeros((B, nb, M, self.n_top), device=device)
            self.run_top_i = torch.zeros((B, nb, M, self.n_top), dtype=torch.long, device=device)
            self.fin_top_v, self.fin_top_i = self.run_top_v.clone(), self.run_top_i.clone()
        self.improvable = torch.ones((B, 1), dtype=torch.bool, device=device)
        self.batch_offset = torch.arange(B, device=device)[:, None] * nb
        self.logits = None
        self.raw_logits = self.processed_logits = None
        self.candidates: list[BeamStep] | None = None
        self.n_gen = 0
        self.done = False

    def _gather(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Rows of x (B, nb, ...) picked per prompt by index (B, k)."""
        shape = index.shape + x.shape[2:]
        idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
        return x.gather(1, idx)

    def select(self) -> list[list]:
        B, nb, P, M = self.B, self.nb, self.P, self.max_new
        n_gen = self.n_gen
        raw, scores = self.distributions()
        if self.record_logits:
            self.raw_logits, self.processed_logits = raw, scores
        V = scores.shape[-1]
        acc = (scores.view(B, nb, V) + self.run_scores[:, :, None]).view(B, nb * V)
        top_scores, top_idx = acc.topk(self.keep, dim=-1)
        parent = torch.div(top_idx, V, rounding_mode="floor")
        token = top_idx % V
        flat_parent = (parent + self.batch_offset).view(-1)
        run_gen = self.tokens.seq[:, P : P + M].view(B, nb, M)
        cand_gen = self._gather(run_gen, parent)
        cand_gen[:, :, n_gen] = token
        cand_raw = self._gather(self.run_raw, parent)
        cand_raw[:, :, n_gen] = raw[flat_parent, token.view(-1)].view(B, self.keep)
        cand_proc = self._gather(self.run_proc, parent)
        proc = scores.log_softmax(-1) if self.chain else raw
        cand_proc[:, :, n_gen] = proc[flat_parent, token.view(-1)].view(B, self.keep)
        if self.n_top:
            tv, ti = raw.topk(self.n_top, dim=-1)
            cand_top_v = self._gather(self.run_top_v, parent)
            cand_top_i = self._gather(self.run_top_i, parent)
            cand_top_v[:, :, n_gen] = tv[flat_parent].view(B, self.keep, self.n_top)
            cand_top_i[:, :, n_gen] = ti[flat_parent].view(B, self.keep, self.n_top)
        if len(self.eos_ids):
            hits = torch.isin(token, self.eos)
        else:
            hits = torch.zeros_like(token, dtype=torch.bool)
        if self.stop:
            hits = hits | self._stop_hits(cand_gen, n_gen + 1)
        if n_gen + 1 == M:
            hits = torch.ones_like(hits)

        # The best num_beams continuations that did not finish keep running.
        running_scores = top_scores + hits.float() * NEG
        nxt = running_scores.topk(nb, dim=-1).indices
        new_gen = self._gather(cand_gen, nxt)
        self.run_raw = self._gather(cand_raw, nxt)
        self.run_proc = self._gather(cand_proc, nxt)
        if self.n_top:
            self.run_top_v = self._gather(cand_top_v, nxt)
            self.run_top_i = self._gather(cand_top_i, nxt)
        self.run_scores = running_scores.gather(1, nxt)
        beam_src = (parent.gather(1, nxt) + self.batch_offset).view(-1)

        # Finished candidates among the top num_beams join the finished set.
        just_done = hits & self.top_mask[None, :] & (top_scores > DEAD)
        norm = top_scores / ((n_gen + 1) ** self.lp)
        full = self.fin_done.all(-1, keepdim=True) & (self.early is True)
        norm = norm + full.float() * NEG + (~self.improvable).float() * NEG
        norm = norm + (~just_done).float() * NEG
        m_scores = torch.cat([self.fin_scores, norm], 1)
        best = m_scores.topk(nb, dim=-1).indices
        self.fin_gen = self._gather(torch.cat([self.fin_gen, cand_gen], 1), best)
        self.fin_raw = self._gather(torch.cat([self.fin_raw, cand_raw], 1), best)
        self.fin_proc = self._gather(torch.cat([self.fin_proc, cand_proc], 1), best)
        if self.n_top:
            self.fin_top_v = self._gather(torch.cat([self.fin_top_v, cand_top_v], 1), best)
            self.fin_top_i = self._gather(torch.cat([self.fin_top_i, cand_top_i], 1), best)
        self.fin_scores = m_scores.gather(1, best)
        new_len = torch.full_like(top_scores, n_gen + 1, dtype=torch.long)
        self.fin_len = torch.cat([self.fin_len, new_len], 1).gather(1, best)
        self.fin_done = torch.cat([self.fin_done, just_done], 1).gather(1, best)
        if self.record_candidates:
            self.candidates = self._candidates(parent, token, top_scores, hits, just_done, nxt)

        # The running beams' rows (a prompt's beams share its prompt columns, so only the
        # generated columns move); the cache follows in `advance`.
        self.tokens.seq[:, P : P + M] = new_gen.view(B * nb, M)
        self.tokens.length += 1
        self.n_gen = n_gen = n_gen + 1
        lp = self.lp
        best_len = M if (self.early == "never" and lp > 0) else n_gen
        best_running = self.run_scores[:, :1] / (best_len**lp)
        best_running = best_running.masked_fill(self.run_scores[:, :1] <= DEAD, NEG_INF)
        worst_done = torch.where(
            self.fin_done,
            self.fin_scores.min(1, keepdim=True).values,
            torch.tensor(NEG, device=self.device),
        )
        self.improvable = self.improvable & (best_running > worst_done).any(-1, keepdim=True)
        go_on = (
            bool(self.improvable.any())
            and not (bool(self.fin_done.all()) and self.early is True)
            and not bool(hits.all())
        )
        if go_on:
            self._src = beam_src
            return []
        self.done = True
        return self.final()

    def advance(self, finished: list[bool]) -> None:
        self.state.reorder(self._src)
        self.logits = self.state.feed()[:, -1]

    def _stop_hits(self, cand_gen: torch.Tensor, n: int) -> torch.Tensor:
        """Candidates whose generated text now contains a stop string."""
        rows = cand_gen[:, :, :n].tolist()
        hit = [
            [stop_cut(self.tok, r, self.tok.decode(r), self.stop) is not None for r in prompt_rows]
            for prompt_rows in rows
        ]
        return torch.tensor(hit, dtype=torch.bool, device=self.device)

    def final(self) -> list[dict]:
        """The returned beams, prompt by prompt, best first: `num_return_sequences` dicts
        {token_ids, logprobs, processed_logprobs, top, finish_reason, score}."""
        gens, raws, procs = self.fin_gen.tolist(), self.fin_raw.tolist(), self.fin_proc.tolist()
        lens, scs, dones = self.fin_len.tolist(), self.fin_scores.tolist(), self.fin_done.tolist()
        if self.n_top:
            tvs, tis = self.fin_top_v.tolist(), self.fin_top_i.tolist()
        out = []
        for b in range(self.B):
            for j in range(self.config.num_return_sequences):
                n = lens[b][j]
                gen, lps, pps = gens[b][j][:n], raws[b][j][:n], procs[b][j][:n]
                top = None
                if self.n_top:
                    name = self.tok.token_to_str
                    top = [
                        [TopLogprob(i, name(i), v) for v, i in zip(vs, js, strict=True)]
                        for vs, js in zip(tvs[b][j][:n], tis[b][j][:n], strict=True)
                    ]
                reason = "length"
                if gen and gen[-1] in self.eos_ids:
                    gen, lps, pps, reason = gen[:-1], lps[:-1], pps[:-1], "eos"
                    top = top[:-1] if top is not None else None
                if not dones[b][j]:
                    reason = "length"
                    if scs[b][j] <= DEAD:  # fewer hypotheses exist than were asked for
                        gen, lps, pps, top = [], [], [], [] if top is not None else None
                out.append(
                    {"token_ids": gen, "logprobs": lps, "processed_logprobs": pps, "top": top,
                     "finish_reason": reason, "score": scs[b][j]}
                )  # fmt: skip
        return out

    def _candidates(self, parent, token, scores, hits, just_done, nxt) -> list[BeamStep]:
        parent_l, token_l, score_l = parent.tolist(), token.tolist(), scores.tolist()
        hits_l, done_l, nxt_l = hits.tolist(), just_done.tolist(), nxt.tolist()
        steps = []
        for b in range(self.B):
            kept = {k: i for i, k in enumerate(nxt_l[b])}
            st = BeamStep(self.n_gen)
            for k in range(len(token_l[b])):
                if done_l[b][k]:
                    status, beam = "finished", None
                elif k in kept and not hits_l[b][k]:
                    status, beam = "kept", kept[k]
                else:
                    status, beam = "pruned", None
                tid = token_l[b][k]
                st.candidates.append(
                    {"parent": parent_l[b][k], "token_id": tid, "token": self.tok.token_to_str(tid),
                     "score": score_l[b][k], "status": status, "beam": beam}
                )  # fmt: skip
            steps.append(st)
        return steps
