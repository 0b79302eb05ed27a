"""Request bodies -> GenerationConfig: one field map for every endpoint.

An API field and the GenerationConfig field it sets; fields not listed keep their names
(`temperature`, `top_k`, ...). Every endpoint builds its config through `config_kwargs`, so a
field means the same thing wherever it is accepted, and its value is checked by the same
`GenerationConfig.validate` as on the CLI.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from lmgen.errors import ConfigError
from lmgen.generation_config import GenerationConfig

from .errors import APIError, from_lmgen
from .structured import constraint_kwargs

FIELD_MAP = {
    "max_tokens": "max_new_tokens",
    "n": "num_return_sequences",
    "min_tokens": "min_new_tokens",
}
# Request fields that are GenerationConfig fields under the same name.
SAME_NAME = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "num_beams",
    "length_penalty",
    "penalty_alpha",
    "num_beam_groups",
    "diversity_penalty",
    "early_stopping",
    "ignore_eos",
    "context_overflow",
    "min_tokens_to_keep",
    "temperature_last",
    "strategy",
    "epsilon_cutoff",
    "eta_cutoff",
    "top_n_sigma",
    "xtc_probability",
    "xtc_threshold",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "dynatemp_range",
    "dynatemp_exponent",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)


def config_kwargs(body: BaseModel, vocab_size: int) -> dict[str, Any]:
    """GenerationConfig keyword arguments for the fields of `body` that are set; token ids
    are checked against `vocab_size` (the served model's)."""
    kw: dict[str, Any] = {}
    fields = type(body).model_fields
    for api_name in fields:
        name = FIELD_MAP.get(api_name, api_name if api_name in SAME_NAME else None)
        value = getattr(body, api_name)
        if name is not None and value is not None:
            kw[name] = value
    if "stop" in fields:
        stop = body.stop
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if stop:
            kw["stop"] = stop
    if "logit_bias" in fields and body.logit_bias:
        kw["logit_bias"] = logit_bias(body.logit_bias, vocab_size)
    kw.update(constraint_kwargs(body))  # response_format, guided_*: checked, 400s named
    return kw


def logit_bias(bias: dict[str, float], vocab_size: int) -> dict[int, float]:
    """OpenAI's `{"token id": bias}` with the ids as ints, each in the vocabulary."""
    out = {}
    for key, value in bias.items():
        token = int(key) if key.isascii() and key.isdigit() else -1
        if not 0 <= token < vocab_size:
            raise APIError(
                400,
                f"logit_bias keys must be token ids of this model, in [0, {vocab_size}), "
                f"got {key[:40]!r}",
                param="logit_bias",
                code="invalid_value",
            )
        out[token] = value
    return out


def make_config(kw: dict) -> GenerationConfig:
    """A validated config, or the 400 that says which value is wrong."""
    try:
        return GenerationConfig.from_kwargs(**kw)
    except ConfigError as e:
        raise from_lmgen(e) from None
