"""The measures of a set of texts, as Holtzman et al. (2020) define them, on token ids.

Each function takes token-id lists (the model's own tokens, as the paper used GPT-2's) and
knows nothing of models or decoding:

- `ends_in_loop`: the paper's repetition test — does the text end in a repeating phrase?
- `self_bleu`: BLEU-4 of each text against all the others (nltk's `sentence_bleu`, the
  implementation the paper's own script called), so 1 = every text the same.
- `zipf_coefficient`: the exponent s of a least-squares fit log f = c - s log rank over the
  most frequent types (the paper fits the top 5,000).
- `rep_n` (within one text: Welleck et al.'s seq-rep-n) and `distinct_n` (across texts:
  Li et al.'s distinct-n), for the finer detail the paper's single loop rate hides.
- `entropy`: of softmax(logits), in nats.
- `bootstrap_draws`, `percentile_interval`: confidence intervals from resampling prompts.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from lmgen.errors import ConfigError

# The paper's repetition rule (its released metrics/repetition.py): look at phrase lengths
# 1..90 at the end of the text; take the length repeated the most times in a row (the
# shortest on ties); a loop is a phrase of >= 3 tokens seen at least twice in a row, or any
# phrase repeated more than 50 times.
LOOP_MAX_PHRASE = 90
LOOP_MIN_PHRASE = 3
LOOP_MANY_REPEATS = 50
ZIPF_TOP_TYPES = 5000
BLEU_WEIGHTS = (0.25, 0.25, 0.25, 0.25)  # BLEU-4


def repeated_suffix(tokens: Sequence[int], max_phrase: int = LOOP_MAX_PHRASE) -> tuple[int, int]:
    """(phrase length, times) for the phrase at the end of `tokens` that is repeated the most
    times in a row (the shortest such phrase on ties); (0, 0) for an empty text."""
    seq = list(tokens)
    end = len(seq)
    best_n, best_times = 0, 0
    for n in range(1, min(max_phrase, end) + 1):
        tail = seq[end - n :]
        times = 1  # copies of `tail` ending the text, counted backwards
        while (times + 1) * n <= end and seq[end - (times + 1) * n : end - times * n] == tail:
            times += 1
        if times > best_times:
            best_n, best_times = n, times
    return best_n, best_times


def ends_in_loop(
    tokens: Sequence[int],
    min_phrase: int = LOOP_MIN_PHRASE,
    many: int = LOOP_MANY_REPEATS,
    max_phrase: int = LOOP_MAX_PHRASE,
) -> bool:
    """Whether the text ends in a repeating loop, by the paper's rule (see LOOP_*)."""
    n, times = repeated_suffix(tokens, max_phrase)
    return times > 1 and (n >= min_phrase or times > many)


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def rep_n(tokens: Sequence[int], n: int) -> float | None:
    """The share of a text's n-grams that repeat an earlier one of the same text:
    1 - unique / total. None when the text has no n-gram."""
    grams = ngrams(tokens, n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(texts: Sequence[Sequence[int]], n: int) -> float | None:
    """Unique n-grams over all n-grams, pooled across the texts. None when there are none."""
    grams: list[tuple[int, ...]] = []
    for t in texts:
        grams += ngrams(t, n)
    if not grams:
        return None
    return len(set(grams)) / len(grams)


def self_bleu_scores(texts: Sequence[Sequence[int]]) -> list[float]:
    """BLEU-4 of each text with all the other texts as its references (nltk's sentence_bleu,
    smoothing method 1, as in the paper's script)."""
    sentence_bleu, smoothing = bleu_functions()
    docs = [list(map(int, t)) for t in texts]
    if len(docs) < 2:
        raise ConfigError(f"Self-BLEU needs at least 2 texts, got {len(docs)}")
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about every zero n-gram overlap
        for i, hyp in enumerate(docs):
            refs = docs[:i] + docs[i + 1 :]
            scores.append(float(sentence_bleu(refs, hyp, BLEU_WEIGHTS, smoothing)))
    return scores


def self_bleu(texts: Sequence[Sequence[int]]) -> float:
    return float(np.mean(self_bleu_scores(texts)))


def bleu_functions():
    """(nltk's sentence_bleu, SmoothingFunction().method1); ConfigError when nltk is absent."""
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError:
        raise ConfigError(
            "Self-BLEU needs nltk, which is not installed: pip install 'lmgen[compare]' "
            "(or pip install nltk)"
        ) from None
    return sentence_bleu, SmoothingFunction().method1


def type_counts(texts: Sequence[Sequence[int]]) -> Counter:
    c: Counter = Counter()
    for t in texts:
        c.update(int(x) for x in t)
    return c


def zipf_coefficient(counts, top: int = ZIPF_TOP_TYPES) -> float | None:
    """s of the least-squares line log(frequency) = c - s * log(rank) over the `top` most
    frequent types. `counts`: a Counter, a mapping, or an array of per-type counts (zeros are
    ignored). None with fewer than two types."""
    if isinstance(counts, dict):
        counts = list(counts.values())
    freq = np.asarray(counts, dtype=np.float64)
    freq = np.sort(freq[freq > 0])[::-1][:top]
    if len(freq) < 2:
        return None
    ranks = np.arange(1, len(freq) + 1, dtype=np.float64)
    slope, _ = np.polyfit(np.log(ranks), np.log(freq), 1)
    return float(-slope)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last axis; -inf logits add nothing."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).nan_to_num(0.0).sum(-1)


def bootstrap_draws(n_items: int, resamples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`resamples` draws of `n_items` indices with replacement (none for fewer than 2 items)."""
    if n_items < 2:
        return []
    return [rng.integers(0, n_items, size=n_items) for _ in range(resamples)]


def percentile_interval(values: Sequence[float | None], level: float = 0.95) -> list[float] | None:
    """The central `level` percentile interval of the finite values; None when there are none."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]
