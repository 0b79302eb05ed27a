"""What `/openapi.json` says about responses: the error statuses every route can answer (in
OpenAI's error shape) and the event stream of a streamed completion. FastAPI's own 422 never
reaches a client (errors.py turns it into a 400), so it is not listed."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .schemas import ErrorResponse


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error(
        "a parameter fails validation, the body is not JSON, or the request cannot be served "
        "as asked (context length, a combination of parameters, a token id, a regex, JSON "
        "schema or grammar that does not compile or that no token can start, a chat template "
        "that fails on the messages or cannot continue the last one, a draft_model that is "
        "not served, is the model itself or cannot serve the other settings)"
    ),
    401: _error("`--api-key` is set and the Authorization header is missing or wrong"),
    404: _error("an unknown model or route"),
    421: _error("the Host header names a host this server does not answer for"),
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERRORS,
    413: _error("the body, or the memory the request needs, is over the server's limit"),
    429: _error("the model's waiting line or the memory budget is full; retry (Retry-After)"),
}
STREAMED = {
    200: {
        "description": "the response; with `stream: true`, server-sent events ending in "
        "`data: [DONE]`",
        "content": {
            "text/event-stream": {
                "schema": {  # one event (OpenAPI 3.1: `schema` describes each event)
                    "type": "object",
                    "properties": {
                        "data": {
                            "type": "string",
                            "description": "a chunk as JSON, an error as JSON, or [DONE]",
                        },
                        "event": {"type": "string"},
                    },
                    "required": ["data"],
                }
            }
        },
    }
}


def without_422(app: FastAPI) -> None:
    """Drops FastAPI's 422 (and its schemas) from the generated document."""
    make = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = make()
            for path in doc.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
