"""The measures of `lmgen compare` on hand-made inputs whose answers are known."""

from __future__ import annotations

import math
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from lmgen import ConfigError
from lmgen.compare import metrics as M

# -- the paper's loop test ----------------------------------------------------------------------


def test_a_phrase_repeated_to_the_end_is_a_loop():
    text = [5, 9, 2, 7, 1] + [10, 11, 12] * 6
    assert M.repeated_suffix(text) == (3, 6)
    assert M.ends_in_loop(text)


def test_a_text_without_a_repeat_at_its_end_is_not_a_loop():
    assert not M.ends_in_loop(list(range(100)))
    # a loop that the text leaves is not a loop at the end
    assert not M.ends_in_loop([10, 11, 12] * 6 + [1, 2, 3, 4])
    assert not M.ends_in_loop([])


def test_a_long_phrase_seen_twice_at_the_end_is_a_loop():
    line = list(range(20, 40))
    assert M.repeated_suffix([1, 2] + line + line) == (20, 2)
    assert M.ends_in_loop([1, 2] + line + line)


def test_short_phrases_count_only_past_fifty_repeats():
    """The paper's rule: a phrase of 1 or 2 tokens is a loop only if repeated > 50 times."""
    assert not M.ends_in_loop([1, 2] * 10)
    assert M.ends_in_loop([1, 2] * 51)
    assert not M.ends_in_loop([3] + [7] * 50)
    assert M.ends_in_loop([3] + [7] * 51)


def test_the_most_repeated_length_wins_the_shortest_on_ties():
    # "4 4" repeats twice as n=1 and "5 4 4" twice as n=3: the tie goes to n=1, not a loop
    text = [9, 5, 4, 4, 5, 4, 4]
    assert M.repeated_suffix(text) == (1, 2)
    assert not M.ends_in_loop(text)


# -- Self-BLEU (nltk) -------------------------------------------------------------------------


def test_self_bleu_of_identical_texts_is_one():
    text = list(range(30))
    assert M.self_bleu([text] * 4) == pytest.approx(1.0)


def test_self_bleu_of_disjoint_texts_is_about_zero():
    texts = [list(range(100 * i, 100 * i + 30)) for i in range(4)]
    assert 0.0 <= M.self_bleu(texts) < 0.01


def test_self_bleu_scores_each_text_against_the_others():
    a, b = list(range(20)), list(range(50, 70))
    scores = M.self_bleu_scores([a, a, b])
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(1.0)
    assert scores[2] < 0.01
    with pytest.raises(ConfigError, match="at least 2"):
        M.self_bleu([a])


def test_self_bleu_without_nltk_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk.translate.bleu_score", None)
    with pytest.raises(ConfigError, match=r"pip install 'lmgen\[compare\]'"):
        M.self_bleu([[1, 2, 3], [1, 2, 3]])


# -- Zipf ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.8, 1.0, 1.3])
def test_zipf_fit_of_an_exact_power_law_returns_its_exponent(s):
    ranks = np.arange(1, 2001)
    counts = 1e6 * ranks**-s
    assert M.zipf_coefficient(np.random.default_rng(0).permutation(counts)) == pytest.approx(s)
    # whole counts of a large corpus: close
    assert M.zipf_coefficient(np.round(counts * 100)) == pytest.approx(s, abs=2e-3)


def test_zipf_fits_only_the_most_frequent_types():
    ranks = np.arange(1, 301)
    head = 1e6 * ranks[:100] ** -1.0
    tail = head[-1] * (ranks[100:] / 100.0) ** -3.0  # a steeper tail
    counts = Counter({i: c for i, c in enumerate(np.concatenate([head, tail]))})
    assert M.zipf_coefficient(counts, top=100) == pytest.approx(1.0)
    assert M.zipf_coefficient(counts) > 1.2
    assert M.zipf_coefficient([5]) is None


def test_type_counts_pool_the_texts():
    assert M.type_counts([[1, 2, 2], [2, 3]]) == Counter({1: 1, 2: 3, 3: 1})


# -- rep-n, distinct-n, entropy, intervals ------------------------------------------------------


def test_rep_n_and_distinct_n_by_hand():
    assert M.rep_n([1, 2, 1, 2], 2) == pytest.approx(1 / 3)  # (1,2) (2,1) (1,2)
    assert M.rep_n([1, 2, 3], 1) == 0.0
    assert M.rep_n([1], 2) is None
    assert M.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)
    assert M.distinct_n([[1]], 2) is None


def test_entropy_in_nats():
    assert float(M.entropy(torch.zeros(4))) == pytest.approx(math.log(4))
    masked = torch.tensor([0.0, 0.0, float("-inf"), float("-inf")])
    assert float(M.entropy(masked)) == pytest.approx(math.log(2))
    assert float(M.entropy(torch.tensor([0.0, float("-inf")]))) == 0.0


def test_percentile_interval_and_draws():
    assert M.percentile_interval([1.0, 2.0, 3.0, None, float("nan")], level=1.0) == [1.0, 3.0]
    assert M.percentile_interval([None]) is None
    draws = M.bootstrap_draws(5, 3, np.random.default_rng(1))
    again = M.bootstrap_draws(5, 3, np.random.default_rng(1))
    assert len(draws) == 3 and all((a == b).all() for a, b in zip(draws, again, strict=True))
    assert all(d.min() >= 0 and d.max() < 5 for d in draws)
    assert M.bootstrap_draws(1, 3, np.random.default_rng(1)) == []
