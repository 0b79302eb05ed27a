"""GenerationConfig: bad values name their parameter, useless knobs warn, typos get a hint."""

from __future__ import annotations

import math

import pytest

from lmgen.errors import ConfigError
from lmgen.generation_config import MAX_LOGPROBS, GenerationConfig

NAN, INF = math.nan, math.inf

BAD = [
    # (field, value, other fields)
    ("strategy", "beams", {}),
    ("strategy", None, {}),
    ("max_new_tokens", 0, {}),
    ("max_new_tokens", 2.5, {}),
    ("min_new_tokens", -1, {}),
    ("min_new_tokens", 10, {"max_new_tokens": 5}),
    ("temperature", -0.1, {}),
    ("temperature", INF, {}),
    ("temperature", NAN, {}),
    ("temperature", "hot", {}),
    ("top_k", -1, {}),
    ("top_k", 2.5, {}),
    ("top_k", True, {}),
    ("top_p", 0.0, {}),
    ("top_p", 1.5, {}),
    ("top_p", NAN, {}),
    ("min_p", -0.1, {}),
    ("min_p", 1.1, {}),
    ("typical_p", 0.0, {}),
    ("typical_p", 1.01, {}),
    ("repetition_penalty", 0.0, {}),
    ("repetition_penalty", -1.0, {}),
    ("repetition_penalty", INF, {}),
    ("presence_penalty", 2.5, {}),
    ("presence_penalty", NAN, {}),
    ("frequency_penalty", -2.01, {}),
    ("frequency_penalty", INF, {}),
    ("no_repeat_ngram_size", -1, {}),
    ("logit_bias", {-1: 1.0}, {}),
    ("logit_bias", {"5": 1.0}, {}),
    ("logit_bias", {5: 101.0}, {}),
    ("logit_bias", {5: NAN}, {}),
    ("logit_bias", [1, 2], {}),
    ("bad_words_ids", [[]], {}),
    ("bad_words_ids", [1, 2], {}),
    ("bad_words_ids", [[1, -2]], {}),
    ("num_beams", 0, {}),
    ("length_penalty", NAN, {"strategy": "beam", "num_beams": 2}),
    ("length_penalty", INF, {}),
    ("early_stopping", "always", {}),
    ("early_stopping", 1, {}),
    ("num_return_sequences", 0, {}),
    ("num_return_sequences", 3, {"strategy": "beam", "num_beams": 2}),
    ("num_return_sequences", 2, {"strategy": "greedy"}),
    ("stop", "\n", {}),
    ("stop", [""], {}),
    ("stop", ["ok", 3], {}),
    ("ignore_eos", "yes", {}),
    ("seed", -1, {}),
    ("seed", 2**64, {}),
    ("seed", 1.5, {}),
    ("min_tokens_to_keep", 0, {}),
    ("temperature_last", 1, {}),
    ("logprobs", -1, {}),
    ("logprobs", MAX_LOGPROBS + 1, {}),
]


@pytest.mark.parametrize("field, value, other", BAD)
def test_bad_value_names_param(field, value, other):
    config = GenerationConfig(**{field: value, **other})
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert err.value.param == field
    assert str(err.value).startswith(field)
    with pytest.raises(ConfigError):
        GenerationConfig.from_kwargs(**{field: value, **other})


def test_message_gives_value_and_range():
    with pytest.raises(ConfigError, match=r"^top_p must be in \(0, 1\], got 1\.5$"):
        GenerationConfig(top_p=1.5).validate()
    with pytest.raises(ConfigError, match=r"presence_penalty must be in \[-2, 2\], got 3"):
        GenerationConfig(presence_penalty=3).validate()
    with pytest.raises(ConfigError, match="greedy search always returns the same sequence"):
        GenerationConfig(num_return_sequences=2).validate()
    with pytest.raises(ConfigError, match="did you mean 'beam'"):
        GenerationConfig(strategy="bean").validate()


