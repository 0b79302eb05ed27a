"""`compare()`: generate with each strategy from the same prompts, score everything with the
model, measure every row (the strategies and the human text) the same way.

Generation is batched (`batch_rows` rows of the KV cache at a time: prompts x samples, or
prompts x beams) through `Session`. Sampling strategies record each step's processed logits
to measure the entropy of the distribution each token was drawn from.

Seeding: every batch runs under its own seed, drawn from (seed, strategy name, batch index),
in a forked copy of torch's RNG (the caller's RNG state is left as it was). Each prompt of a
batch draws its own numbers. (A Session seeded with `seed=` would give every prompt of the
batch the same uniforms — right for one request, but it would make the draws of different
prompts move together, which is what Self-BLEU measures.) Same arguments, same numbers.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmgen.errors import ConfigError
from lmgen.settings import at_least

from . import metrics as M
from .defaults import DEFAULT_BATCH_ROWS, DEFAULT_MAX_NEW_TOKENS, DEFAULT_RESAMPLES
from .passages import (
    DEFAULT_PASSAGES,
    DEFAULT_PROMPT_TOKENS,
    Passage,
    check_fits,
    hamlet_text,
    prompt_passages,
    text_passages,
)
from .scoring import score
from .strategies import HUMAN, Strategy, as_strategies, check_strategies

log = logging.getLogger(__name__)

NGRAM_ORDERS = (1, 2, 3, 4)


@dataclass
class Sample:
    passage: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # None for the human text
    processed_logprobs: list[float] | None = None
    chosen_entropy: list[float] | None = None  # per token, of the distribution drawn from
    nll: np.ndarray | None = None  # filled in by scoring
    entropy: np.ndarray | None = None
    feature: np.ndarray | None = None


@dataclass
class Row:
    name: str
    kind: str  # "human" | "strategy"
    options: dict[str, Any] | None
    chain: list[str]
    samples: list[Sample]
    seconds: float | None = None  # generation wall time
    metrics: dict[str, Any] = field(default_factory=dict)
    per_position_prob: list[float] = field(default_factory=list)
    entropy_histogram: dict[str, list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # the strategy's settings without effect


@dataclass
class CompareResult:
    model: str
    settings: dict[str, Any]
    passages: list[Passage]
    rows: list[Row]
    timing: dict[str, float]

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict:
        from .report import result_dict

        return result_dict(self)


# -- the run ------------------------------------------------------------------------------------


def compare(
    model=None,
    prompts=None,
    *,
    text: str | None = None,
    n: int | None = None,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    strategies=None,
    samples: int = 1,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    resamples: int = DEFAULT_RESAMPLES,
    mauve: bool = False,
    progress: bool = False,
) -> CompareResult:
    """Measure what each decoding strategy does to a text, against human text.

    `model`: an `LM`, a model name or directory (None: the bundled model). The prompts and
    their human continuations: `prompts` (strings, or (prompt, continuation) pairs), or `n`
    passages cut from `text`, or by default `n` = 50 passages of held-out Hamlet — prompt
    `prompt_tokens` tokens, human continuation the `max_new_tokens` after it. `strategies`:
    `Strategy` objects, `"name: key=value ..."` strings or a `{name: options}` mapping (None:
    `DEFAULT_STRATEGIES`). `samples` continuations per prompt for sampling strategies.
    Confidence intervals: `resamples` bootstrap draws over prompts. `mauve`: also MAUVE
    between each strategy and the human text, on the model's own final hidden states.
    Everything is checked before any text is generated.
    """
    from lmgen.lm import LM, load

    _check_arguments(max_new_tokens, samples, batch_rows, resamples, seed, n)
    M.bleu_functions()  # nltk, before any work
    if mauve:
        mauve_module()
    strategies = as_strategies(strategies)
    check_strategies(strategies, max_new_tokens, samples)
    lm = model if isinstance(model, LM) else load(model)
    passages, source = _passages(lm, prompts, text, n, prompt_tokens, max_new_tokens)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = _generate_rows(lm, passages, strategies, max_new_tokens, samples, seed, batch_rows,
                          progress)  # fmt: skip
    gen_wall = time.perf_counter() - wall0
    features = mauve and rows[0].kind == "human"
    _score_rows(lm, passages, rows, features, progress)
    _measure_rows(rows, len(passages), lm.config.vocab_size, resamples, seed, features, progress)

    settings = {
        "model": lm.name,
        "source": source,
        "prompts": len(passages),
        "prompt_tokens": prompt_tokens if prompts is None else None,
        "max_new_tokens": max_new_tokens,
        "samples": samples,
        "seed": seed,
        "batch_rows": batch_rows,
        "resamples": resamples,
        "mauve": bool(features),
        "n_positions": lm.config.n_positions,
        "vocab_size": lm.config.vocab_size,
        "torch_threads": torch.get_num_threads(),
        "device": str(lm.device),
    }
    timing = {
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "generation_wall_s": gen_wall,
    }
    return CompareResult(lm.name, settings, passages, rows, timing)


# -- compare's steps --------------------------------------------------------------------------


def _check_arguments(max_new_tokens, samples, batch_rows, resamples, seed, n) -> None:
    for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("samples", samples, 1),
                             ("batch_rows", batch_rows, 1), ("resamples", resamples, 0),
                             ("seed", seed, 0)):  # fmt: skip
        at_least(low).check(name, value)
    if n is not None and not at_least(1).contains(n):
        raise ConfigError(f"n (the number of prompts) must be an int >= 1, got {n!r}", "n")


def _passages(lm, prompts, text, n, prompt_tokens: int, max_new_tokens: int):
    """The prompts and their human continuations, checked against the model's context, and
    where they came from."""
    if prompts is not None:
        if isinstance(prompts, str):
            prompts = [prompts]
        passages = prompt_passages(lm, list(prompts), max_new_tokens)
        if n is not None:
            passages = passages[:n]
        source = "prompts"
    elif text is not None:
        passages = text_passages(
            lm, text, n or DEFAULT_PASSAGES, prompt_tokens, max_new_tokens, "the text"
        )
        source = "text"
    else:
        if prompt_tokens + max_new_tokens > lm.config.n_positions:
            raise ConfigError(
                f"prompt_tokens {prompt_tokens} + max_new_tokens {max_new_tokens} exceed the "
                f"model's context of {lm.config.n_positions} tokens"
            )
        source = "hamlet_gut.txt (held out)"
        passages = text_passages(
            lm, hamlet_text(), n or DEFAULT_PASSAGES, prompt_tokens, max_new_tokens, source
        )
    check_fits(lm, passages, max_new_tokens)
    for p in passages:
        p.prompt = p.prompt or lm.tokenizer.decode(p.prompt_ids)
    if len(passages) < 2:
        raise ConfigError(
            f"give at least 2 prompts (Self-BLEU compares texts), got {len(passages)}"
        )
    return passages, source


def _generate_rows(lm, passages, strategies, max_new_tokens, samples, seed, batch_rows,
                   progress) -> list[Row]:  # fmt: skip
    """One row per strategy (the human text first, when there is one)."""
    rows: list[Row] = []
    if passages[0].human_ids is not None:
        rows.append(
            Row(
                HUMAN, "human", None, [],
                [Sample(i, p.human_ids, lm.tokenizer.decode(p.human_ids))
                 for i, p in enumerate(passages)],
            )
        )  # fmt: skip
    steps = sum(
        math.ceil(len(passages) / _per_batch(s, max_new_tokens, samples, batch_rows))
        * max_new_tokens
        for s in strategies
    )
    _warm_up(lm, passages[0].prompt_ids)  # so the first strategy's tokens/s is not the slowest
    bar = _bar(steps, progress)
    try:
        for s in strategies:
            rows.append(_generate(lm, passages, s, max_new_tokens, samples, seed, batch_rows, bar))
    finally:
        bar.close()
    return rows


def _score_rows(lm, passages, rows: list[Row], features: bool, progress: bool) -> None:
    """Each sample's log-likelihood and entropies under the model (and its features)."""
    for row in _progress_rows(rows, progress, "scoring"):
        scored = score(
            lm, [(passages[s.passage].prompt_ids, s.token_ids) for s in row.samples],
            features=features,
        )  # fmt: skip
        for smp, sc in zip(row.samples, scored, strict=True):
            smp.nll, smp.entropy, smp.feature = sc.nll, sc.entropy, sc.feature


