"""GenerationConfig: every knob of decoding in one validated dataclass.

`validate()` raises ConfigError for values out of range and returns warnings for knobs that
have no effect with the chosen strategy (the CLI prints them; the API logs them).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from lmgen.errors import ConfigError

STRATEGIES = ("greedy", "sample", "beam", "contrastive")
EARLY_STOPPING_VALUES = (True, False, "never")
MAX_LOGPROBS = 20  # OpenAI's cap on top_logprobs; reporting more is rarely useful and costs a topk
MIN_TEMPERATURE = 1e-4  # below this, logits / T overflows float32; use 0 for greedy
MAX_PENALTY = 2.0  # OpenAI's range for presence/frequency penalty is [-2, 2]
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values is [-100, 100]
MAX_LENGTH_PENALTY = 10.0  # length ** penalty overflows a float beyond this; no use for more

# Knobs that only shape the sampling distribution; greedy and beam search ignore them.
_SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "min_tokens_to_keep": 1,
    "temperature_last": False,
    "seed": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_n_sigma": 0.0,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.1,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
}
MIROSTAT_VERSIONS = (0, 2)  # off, Mirostat v2 (llama.cpp's numbering; v1 is not implemented)


@dataclass
class GenerationConfig:
    strategy: str = "greedy"
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    # transformers' epsilon and eta sampling (0 = off)
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    # llama.cpp's samplers: top-nσ (0 = off), XTC, DRY, dynamic temperature, Mirostat v2
    top_n_sigma: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: list[str] | None = None  # None: llama.cpp's "\n", ":", '"', "*"
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    # structured output: at most one constraint
    regex: str | None = None
    json_schema: dict | str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] | None = None
    bad_words_ids: list[list[int]] | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    stop: list[str] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    min_tokens_to_keep: int = 1
    temperature_last: bool = False
    logprobs: int = 0
    context_overflow: str = "error"  # or "slide": keep the last n_positions tokens
    penalty_alpha: float = 0.6  # contrastive search: weight of the degeneration penalty
    num_beam_groups: int = 1  # diverse beam search: groups of num_beams / num_beam_groups
    diversity_penalty: float = 0.0  # subtracted per earlier group's use of a token this step

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> GenerationConfig:
        """Build and validate a config; an unknown name raises ConfigError with a suggestion.

        Without `strategy`, it is inferred from the keywords given (`infer_strategy`): the
        rule `lm.generate(...)`, `lmgen.generate(...)` and the command line share."""
        _check_names(kwargs)
        if "strategy" not in kwargs:
            kwargs["strategy"] = infer_strategy(kwargs)
        config = cls(**kwargs)
        config.validate()
        return config

    def replace(self, **kwargs: Any) -> GenerationConfig:
        """A validated copy with some fields changed."""
        _check_names(kwargs)
        config = dataclasses.replace(self, **kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- semantics ----------------------------------------------------------------------------

    def effective_strategy(self) -> str:
        """The strategy actually run: sampling at temperature 0 is greedy (OpenAI's convention)."""
        if self.strategy == "sample" and self.temperature == 0:
            return "greedy"
        return self.strategy

    def validate(self) -> list[str]:
        """Raise ConfigError on the first bad value; return warnings for knobs that do nothing."""
        self._check_values()
        return self._warnings()

    def _check_values(self) -> None:
        if self.strategy not in STRATEGIES:
            hint = _suggest(str(self.strategy), STRATEGIES)
            raise ConfigError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}{hint}",
                param="strategy",
            )
        _int_at_least("max_new_tokens", self.max_new_tokens, 1)
        _int_at_least("min_new_tokens", self.min_new_tokens, 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens must be <= max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}",
                param="min_new_tokens",
            )
        _number(
            "temperature",
            self.temperature,
            f"0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}",
            lambda v: v == 0 or v >= MIN_TEMPERATURE,
        )
        _int_at_least("top_k", self.top_k, 0, note=" (0 = off)")
        _number("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        _number("min_p", self.min_p, "in [0, 1]", lambda v: 0 <= v <= 1)
        _number("typical_p", self.typical_p, "in (0, 1]", lambda v: 0 < v <= 1)
        self._check_samplers()
        self._check_constraint()
        _number("repetition_penalty", self.repetition_penalty, "finite and > 0", lambda v: v > 0)
        penalty_range = f"in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}]"
        for name in ("presence_penalty", "frequency_penalty"):
            _number(name, getattr(self, name), penalty_range, lambda v: abs(v) <= MAX_PENALTY)
        _int_at_least("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, note=" (0 = off)")
        self._check_logit_bias()
        self._check_bad_words()
        _int_at_least("num_beams", self.num_beams, 1)
        _number(
            "length_penalty",
            self.length_penalty,
            f"in [-{MAX_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}]",
            lambda v: abs(v) <= MAX_LENGTH_PENALTY,
        )
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ConfigError(
                f"early_stopping must be True, False or 'never', got {self.early_stopping!r}",
                param="early_stopping",
            )
        self._check_num_return_sequences()
        self._check_stop()
        _bool("ignore_eos", self.ignore_eos)
        _bool("temperature_last", self.temperature_last)
        if self.seed is not None:
            _int_at_least("seed", self.seed, 0, note=" or None")
            if self.seed >= 2**64:
                raise ConfigError(f"seed must be < 2**64, got {self.seed}", param="seed")
        _int_at_least("min_tokens_to_keep", self.min_tokens_to_keep, 1)
        _int_at_least("logprobs", self.logprobs, 0)
        if self.context_overflow not in ("error", "slide"):
            raise ConfigError(
                f"context_overflow must be 'error' or 'slide', got {self.context_overflow!r}",
                param="context_overflow",
            )
        if self.logprobs > MAX_LOGPROBS:
            raise ConfigError(
                f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}", param="logprobs"
            )
        self._check_contrastive()
        self._check_beam_groups()

    def _check_contrastive(self) -> None:
        _number("penalty_alpha", self.penalty_alpha, "in [0, 1]", lambda v: 0 <= v <= 1)
        if self.strategy != "contrastive":
            return
        if self.top_k < 1:
            raise ConfigError(
                "strategy 'contrastive' compares top_k candidates each step: top_k must be an "
                f"int >= 1 (transformers uses 4 to 10), got {self.top_k}",
                param="top_k",
            )
        if self.context_overflow != "error":
            raise ConfigError(
                "strategy 'contrastive' compares each candidate with every earlier position; "
                "it cannot slide past the context: context_overflow must be 'error'",
                param="context_overflow",
            )

    def _check_beam_groups(self) -> None:
        _int_at_least("num_beam_groups", self.num_beam_groups, 1)
        _number("diversity_penalty", self.diversity_penalty, "finite and >= 0", lambda v: v >= 0)
        if self.num_beam_groups == 1:
            return
        if self.strategy != "beam":
            raise ConfigError(
                f"num_beam_groups={self.num_beam_groups} is diverse beam search: it needs "
                f"strategy 'beam', got {self.strategy!r}",
                param="num_beam_groups",
            )
        if self.num_beams % self.num_beam_groups:
            raise ConfigError(
                f"num_beams ({self.num_beams}) must be divisible by num_beam_groups "
                f"({self.num_beam_groups})",
                param="num_beam_groups",
            )

    def _check_num_return_sequences(self) -> None:
        n = self.num_return_sequences
        _int_at_least("num_return_sequences", n, 1)
        if self.strategy == "beam" and n > self.num_beams:
            raise ConfigError(
                f"num_return_sequences must be <= num_beams ({self.num_beams}) for beam search, "
                f"got {n}",
                param="num_return_sequences",
            )
        if self.strategy in ("greedy", "contrastive") and n != 1:
            raise ConfigError(
                f"num_return_sequences must be 1 for greedy decoding, got {n}: greedy search "
                "always returns the same sequence; use strategy 'sample' or 'beam' for several",
                param="num_return_sequences",
            )

    def _check_logit_bias(self) -> None:
        if self.logit_bias is None:
            return
        if not isinstance(self.logit_bias, dict):
            raise ConfigError(
                f"logit_bias must be a dict {{token_id: bias}}, got {self.logit_bias!r}",
                param="logit_bias",
            )
        for token, bias in self.logit_bias.items():
            if not _is_int(token) or token < 0:
                raise ConfigError(
                    f"logit_bias keys must be token ids (ints >= 0), got {token!r}",
                    param="logit_bias",
                )
            if not _is_number(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ConfigError(
                    f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                    f"got {bias!r} for token {token}",
                    param="logit_bias",
                )

    def _check_bad_words(self) -> None:
        if self.bad_words_ids is None:
            return
        ok = isinstance(self.bad_words_ids, list | tuple) and all(
            isinstance(seq, list | tuple) and seq and all(_is_int(t) and t >= 0 for t in seq)
            for seq in self.bad_words_ids
        )
        if not ok:
            raise ConfigError(
                "bad_words_ids must be a list of non-empty lists of token ids (ints >= 0), "
                f"got {self.bad_words_ids!r}",
                param="bad_words_ids",
            )

    def _check_stop(self) -> None:
        if self.stop is None:
            return
        if isinstance(self.stop, str) or not isinstance(self.stop, list | tuple):
            raise ConfigError(
                f"stop must be a list of strings, got {self.stop!r} (wrap one string in a list)",
                param="stop",
            )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(
                    f"stop strings must be non-empty strings, got {s!r}", param="stop"
                )

    def _check_samplers(self) -> None:
        for name in ("epsilon_cutoff", "eta_cutoff"):
            _number(name, getattr(self, name), "in [0, 1) (0 = off)", lambda v: 0 <= v < 1)
        _number("top_n_sigma", self.top_n_sigma, "finite and >= 0 (0 = off)", lambda v: v >= 0)
        _number("xtc_probability", self.xtc_probability, "in [0, 1]", lambda v: 0 <= v <= 1)
        _number("xtc_threshold", self.xtc_threshold, "in (0, 0.5]", lambda v: 0 < v <= 0.5)
        _number(
            "dry_multiplier", self.dry_multiplier, "finite and >= 0 (0 = off)", lambda v: v >= 0
        )
        _number("dry_base", self.dry_base, "finite and >= 1", lambda v: v >= 1)
        _int_at_least("dry_allowed_length", self.dry_allowed_length, 1)
        _int_at_least(
            "dry_penalty_last_n", self.dry_penalty_last_n, -1, note=" (-1 = all, 0 = off)"
        )
        breakers = self.dry_sequence_breakers
        if breakers is not None and (
            isinstance(breakers, str)
            or not isinstance(breakers, list | tuple)
            or not all(isinstance(b, str) and b for b in breakers)
        ):
            raise ConfigError(
                f"dry_sequence_breakers must be a list of non-empty strings, got {breakers!r}",
                param="dry_sequence_breakers",
            )
        _number(
            "dynatemp_range", self.dynatemp_range, "finite and >= 0 (0 = off)", lambda v: v >= 0
        )
        _number("dynatemp_exponent", self.dynatemp_exponent, "finite and > 0", lambda v: v > 0)
        if not _is_int(self.mirostat) or self.mirostat not in MIROSTAT_VERSIONS:
            raise ConfigError(
                "mirostat must be 0 (off) or 2 (Mirostat v2; v1 is not implemented), "
                f"got {self.mirostat!r}",
                param="mirostat",
            )
        _number("mirostat_tau", self.mirostat_tau, "finite and > 0", lambda v: v > 0)
        _number("mirostat_eta", self.mirostat_eta, "finite and > 0", lambda v: v > 0)

    def _check_constraint(self) -> None:
        from lmgen.decoding.grammar import CONSTRAINTS, check_constraint

        given = [name for name in CONSTRAINTS if getattr(self, name) is not None]
        if not given:
            return
        if len(given) > 1:
            raise ConfigError(
                f"give at most one of {', '.join(CONSTRAINTS)}; got {' and '.join(given)}",
                param=given[1],
            )
        kind = given[0]
        check_constraint(kind, getattr(self, kind))
        if self.ignore_eos:
            raise ConfigError(
                f"ignore_eos cannot be combined with {kind}: the constrained text ends with "
                "end-of-sequence once it is complete",
                param="ignore_eos",
            )
        if self.min_new_tokens:
            raise ConfigError(
                f"min_new_tokens cannot be combined with {kind}: the constraint decides where "
                "the text may end",
                param="min_new_tokens",
            )

    def _warnings(self) -> list[str]:
        warnings: list[str] = []
        strategy = self.effective_strategy()
        if strategy != "sample":
            why = (
                "temperature=0 means greedy decoding"
                if self.strategy == "sample"
                else f"strategy {strategy!r} does not sample"
            )
            for name, default in _SAMPLING_DEFAULTS.items():
                value = getattr(self, name)
                if name == "top_k" and strategy == "contrastive":
                    continue  # its candidate count
                if value != default and not (name == "temperature" and value == 0):
                    warnings.append(f"{name}={value!r} has no effect: {why}")
        if strategy == "greedy" and self.strategy == "sample" and self.num_return_sequences > 1:
            warnings.append(
                f"num_return_sequences={self.num_return_sequences} with temperature=0 returns "
                "identical sequences"
            )
        if self.strategy != "beam":
            if self.num_beams != 1:
                warnings.append(
                    f"num_beams={self.num_beams} has no effect: only strategy 'beam' uses beams"
                )
            if self.length_penalty != 1.0:
                warnings.append(
                    f"length_penalty={self.length_penalty!r} has no effect: only strategy "
                    "'beam' uses it"
                )
            if self.early_stopping is not False:
                warnings.append(
                    f"early_stopping={self.early_stopping!r} has no effect: only strategy "
                    "'beam' uses it"
                )
        elif self.num_beams == 1:
            warnings.append("num_beams=1 makes beam search the same as greedy search")
        if self.strategy != "contrastive" and self.penalty_alpha != 0.6:
            warnings.append(
                f"penalty_alpha={self.penalty_alpha!r} has no effect: only strategy "
                "'contrastive' uses it"
            )
        if self.num_beam_groups == 1 and self.diversity_penalty != 0.0:
            warnings.append(
                f"diversity_penalty={self.diversity_penalty!r} has no effect without "
                "num_beam_groups > 1"
            )
        if self.ignore_eos and self.min_new_tokens > 0:
            warnings.append(
                "min_new_tokens has no effect with ignore_eos=True: end-of-sequence is "
                "ignored anyway"
            )
        return warnings


# -- the strategy rule ------------------------------------------------------------------------

# Giving any of these (temperature other than 0) asks for sampling when no strategy is named.
SAMPLING_SIGNALS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "seed")


def infer_strategy(given: dict[str, Any]) -> str:
    """The strategy of keyword arguments that name none: `num_beams > 1` gives "beam";
    `penalty_alpha > 0` gives "contrastive"; any of
    temperature (other than 0), top_k, top_p, min_p, typical_p or seed gives "sample"; else
    "greedy". A value of None counts as not given; an explicit `strategy` wins."""
    if given.get("strategy") is not None:
        return given["strategy"]
    beams = given.get("num_beams")
    if _is_int(beams) and beams > 1:
        return "beam"
    alpha = given.get("penalty_alpha")
    if _is_number(alpha) and alpha > 0:  # transformers' rule: penalty_alpha > 0 is contrastive
        return "contrastive"
    for name in SAMPLING_SIGNALS:
        value = given.get(name)
        if value is not None and not (name == "temperature" and value == 0):
            return "sample"
    return "greedy"


# -- helpers ----------------------------------------------------------------------------------


def _check_names(kwargs: dict[str, Any]) -> None:
    valid = GenerationConfig.field_names()
    for name in kwargs:
        if name not in valid:
            raise ConfigError(
                f"unknown generation parameter {name!r}{_suggest(name, valid)}", param=name
            )


def _suggest(name: str, valid: Any) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(name: str, value: Any, low: int, note: str = "") -> None:
    if not _is_int(value) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}{note}, got {value!r}", param=name)


def _number(name: str, value: Any, allowed: str, ok: Any) -> None:
    if not _is_number(value) or not ok(value):
        raise ConfigError(f"{name} must be {allowed}, got {value!r}", param=name)


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}", param=name)
