"""Errors in OpenAI's shape, and the one place that maps exceptions to HTTP statuses.

Every error a client sees is `{"error": {"message", "type", "param", "code"}}`. Exceptions are
classified by their type (lmgen's family, pydantic's validation errors, Starlette's HTTP
errors), never by their text; anything unexpected is a logged 500 that names only the type.
"""

from __future__ import annotations

import difflib
import logging
import re

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmgen.errors import ConfigError, ContextLengthError, LmgenError
from lmgen.settings import SETTINGS

from .worker import Cancelled

log = logging.getLogger(__name__)

# GenerationConfig's names -> the API's, in parameters and error messages (a constraint's
# errors are renamed where it is checked: structured.py)
API_NAMES = {
    s.name: s.api_name
    for s in SETTINGS
    if s.api_name not in (None, s.name) and s.group != "structured"
}


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        return {
            "error": {
                "message": _printable(self.message),
                "type": self.type,
                "param": _printable(self.param),
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _printable(text: str | None) -> str | None:
    """`text` with any lone surrogate written as its escape (\\ud800): an error that quotes
    the client's field name or value must still be encodable as UTF-8, whichever check (the
    guard's number or nesting limits, a schema's) names it first."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def internal_error(e: BaseException) -> APIError:
    return APIError(500, f"internal error: {type(e).__name__}", type="server_error")


def api_text(text: str) -> str:
    """A message of the library's with the API's parameter names."""
    for ours, theirs in API_NAMES.items():
        text = re.sub(rf"\b{ours}\b", theirs, text)
    return text


def from_lmgen(e: LmgenError, prompt_param: str = "prompt") -> APIError:
    """The 400 for an error of lmgen's own family."""
    if isinstance(e, ContextLengthError):
        return APIError(400, api_text(str(e)), param=prompt_param, code="context_length_exceeded")
    param = getattr(e, "param", None)
    if param == "prompt":
        param = prompt_param
    return APIError(
        400,
        api_text(str(e)),
        param=API_NAMES.get(param, param),
        code="invalid_value" if isinstance(e, ConfigError) else None,
    )


# pydantic's names for the members of a union, and schemas.py's tags of the prompt's shapes
_TYPE_TAG = re.compile(
    r"^(str|int|float|bool|dict|list|none|literal)$|\[|^constrained-|^function-|^as-"
)


def most_telling(errors: list[dict]) -> dict:
    """The error to report. A value that fits none of a union's types gets one error per
    type; the telling one comes from the type that matched the value's shape (not a mere
    "should be a valid string"), and the deepest of those."""

    def field(e: dict) -> object:  # the top-level field the error is about
        loc = [x for x in e.get("loc", ()) if x != "body"]
        return loc[0] if loc else None

    same = [e for e in errors if field(e) == field(errors[0])]
    shaped = [e for e in same if not e.get("type", "").endswith("_type")]
    return max(shaped or same, key=lambda e: len(e.get("loc", ())))


def validation_error(errors: list[dict], known_params: list[str]) -> APIError:
    """The 400 for the first of pydantic's validation errors, with the API's wording."""
    e = most_telling(errors)
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    loc = [x for x in loc if not _TYPE_TAG.search(x)]
    where = ".".join(loc)
    param = loc[0] if loc else None
    kind = e.get("type", "")
    if kind == "json_invalid":
        why = e.get("ctx", {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON ({why})", code="invalid_json")
    if not loc:
        return APIError(400, "the request body must be a JSON object", code="invalid_body")
    if kind == "extra_forbidden":
        if loc[-1] in known_params:  # a parameter of another endpoint (chat's response_format)
            return APIError(
                400,
                f"parameter {where!r} is not taken by this endpoint",
                param=param,
                code="unknown_parameter",
            )
        close = difflib.get_close_matches(loc[-1], known_params, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return APIError(
            400, f"unknown parameter {where!r}{hint}", param=param, code="unknown_parameter"
        )
    if kind == "setting":  # a decoding setting out of range: the library's own message
        return APIError(400, e.get("msg", ""), param=param, code="invalid_value")
    if kind == "missing":
        return APIError(
            400,
            f"missing required parameter {where!r}",
            param=param,
            code="missing_required_parameter",
        )
    got = repr(e.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    if kind == "too_long" and where == "prompt" and "as-ids" not in e.get("loc", ()):
        limit = e.get("ctx", {}).get("max_length")
        count = e.get("ctx", {}).get("actual_length")
        return APIError(
            400,
            f"at most {limit} prompts in one request, got {count}; send them in several",
            param=param,
            code="invalid_value",
        )
    ctx = e.get("ctx", {})
    if kind == "string_too_long" and ctx.get("max_length") == 0:  # a field taken only empty
        why = f"{where!r} is not supported (only empty or null)"
        return APIError(400, f"{why}; got {got}", param=param, code="unsupported")
    if kind == "too_short" and ctx.get("min_length") == 1:
        return APIError(400, f"{where!r} must not be empty", param=param, code="invalid_value")
    msg = e.get("msg", "")
    # pydantic's own messages do not say what was sent; lmgen's validators' messages do
    said = f"{msg} (got {got})" if ", got " not in msg else msg
    return APIError(400, f"invalid value for {where!r}: {said}", param=param, code="invalid_value")


def add_error_handlers(app: FastAPI, known_params: list[str]) -> None:
    @app.exception_handler(APIError)
    async def _api(request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return validation_error(list(e.errors()), known_params).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"{e.detail}: {request.method} {request.url.path}"
        return APIError(
            e.status_code, message, code=code, headers=getattr(e, "headers", None)
        ).response()

    @app.exception_handler(LmgenError)
    async def _lmgen(request, e: LmgenError):
        param = "messages" if request.url.path.endswith("/chat/completions") else "prompt"
        return from_lmgen(e, param).response()

    @app.exception_handler(Cancelled)
    async def _gone(request, e: Cancelled):
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return internal_error(e).response()