def _measure_rows(rows: list[Row], n_passages: int, vocab: int, resamples: int, seed: int,
                  features: bool, progress: bool) -> None:  # fmt: skip
    for row in _progress_rows(rows, progress, "measuring"):
        _measure(row, n_passages, vocab, resamples, seed)
    if features:
        human = np.stack([s.feature for s in rows[0].samples if s.feature is not None])
        for row in rows[1:]:
            row.metrics["mauve"] = _mauve(human, row, seed)


def _per_batch(s: Strategy, max_new_tokens: int, samples: int, batch_rows: int) -> int:
    config = s.config(max_new_tokens, samples)
    width = (
        config.num_beams if config.effective_strategy() == "beam" else config.num_return_sequences
    )
    return max(1, batch_rows // width)


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", desc="generating", disable=not enabled, leave=False)


def _progress_rows(rows, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(rows, desc=desc, unit="row", disable=not enabled, leave=False)


def _warm_up(lm, prompt_ids: list[int]) -> None:
    from lmgen.decoding.session import Session

    Session(lm, [prompt_ids], max_new_tokens=2, record=()).results()


def batch_seed(seed: int, name: str, batch: int) -> int:
    state = np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8")), batch])
    return int(state.generate_state(1, dtype=np.uint64)[0])


def _generate(lm, passages, strategy: Strategy, max_new_tokens, samples, seed, batch_rows, bar):
    from lmgen.decoding.session import Session

    config = strategy.config(max_new_tokens, samples)
    kind = config.effective_strategy()
    record = ("logits",) if kind == "sample" else ()
    per_batch = _per_batch(strategy, max_new_tokens, samples, batch_rows)
    bar.set_description(strategy.name)
    out: list[Sample] = []
    chain: list[str] = []
    t0 = time.perf_counter()
    devices = [lm.device] if lm.device.type == "cuda" else []
    for b, lo in enumerate(range(0, len(passages), per_batch)):
        batch = passages[lo : lo + per_batch]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_seed(seed, strategy.name, b))
            session = Session(lm, [p.prompt_ids for p in batch], config, record=record)
            chain = session.chain.describe()
            drawn: list[list[float]] = [[] for _ in range(len(batch) * session.n)]
            steps = 0
            for step in session:
                steps += 1
                bar.update(1)
                if step.processed_logits is not None:
                    h = M.entropy(step.processed_logits).tolist()
                    for i, toks in enumerate(step.tokens):
                        if toks:
                            drawn[i].append(h[i])
            bar.update(max_new_tokens - steps)
            results = session.results()
        for k, res in enumerate(results):
            for j, c in enumerate(res.choices):
                if kind == "sample":
                    ent = drawn[k * session.n + j][: len(c.token_ids)]
                elif kind == "greedy":
                    ent = [0.0] * len(c.token_ids)  # argmax: a point mass
                else:
                    ent = None  # beam search draws from no per-token distribution
                out.append(
                    Sample(
                        lo + k, list(c.token_ids), c.text, c.finish_reason,
                        list(c.processed_logprobs), ent,
                    )
                )  # fmt: skip
    seconds = time.perf_counter() - t0
    row = Row(strategy.name, "strategy", dict(strategy.options), chain, out, seconds)
    row.warnings = strategy.warnings(max_new_tokens, samples)
    return row


# -- measuring ---------------------------------------------------------------------------------


def _measure(row: Row, n_passages: int, vocab: int, resamples: int, seed: int) -> None:
    smp = row.samples
    groups: list[list[int]] = [[] for _ in range(n_passages)]
    for i, s in enumerate(smp):
        groups[s.passage].append(i)

    def pick(idx: np.ndarray) -> np.ndarray:
        return np.fromiter((i for p in idx for i in groups[p]), dtype=np.int64)

    ntok = np.array([len(s.token_ids) for s in smp], dtype=np.float64)
    nll = np.array([float(s.nll.sum()) for s in smp])
    ent = np.array([float(s.entropy.sum()) for s in smp])
    loops = np.array([M.ends_in_loop(s.token_ids) for s in smp], dtype=np.float64)
    counts = np.zeros((len(smp), vocab), dtype=np.int64)
    for i, s in enumerate(smp):
        np.add.at(counts[i], np.asarray(s.token_ids, dtype=np.int64), 1)
    bleu = np.array(M.self_bleu_scores([s.token_ids for s in smp]))
    reps = {
        n: np.array([_nan(M.rep_n(s.token_ids, n)) for s in smp], dtype=np.float64)
        for n in NGRAM_ORDERS
    }

    def ratio(num, den):
        return lambda sel: _safe_div(num[sel].sum(), den[sel].sum())

    chosen_p = np.array([float(np.exp(-s.nll).sum()) for s in smp])
    stats: dict[str, Any] = {
        "perplexity": lambda sel: _exp(ratio(nll, ntok)(sel)),
        "chosen_prob": ratio(chosen_p, ntok),  # the model's mean probability of its tokens
        "self_bleu4": lambda sel: float(bleu[sel].mean()),
        "repetition_pct": lambda sel: 100.0 * float(loops[sel].mean()),
        "entropy": ratio(ent, ntok),
        "mean_length": lambda sel: float(ntok[sel].mean()),
    }
    for n in NGRAM_ORDERS:
        stats[f"rep_{n}"] = lambda sel, v=reps[n]: _nanmean(v[sel])
    if row.kind == "strategy":
        proc = np.array([-sum(s.processed_logprobs or []) for s in smp])
        stats["perplexity_chosen_from"] = lambda sel: _exp(ratio(proc, ntok)(sel))
        if all(s.chosen_entropy is not None for s in smp):
            drawn = np.array([sum(s.chosen_entropy) for s in smp])
            stats["chosen_entropy"] = ratio(drawn, ntok)
    # The same resampled prompt sets for every metric of the row.
    rng = np.random.default_rng([seed, zlib.crc32(row.name.encode("utf-8"))])
    draws = [pick(d) for d in M.bootstrap_draws(n_passages, resamples, rng)]
    every = pick(np.arange(n_passages))
    values: dict[str, Any] = {}
    for name, fn in stats.items():
        ci = M.percentile_interval([fn(sel) for sel in draws]) if draws else None
        values[name] = {"value": fn(every), "ci": ci}
    if row.kind == "strategy" and "chosen_entropy" not in stats:
        values["chosen_entropy"] = {
            "value": None,
            "ci": None,
            "note": "not defined for beam search",
        }
    # Type statistics have no bootstrap interval: a resample repeats whole texts, which
    # fakes a heavier head (Zipf) and fewer new n-grams (distinct-n) rather than new data.
    no_ci = "no interval: resampling texts with replacement biases type statistics"
    values["zipf"] = {"value": M.zipf_coefficient(counts.sum(0)), "ci": None, "note": no_ci}
    for n in NGRAM_ORDERS:
        d = M.distinct_n([s.token_ids for s in smp], n)
        values[f"distinct_{n}"] = {"value": d, "ci": None, "note": no_ci}
    if row.kind == "strategy":
        reasons = [s.finish_reason for s in smp]
        values["eos_pct"] = {"value": 100.0 * reasons.count("eos") / len(reasons), "ci": None}
        values["stop_pct"] = {"value": 100.0 * reasons.count("stop") / len(reasons), "ci": None}
        total = float(ntok.sum())
        values["tokens_per_s"] = {"value": total / row.seconds if row.seconds else None, "ci": None}
    row.metrics = values
    row.per_position_prob = _per_position(smp)
    row.entropy_histogram = _histogram(smp, vocab)


def _per_position(samples: list[Sample]) -> list[float]:
    width = max((len(s.token_ids) for s in samples), default=0)
    total = np.zeros(width)
    count = np.zeros(width)
    for s in samples:
        k = len(s.nll)
        total[:k] += np.exp(-s.nll)
        count[:k] += 1
    return [float(v) for v in total / np.maximum(count, 1)]


def _histogram(samples: list[Sample], vocab: int) -> dict[str, list[float]]:
    top = math.ceil(math.log(max(vocab, 2)) * 4) / 4
    edges = np.arange(0.0, top + 0.25, 0.25)
    every = np.concatenate([s.entropy for s in samples]) if samples else np.zeros(0)
    hist, _ = np.histogram(every, bins=edges)
    quant = np.percentile(every, [10, 25, 50, 75, 90]).tolist() if every.size else []
    return {"edges": edges.tolist(), "counts": hist.tolist(), "quantiles_10_25_50_75_90": quant}


def _nan(v):
    return np.nan if v is None else v


def _nanmean(v: np.ndarray) -> float | None:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def _safe_div(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def _exp(v: float | None) -> float | None:
    return None if v is None else float(math.exp(min(v, 50.0)))


# -- MAUVE (optional) ---------------------------------------------------------------------------


def mauve_module():
    try:
        import mauve
    except ImportError:
        raise ConfigError(
            "MAUVE needs the mauve-text package, which is not installed: "
            "pip install 'lmgen[mauve]' (or pip install mauve-text)"
        ) from None
    return mauve


def _mauve(human: np.ndarray, row: Row, seed: int) -> dict[str, Any]:
    feats = [s.feature for s in row.samples if s.feature is not None]
    if len(feats) < 2:
        return {"value": None, "ci": None, "note": "too few texts"}
    out = mauve_module().compute_mauve(
        p_features=human, q_features=np.stack(feats), device_id=-1, verbose=False, seed=seed
    )
    return {
        "value": float(out.mauve),
        "ci": None,
        "note": "features: this model's final hidden state at the last token, not GPT-2 Large",
    }