GOOD = [
    {},
    {
        "strategy": "sample",
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "typical_p": 0.95,
        "seed": 0,
        "num_return_sequences": 4,
        "min_tokens_to_keep": 2,
        "temperature_last": True,
    },
    {"strategy": "sample", "temperature": 0},
    {
        "strategy": "beam",
        "num_beams": 4,
        "num_return_sequences": 4,
        "length_penalty": -0.5,
        "early_stopping": "never",
    },
    {"strategy": "beam", "num_beams": 2, "early_stopping": True},
    {
        "repetition_penalty": 1.3,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "no_repeat_ngram_size": 3,
        "logit_bias": {50256: -100, 3: 2.5},
        "bad_words_ids": [[1], [2, 3]],
        "stop": ["\n\n", "END"],
        "ignore_eos": True,
        "logprobs": MAX_LOGPROBS,
        "min_new_tokens": 64,
        "max_new_tokens": 64,
    },
    {"max_new_tokens": 1, "top_p": 1.0, "min_p": 1.0, "typical_p": 1.0, "temperature": 3},
]


@pytest.mark.parametrize("kwargs", GOOD)
def test_good_values_validate(kwargs):
    config = GenerationConfig.from_kwargs(**kwargs)
    assert isinstance(config.validate(), list)


def test_defaults_are_valid_and_quiet():
    config = GenerationConfig()
    assert config.strategy == "greedy"
    assert config.validate() == []
    assert GenerationConfig(strategy="sample").validate() == []


def test_effective_strategy():
    assert GenerationConfig(strategy="sample", temperature=0).effective_strategy() == "greedy"
    assert GenerationConfig(strategy="sample", temperature=0.5).effective_strategy() == "sample"
    assert GenerationConfig(strategy="greedy").effective_strategy() == "greedy"
    assert GenerationConfig(strategy="beam", num_beams=3).effective_strategy() == "beam"


def _warned(config: GenerationConfig, *names: str) -> None:
    warnings = config.validate()
    for name in names:
        assert any(w.startswith(f"{name}=") for w in warnings), (name, warnings)


def test_warnings_for_ineffective_flags():
    _warned(
        GenerationConfig(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, typical_p=0.5, seed=1),
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "seed",
    )
    _warned(GenerationConfig(strategy="beam", num_beams=3, top_k=5), "top_k")
    _warned(GenerationConfig(strategy="sample", temperature=0, top_p=0.5), "top_p")
    _warned(
        GenerationConfig(strategy="sample", num_beams=4, length_penalty=2.0, early_stopping=True),
        "num_beams",
        "length_penalty",
        "early_stopping",
    )
    _warned(GenerationConfig(num_beams=2), "num_beams")
    assert any("same as greedy" in w for w in GenerationConfig(strategy="beam").validate())
    assert any(
        "identical" in w
        for w in GenerationConfig(
            strategy="sample", temperature=0, num_return_sequences=2
        ).validate()
    )
    # temperature 0 is the switch to greedy, not an ignored flag
    assert GenerationConfig(strategy="sample", temperature=0).validate() == []
    # everything a strategy uses is quiet
    assert GenerationConfig(strategy="sample", temperature=0.5, top_k=3, seed=2).validate() == []
    assert (
        GenerationConfig(
            strategy="beam", num_beams=3, length_penalty=0.8, early_stopping="never"
        ).validate()
        == []
    )


def test_unknown_kwarg_suggests_name():
    with pytest.raises(ConfigError, match="did you mean 'temperature'") as err:
        GenerationConfig.from_kwargs(temprature=0.5)
    assert err.value.param == "temprature"
    with pytest.raises(ConfigError, match="did you mean 'max_new_tokens'"):
        GenerationConfig().replace(max_tokens=5)
    with pytest.raises(ConfigError, match="unknown generation parameter 'zzz'$"):
        GenerationConfig.from_kwargs(zzz=1)


def test_replace_returns_validated_copy():
    base = GenerationConfig(strategy="sample", top_k=10)
    changed = base.replace(top_k=20, seed=3)
    assert (changed.top_k, changed.seed, changed.strategy) == (20, 3, "sample")
    assert (base.top_k, base.seed) == (10, None)
    with pytest.raises(ConfigError) as err:
        base.replace(top_p=0)
    assert err.value.param == "top_p"


def test_to_dict_round_trips():
    config = GenerationConfig(strategy="sample", stop=["x"], logit_bias={1: 2.0})
    assert GenerationConfig.from_kwargs(**config.to_dict()) == config
