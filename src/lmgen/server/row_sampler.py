"""The engine's vectorised choice: one pass over every row of a step whose processor chain
uses only the common rules (repetition, presence and frequency penalties, logit bias,
temperature, top-k, top-p, min-p), with each row's settings as per-row tensors, as vLLM's
sampler does.

The oracle is the processor chain (decoding/processors.py) run on each request alone, and the
result must be its bits, not just close: a row's tokens and log-probabilities must not depend
on who shares its step. So each stage here is the processor's own arithmetic, run only on the
rows that asked for it (the others are left untouched, not multiplied by 1), with the
processor's parameter rounded to float32 as torch rounds a Python number against a float32
tensor; every reduction (softmax, sort, top-k, cumsum, argmax) works along a row, so a row's
result does not depend on the other rows. Stages run in the chain's default order; a chain in
another order (`samplers`, `temperature_last`) or with any other processor is not taken
(`RowRule.of` returns None) and keeps its own chain, run only on its rows.

A chain of temperature, top-k and top-p alone is not taken either: its session samples from
the top candidates only (`sampling.FusedSampler`), whose bits differ from the whole-vocabulary
chain, and it is already cheaper per row than a pass over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmgen.decoding.processor_base import NEG_INF, seen_mask
from lmgen.decoding.processors import (
    LogitBias,
    MinP,
    PresenceFrequencyPenalty,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    sorted_largest,
)
from lmgen.decoding.sampling import sample_from_logits

# the chain's default order of the rules taken here (processors.build_chain)
# logits (rows x vocabulary) per block on the CPU (`row_blocks`)
CPU_BLOCK_ELEMENTS = 1 << 16

_NONE = torch.empty(0, dtype=torch.long)  # no row (never written to)

ORDER = (RepetitionPenalty, PresenceFrequencyPenalty, LogitBias, Temperature, TopK, TopP, MinP)


@dataclass(frozen=True)
class RowRule:
    """One request's chain as numbers: the processors it holds, by kind, and whether it
    samples (else argmax)."""

    sample: bool
    stages: dict  # processor type -> the processor

    @classmethod
    def of(cls, chain: Sequence, sample: bool, vocab_size: int) -> RowRule | None:
        """The rule of `chain`, or None when the chain is not one this pass makes: another
        processor, another order, or a logit bias outside the vocabulary (the chain raises
        the error for that)."""
        kinds = [type(p) for p in chain]
        if any(k not in ORDER for k in kinds):
            return None
        places = [ORDER.index(k) for k in kinds]
        if places != sorted(set(places)):
            return None  # reordered or repeated
        stages = dict(zip(kinds, chain, strict=True))
        bias = stages.get(LogitBias)
        if bias is not None and any(not 0 <= t < vocab_size for t in bias.bias):
            return None
        return cls(sample, stages)


@dataclass
class RowPart:
    """Consecutive rows of one request: its rule, its sequences so far (rows, length; what
    its chain is given) and each row's generator."""

    rule: RowRule
    input_ids: torch.Tensor
    generators: Sequence


