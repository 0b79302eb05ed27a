"""GenerationConfig: every knob of decoding in one validated dataclass, its fields and ranges
derived from the declarations in lmgen.settings.

`validate()` raises ConfigError for values out of range and returns warnings for knobs that
have no effect with the chosen strategy (the CLI prints them; the API logs them).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from typing import Any

from lmgen.errors import ConfigError
from lmgen.settings import (
    CONSTRAINTS,
    DEFAULTS,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MIN_TEMPERATURE,
    SAMPLING_ONLY,
    SAMPLING_SIGNALS,
    SETTINGS,
    STRATEGIES,
    between,
    check_early_stopping,
)

__all__ = ["MAX_LOGPROBS", "MIN_TEMPERATURE", "GenerationConfig", "infer_strategy"]

EARLY_STOPPING_VALUES = (True, False, "never")
# The strategies prompt lookup speeds up (decoding.session runs the others plainly).
PROMPT_LOOKUP_STRATEGIES = ("greedy", "sample")
# The knobs-without-effect warnings are logged here; the CLI prints them itself and silences it.
log = logging.getLogger(__name__)
_ANNOTATIONS = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "choice": "Any",
    "texts": "list[str] | None",
    "text": "str | None",
    "json": "dict | str | None",
    "token_bias": "dict[int, float] | None",
    "token_lists": "list[list[int]] | None",
    "early_stopping": "bool | str",
    "bias_pairs": "list | dict | None",
    "sampler_order": "list[str] | None",
    "dola": "str | list[int] | None",
}


class _Config:
    """GenerationConfig's methods; its fields are the declarations in lmgen.settings."""

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

    def log_warnings(self) -> list[str]:
        """`validate()`, its warnings logged (by this module's logger) and returned."""
        warnings = self.validate()
        for w in warnings:
            log.warning(w)
        return warnings

    def _check_values(self) -> None:
        if self.strategy not in STRATEGIES:
            hint = _suggest(str(self.strategy), STRATEGIES)
            raise ConfigError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}{hint}",
                param="strategy",
            )
        for s in SETTINGS:  # the one number check: finite, in range, an int where it is one
            value = getattr(self, s.name)
            if s.kind == "bool":
                _bool(s.name, value)
            elif value is not None and s.name != "strategy":
                s.check(value)
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens must be <= max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}",
                param="min_new_tokens",
            )
        self._check_constraint()
        self._check_lists()
        self._check_logit_bias()
        self._check_bad_words()
        self._check_new_samplers()
        self._check_p_less()
        check_early_stopping(self.early_stopping)
        self._check_num_return_sequences()
        self._check_contrastive()
        self._check_beam_groups()

    def _check_new_samplers(self) -> None:
        """The shapes of the bias pairs and of the sampler order (whether the order names
        every active sampler is build_chain's to say: it knows which are)."""
        from lmgen.decoding.processor_base import check_bias_pairs
        from lmgen.decoding.sampler_order import parse_samplers

        for s in SETTINGS:
            value = getattr(self, s.name)
            if value is None:
                continue
            if s.kind == "bias_pairs":  # as logit_bias: +-100 bans or forces, short of inf
                check_bias_pairs(s.name, value, between(-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS))
            elif s.kind == "sampler_order":
                parse_samplers(value)
            elif s.kind == "dola":
                _check_layers(s.name, value, self.strategy)

    def _check_p_less(self) -> None:
        """p-less and p-less-norm are two versions of one truncation: with both, the chain
        would cut by one and then cut again by the other, a sampler neither paper defines."""
        if self.p_less and self.p_less_norm:
            raise ConfigError(
                "give at most one of p_less and p_less_norm; got p_less and p_less_norm",
                param="p_less_norm",
            )

    def _check_contrastive(self) -> None:
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

    def _check_lists(self) -> None:
        """The settings that are lists of non-empty strings (stop, DRY's breakers, choice)."""
        for s in SETTINGS:
            value = getattr(self, s.name)
            if s.kind != "texts" or value is None:
                continue
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ConfigError(
                    f"{s.name} must be a list of strings, got {value!r} (wrap one string in a "
                    "list)",
                    param=s.name,
                )
            for item in value:
                if not isinstance(item, str) or not item:
                    raise ConfigError(
                        f"{s.name} must hold non-empty strings, got {item!r}", param=s.name
                    )

    def _check_constraint(self) -> None:
        from lmgen.decoding.grammar import check_constraint

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
            for name in SAMPLING_ONLY:
                default = DEFAULTS[name]
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
        if self.strategy != "contrastive" and self.penalty_alpha != DEFAULTS["penalty_alpha"]:
            warnings.append(
                f"penalty_alpha={self.penalty_alpha!r} has no effect: only strategy "
                "'contrastive' uses it"
            )
        if self.num_beam_groups == 1 and self.diversity_penalty != 0.0:
            warnings.append(
                f"diversity_penalty={self.diversity_penalty!r} has no effect without "
                "num_beam_groups > 1"
            )
        if self.prompt_lookup_num_tokens and (
            strategy not in PROMPT_LOOKUP_STRATEGIES or self.num_return_sequences > 1
        ):
            instead = (
                f"strategy {strategy!r}"
                if strategy not in PROMPT_LOOKUP_STRATEGIES
                else f"num_return_sequences={self.num_return_sequences}"
            )
            warnings.append(
                f"prompt_lookup_num_tokens={self.prompt_lookup_num_tokens} has no effect: "
                f"prompt lookup runs on one greedy or sampled sequence, not {instead}"
            )
        if self.ignore_eos and self.min_new_tokens > 0:
            warnings.append(
                "min_new_tokens has no effect with ignore_eos=True: end-of-sequence is "
                "ignored anyway"
            )
        return warnings


# -- the strategy rule ------------------------------------------------------------------------


def infer_strategy(given: dict[str, Any], default: str = "greedy") -> str:
    """The strategy of keyword arguments that name none: `num_beams > 1` gives "beam";
    `penalty_alpha > 0` gives "contrastive"; any of the settings declared `implies_sampling`
    (lmgen.settings.SAMPLING_SIGNALS; temperature only other than 0) gives "sample"; else
    `default` ("greedy"; the server's is "sample", as OpenAI's). A value of None counts as
    not given; an explicit `strategy` wins."""
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
    return default


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


def _check_layers(name: str, value: Any, strategy: str) -> None:
    """DoLa's layers: "low", "high" or a non-empty list of layer numbers; greedy or sample."""
    ok = value in ("low", "high") or (
        isinstance(value, list | tuple) and value and all(_is_int(i) and i >= 0 for i in value)
    )
    if not ok:
        raise ConfigError(
            f"{name} must be 'low', 'high' or a list of layer numbers (ints >= 0), got {value!r}",
            param=name,
        )
    if strategy not in ("greedy", "sample"):
        raise ConfigError(
            f"{name} (DoLa) works with strategy greedy or sample, got {strategy!r}", param=name
        )


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}", param=name)


GenerationConfig = dataclasses.make_dataclass(
    "GenerationConfig",
    [(s.name, _ANNOTATIONS[s.kind], dataclasses.field(default=s.default)) for s in SETTINGS],
    bases=(_Config,),
    namespace={"__module__": __name__},
)
GenerationConfig.__doc__ = """Every knob of decoding, validated: one field per declaration in
`lmgen.settings.SETTINGS`, with its default. `from_kwargs` builds one and infers the strategy."""
