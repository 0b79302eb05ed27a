"""Request bodies -> GenerationConfig, through the declarations in lmgen.settings (each
setting's API name). Every endpoint builds its config through `config_kwargs`, so a field
means the same thing wherever it is accepted, and its value is checked by the same
`GenerationConfig.validate` as on the CLI.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from lmgen.errors import ConfigError
from lmgen.generation_config import GenerationConfig
from lmgen.settings import SETTINGS

from .errors import APIError, from_lmgen
from .structured import constraint_kwargs


def config_kwargs(body: BaseModel, vocab_size: int) -> dict[str, Any]:
    """GenerationConfig keyword arguments for the fields of `body` that are set; token ids
    are checked against `vocab_size` (the served model's). A request names a setting by its
    API name (`max_tokens`, `n`, ...), or by its GenerationConfig name where the model says
    `setting_names = "own"` (the lmgen endpoints)."""
    own = getattr(type(body), "setting_names", "api") == "own"
    fields = type(body).model_fields
    kw: dict[str, Any] = {}
    for s in SETTINGS:
        name = s.name if own else s.api_name
        value = getattr(body, name) if name in fields else None
        if value is None or s.group == "structured":  # constraints: constraint_kwargs below
            continue
        if s.wire == "one_or_more_texts":
            value = [value] if isinstance(value, str) else list(value)
        elif s.kind == "token_bias":
            value = logit_bias(value, vocab_size)
        if not (isinstance(value, list | dict) and not value):  # [] and {}: not given
            kw[s.name] = value
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