def _float32(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """Per-row parameters (rows, 1), rounded to float32 as a Python number is against a
    float32 tensor."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]


def row_blocks(parts: list[RowPart], vocab_size: int, device) -> list[tuple[int, int]]:
    """The parts in blocks (`parts[a:b]`) for one `RowSampler` each. On the CPU a block holds
    at most `CPU_BLOCK_ELEMENTS` logits (a request's rows stay together): torch's CPU softmax
    over several long rows is several times slower per row than over one (16 x 50257: 3.8 ms
    against 16 x 0.04 ms for log_softmax), as each pass goes over all the rows before the
    next, so with GPT-2's vocabulary each row is its own block, and with 4096 tokens 16 rows
    share one (`python -m bench.row_sampler_ab`). A row's bits are the same in any block:
    every operation works along a row."""
    if torch.device(device).type != "cpu":
        return [(0, len(parts))]
    out, a, n = [], 0, 0  # n: rows in parts[a:b]
    for b, part in enumerate(parts):
        rows = part.input_ids.shape[0]
        if b > a and (n + rows) * vocab_size > CPU_BLOCK_ELEMENTS:
            out.append((a, b))
            a, n = b, 0
        n += rows
    out.append((a, len(parts)))
    return out


class RowSampler:
    """Processes and chooses the rows of `parts` (in order) from their logits in one pass."""

    def __init__(self, parts: list[RowPart]):
        self.parts = parts
        # each row's part and its place in that part
        self.rows = [(p, r) for p in parts for r in range(p.input_ids.shape[0])]
        # the kinds of processor some row holds: a stage no row asks for costs nothing (most
        # rows hold one or two, and a block is often a single row: `row_blocks`)
        self.kinds = {k for p in parts for k in p.rule.stages}

    def _with(self, kind) -> tuple[torch.Tensor, list]:
        """(row indices, each such row's processor of `kind`)."""
        if kind not in self.kinds:
            return _NONE, []
        idx, procs = [], []
        for i, (part, _) in enumerate(self.rows):
            p = part.rule.stages.get(kind)
            if p is not None:
                idx.append(i)
                procs.append(p)
        return torch.tensor(idx, dtype=torch.long), procs

    def _ids(self, idx: torch.Tensor, starts: list[int], device) -> torch.Tensor:
        """(rows, longest) the sequences of rows `idx` from `starts` on, padded with -1, an id
        every mask drops."""
        seqs = []
        for i, start in zip(idx.tolist(), starts, strict=True):
            part, r = self.rows[i]
            seqs.append(part.input_ids[r, start:])
        width = max(s.shape[0] for s in seqs)
        out = torch.full((len(seqs), width), -1, dtype=torch.long, device=device)
        for r, s in enumerate(seqs):
            out[r, : s.shape[0]] = s
        return out

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores (rows, vocab) each row's chain gives, float32 logits in."""
        x = logits.clone()
        R, V = x.shape

        def take(idx: torch.Tensor) -> torch.Tensor:  # the rows `idx` (no copy: all rows)
            return x if len(idx) == R else x[idx]

        def put(idx: torch.Tensor, value: torch.Tensor) -> None:
            nonlocal x
            if len(idx) == R:
                x = value
            else:
                x[idx] = value

        idx, procs = self._with(RepetitionPenalty)
        if len(idx):
            s = take(idx)
            seen = seen_mask(self._ids(idx, [0] * len(procs), x.device), V)
            pen = _float32([p.penalty for p in procs], x)
            put(idx, torch.where(seen, torch.where(s < 0, s * pen, s / pen), s))

        idx, procs = self._with(PresenceFrequencyPenalty)
        if len(idx):
            s = take(idx)
            ids = self._ids(idx, [p.prompt_length for p in procs], x.device)
            ids = torch.where((ids < 0) | (ids >= V), V, ids)
            counts = torch.zeros(len(idx), V + 1, dtype=x.dtype, device=x.device)
            counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=x.dtype))
            counts = counts[:, :V]
            presence = _float32([p.presence for p in procs], x)
            frequency = _float32([p.frequency for p in procs], x)
            put(idx, s - presence * (counts > 0).to(x.dtype) - frequency * counts)

        idx, procs = self._with(LogitBias)
        if len(idx):
            pairs = [(i, t, v) for i, p in zip(idx.tolist(), procs, strict=True)
                     for t, v in p.bias.items()]  # fmt: skip
            rows, cols, values = zip(*pairs, strict=True)
            at = torch.tensor(rows, device=x.device), torch.tensor(cols, device=x.device)
            x[at] += torch.tensor(values, dtype=torch.float32).to(x.device, x.dtype)

        idx, procs = self._with(Temperature)
        if len(idx):
            put(idx, take(idx) / _float32([p.temperature for p in procs], x))

        idx, procs = self._with(TopK)
        if len(idx):
            s = take(idx)
            ks = [min(p.k, V) for p in procs]
            top = torch.topk(s, max(ks), dim=-1).values
            kth = top.gather(1, torch.tensor(ks, device=x.device)[:, None] - 1)
            put(idx, s.masked_fill(s < kth, NEG_INF))

        idx, procs = self._with(TopP)
        if len(idx):
            # rows where few logits are finite (after top-k) sort only those: apart from rows
            # that need the full sort, so those do not make the others sort theirs
            finite = (take(idx) > NEG_INF).sum(dim=-1)
            few = ((finite > 0) & (finite <= TopP.FEW_FINITE_FRACTION * V)).tolist()
            for kind in (True, False):
                sub = [r for r, f in enumerate(few) if f == kind]
                if sub:
                    at = idx[sub]
                    put(at, _top_p(take(at), [procs[r] for r in sub]))

        idx, procs = self._with(MinP)
        if len(idx):
            s = take(idx)
            probs = s.softmax(dim=-1)
            threshold = _float32([p.min_p for p in procs], x)
            remove = probs < threshold * probs.amax(dim=-1, keepdim=True)
            for keep in sorted({min(p.min_tokens_to_keep, V) for p in procs}):
                rows = [r for r, p in enumerate(procs) if min(p.min_tokens_to_keep, V) == keep]
                top = torch.topk(probs[rows], keep, dim=-1).indices
                remove[rows] = remove[rows].scatter(1, top, False)
            put(idx, s.masked_fill(remove, NEG_INF))
        return x

    def choose(self, logits: torch.Tensor):
        """(tokens, raw log-probabilities, processed log-probabilities), one per row: the
        stepper's own choice (`steppers.SampleStepper.select`) for every row. Raises what
        sampling raises (a row with nothing left to draw) before any row draws."""
        logits = logits.float()
        raw_logp = logits.log_softmax(dim=-1)
        scores = self.process(logits)
        sample = [i for i, (p, _) in enumerate(self.rows) if p.rule.sample]
        greedy = [i for i, (p, _) in enumerate(self.rows) if not p.rule.sample]
        nxt = torch.empty(len(self.rows), dtype=torch.long, device=logits.device)
        R = len(self.rows)
        if greedy:
            nxt[greedy] = (scores if len(greedy) == R else scores[greedy]).argmax(dim=-1)
        if sample:
            gens = [g for p in self.parts for g in p.generators]
            gens = [gens[i] for i in sample]
            nxt[sample] = sample_from_logits(scores if len(sample) == R else scores[sample], gens)
        raw = raw_logp.gather(1, nxt[:, None])[:, 0]
        chained = [i for i, (p, _) in enumerate(self.rows) if p.rule.stages]
        proc = raw.clone()  # an empty chain: the processed log-probability is the raw one
        if len(chained) == R:
            proc = scores.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0]
        elif chained:
            proc[chained] = scores[chained].log_softmax(dim=-1).gather(1, nxt[chained, None])[:, 0]
        return nxt, raw, proc


