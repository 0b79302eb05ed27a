"""Structured output over HTTP: OpenAI's `response_format` and vLLM's `guided_regex`,
`guided_json`, `guided_choice` and `guided_grammar` become the GenerationConfig constraint
(`regex`, `json_schema`, `choice`, `grammar`), checked before anything is queued: a malformed
constraint, two constraints at once, or one no token can start is a 400 naming the field the
client sent."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmgen.decoding.grammar import CONSTRAINTS, StructuredOutput, check_constraint
from lmgen.errors import ConfigError
from lmgen.settings import SETTINGS

from .errors import APIError

GUIDED = {s.api_name: s.name for s in SETTINGS if s.group == "structured"}  # vLLM's names


class JsonSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema`: the schema and its name."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: str | None = Field(None, max_length=64)
    description: str | None = Field(None, max_length=64 * 1024)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: `{"type": "text"}` (no constraint), `{"type":
    "json_object"}` (any JSON object) or `{"type": "json_schema", "json_schema": {"name": ...,
    "schema": {...}}}`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def _given(body: BaseModel) -> list[tuple[str, str, Any]]:
    """(API field, GenerationConfig field, value) of every constraint the body sets."""
    out = []
    fields = type(body).model_fields
    for api_name, name in GUIDED.items():
        if api_name in fields and getattr(body, api_name) is not None:
            out.append((api_name, name, getattr(body, api_name)))
    for name in CONSTRAINTS:  # the lmgen endpoints take them under their own names
        if name in fields and getattr(body, name) is not None:
            out.append((name, name, getattr(body, name)))
    fmt = getattr(body, "response_format", None) if "response_format" in fields else None
    if isinstance(fmt, ResponseFormat) and fmt.type != "text":
        if fmt.type == "json_object":
            out.append(("response_format", "json_schema", {"type": "object"}))
        elif fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError(
                400,
                'response_format of type "json_schema" needs json_schema.schema, the JSON '
                "schema the output must satisfy",
                param="response_format",
                code="invalid_value",
            )
        else:
            out.append(("response_format", "json_schema", fmt.json_schema.schema_))
    return out


def constraint_kwargs(body: BaseModel) -> dict[str, Any]:
    """The GenerationConfig constraint the body asks for ({} for none), checked: a 400 names
    the request field."""
    given = _given(body)
    if not given:
        return {}
    if len(given) > 1:
        raise APIError(
            400,
            f"give at most one constraint; got {given[0][0]} and {given[1][0]}",
            param=given[1][0],
            code="invalid_value",
        )
    api_name, name, value = given[0]
    try:
        check_constraint(name, value)
    except ConfigError as e:
        raise _renamed(e, name, api_name) from None
    return {name: value}


def check_start(body: BaseModel, kw: dict[str, Any], lm) -> None:
    """A 400 now, rather than a failed job later, when the constraint is one this model's
    vocabulary cannot start (or its tokenizer cannot take)."""
    given = _given(body)
    name = next((n for n in CONSTRAINTS if kw.get(n) is not None), None)
    if name is None or not given:
        return
    try:
        StructuredOutput(name, kw[name], lm.tokenizer, lm.eos_token_ids, prompt_length=0)
    except ConfigError as e:
        raise _renamed(e, name, given[0][0]) from None


def _renamed(e: ConfigError, name: str, api_name: str) -> APIError:
    text = str(e)
    if api_name != name and text.startswith(name):
        text = api_name + text[len(name) :]
    return APIError(400, text, param=api_name, code="invalid_value")
