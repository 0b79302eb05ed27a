"""The one strategy rule (`infer_strategy`): what the keywords given ask for when no strategy is
named, shared by `GenerationConfig.from_kwargs` (so lm.generate and lmgen.generate) and the
command line."""

from __future__ import annotations

import pytest

from lmgen.generation_config import GenerationConfig, infer_strategy


@pytest.mark.parametrize(
    "given, strategy",
    [
        ({}, "greedy"),
        ({"max_new_tokens": 5, "repetition_penalty": 1.2}, "greedy"),
        ({"temperature": 0.8}, "sample"),
        ({"temperature": 1.0}, "sample"),  # given, even at its default value
        ({"temperature": 0}, "greedy"),  # 0 means greedy
        ({"temperature": 0, "top_k": 5}, "sample"),  # sampling at T=0 runs greedy in the end
        ({"top_k": 5}, "sample"),
        ({"top_p": 0.9}, "sample"),
        ({"min_p": 0.1}, "sample"),
        ({"typical_p": 0.5}, "sample"),
        ({"seed": 0}, "sample"),
        ({"seed": None, "top_k": None}, "greedy"),  # None is not given
        ({"num_beams": 3}, "beam"),
        ({"num_beams": 3, "temperature": 0.7}, "beam"),
        ({"num_beams": 1, "temperature": 0.7}, "sample"),
        ({"num_beams": 1}, "greedy"),
        ({"penalty_alpha": 0.6, "top_k": 4}, "contrastive"),  # transformers' rule
        ({"penalty_alpha": 0, "top_k": 4}, "sample"),
        ({"num_beams": 3, "penalty_alpha": 0.6}, "beam"),
        ({"strategy": "greedy", "temperature": 0.7}, "greedy"),  # a named strategy wins
    ],
)
def test_the_rule(given, strategy):
    assert infer_strategy(given) == strategy
    if "strategy" not in given and None not in given.values():
        assert GenerationConfig.from_kwargs(**given).strategy == strategy


def test_a_config_built_directly_keeps_its_default():
    """The dataclass itself is plain data: its strategy default stays greedy."""
    assert GenerationConfig().strategy == "greedy"
    assert GenerationConfig.from_kwargs().strategy == "greedy"
    base = GenerationConfig.from_kwargs(max_new_tokens=4)
    assert base.replace(temperature=0.5).strategy == "greedy"  # replace() keeps it


def test_the_caller_keywords_are_not_mutated():
    kw = {"top_k": 3}
    GenerationConfig.from_kwargs(**kw)
    assert kw == {"top_k": 3}