def _top_p(x: torch.Tensor, procs: list[TopP]) -> torch.Tensor:
    """`TopP` of each row with its own p and `min_tokens_to_keep`. When few logits are finite,
    the largest `n` (the most finite in any of these rows) are sorted rather than the row, as
    the processor does: padded with -inf in front, each row equals its full stable ascending
    sort in every finite place (a row with fewer finite logits has -inf among its `n`, the same
    numbers the full sort has there), so softmax and cumsum see the same numbers."""
    rows, V = x.shape
    n_finite = int((x > NEG_INF).sum(dim=-1).max())
    if 0 < n_finite <= TopP.FEW_FINITE_FRACTION * V:
        values, ids = sorted_largest(x, n_finite)
        ascending = x.new_full((rows, V), NEG_INF)
        ascending[:, V - n_finite :] = values
    else:
        ascending, ids = torch.sort(x, dim=-1, stable=True)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= _float32([1 - p.top_p for p in procs], x)
    keep = torch.tensor([p.min_tokens_to_keep for p in procs], device=x.device)[:, None]
    remove &= torch.arange(V, device=x.device)[None] < V - keep
    if ids.shape[1] < V:
        remove = remove[:, V - ids.shape[1] :]
    mask = torch.zeros_like(x, dtype=torch.bool).scatter_(1, ids, remove)
    return x.masked_fill(mask, NEG_INF)
