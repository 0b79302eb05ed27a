"""`GET /v1/lmgen/settings`: every decoding setting's declaration (lmgen.settings) as JSON, from
which the playground generates its controls: one per setting, grouped as docs/settings.md
groups them, the range the server accepts, and what the references call it (the tooltip).

So a setting added to lmgen.settings gets its playground control without a line of page code.
`requests` says under which name each playground request carries it (null: that request has
no such field), read from the request bodies themselves (schemas.py), not written again.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from lmgen.settings import GROUPS, SETTINGS, Range, Setting

from .schemas import BeamRequest, ChatRequest, CompletionRequest, NextRequest

REQUESTS = {
    "next": NextRequest,  # /v1/lmgen/next and /v1/lmgen/pipeline
    "completions": CompletionRequest,
    "chat": ChatRequest,
    "beam": BeamRequest,
}
REFERENCES = ("openai", "vllm", "llama_cpp", "transformers")


def catalog() -> dict[str, Any]:
    """The groups in order, and every setting in declaration order."""
    return {
        "object": "lmgen.settings",
        "groups": [{"name": g, "title": t} for g, t in GROUPS.items()],
        "settings": [setting_json(s) for s in SETTINGS],
    }


def setting_json(s: Setting) -> dict[str, Any]:
    """One declaration as the page needs it."""
    return {
        "name": s.name,
        "kind": s.kind,
        "wire": s.wire or s.kind,  # its JSON shape in a request (texts: a list of strings)
        "default": s.default,
        "off": s.off,
        "help": s.help,
        "group": s.group,
        "range": range_json(s.range.capped(s.serve_max)) if s.range else None,
        "allowed": s.allowed(serve=True),
        "choices": list(s.choices),
        "sampling_only": s.sampling_only,
        "chain": s.chain,
        "processor": s.processor,
        "references": {r: getattr(s, r) for r in REFERENCES if getattr(s, r)},
        "requests": {name: field_name(model, s) for name, model in REQUESTS.items()},
        "json_schema": field_schema(s),
    }


def range_json(r: Range) -> dict[str, Any]:
    return {
        "low": r.low,
        "high": r.high,
        "low_open": r.low_open,
        "high_open": r.high_open,
        "integer": r.integer,
        "also": list(r.also),
    }


def field_name(model, s: Setting) -> str | None:
    """The field of request `model` that carries setting `s`, or None."""
    name = s.name if getattr(model, "setting_names", "api") == "own" else s.api_name
    return name if name is not None and name in model.model_fields else None


def field_schema(s: Setting) -> Any:
    """The JSON Schema of the setting's value in the first request that takes it (the page
    shows it for a value typed as JSON): no help texts, defaults or null."""
    for model in REQUESTS.values():
        name = field_name(model, s)
        if name is not None:
            return bare(_properties(model)[name])
    return None


def bare(schema: Any) -> Any:
    """`schema` without descriptions, titles, defaults and its `null` alternative."""
    if isinstance(schema, list):
        return [bare(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bare(v) for k, v in schema.items() if k not in ("description", "title", "default")}
    if "anyOf" in out:
        options = [x for x in out["anyOf"] if x != {"type": "null"}]
        if len(options) == 1 and len(out) == 1:
            return options[0]
        out["anyOf"] = options
    return out


@cache
def _properties(model) -> dict[str, Any]:
    return model.model_json_schema()["properties"]
