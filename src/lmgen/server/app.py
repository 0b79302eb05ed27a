"""The OpenAI-compatible app: `create_app(models)` -> a FastAPI application.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
`POST /v1/chat/completions`, `POST /v1/lmgen/next`, `POST /v1/lmgen/beam`, `GET /health`,
and the playground at `GET /`. The handlers validate, hand model work to the model's worker
thread (worker.py) and format; they never run the model on the event loop.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmgen.errors import ConfigError, GenerationError, LmgenError
from lmgen.generation import check_context, encode_prompt, make_config, next_token
from lmgen.generation_config import GenerationConfig
from lmgen.processors import (
    MinP,
    TopK,
    TopP,
    TypicalP,
    build_chain,
    make_generator,
    sample_from_logits,
)

from . import schemas
from .worker import CallJob, Cancelled, GenerateJob, Job, ModelWorker, Overloaded

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
CHAT_ROLES = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}
CHAT_STOP = ["\nUser:", "\nSystem:"]
# GenerationConfig's names -> the API's, in parameters and error messages
API_NAMES = {
    "max_new_tokens": "max_tokens",
    "num_return_sequences": "n",
    "min_new_tokens": "min_tokens",
}
_FILTERS = (TopK, TopP, MinP, TypicalP)
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# -- errors -------------------------------------------------------------------------------------


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
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _api_text(text: str) -> str:
    for ours, theirs in API_NAMES.items():
        text = re.sub(rf"\b{ours}\b", theirs, text)
    return text


def _from_lmgen(e: LmgenError, prompt_param: str = "prompt") -> APIError:
    if isinstance(e, GenerationError) and "context" in str(e):
        return APIError(400, _api_text(str(e)), param=prompt_param, code="context_length_exceeded")
    param = getattr(e, "param", None)
    return APIError(
        400,
        _api_text(str(e)),
        param=API_NAMES.get(param, param),
        code="invalid_value" if isinstance(e, ConfigError) else None,
    )


_TYPE_TAG = re.compile(r"^(str|int|float|bool|dict|list|none)$|\[")


def _known_params() -> list[str]:
    names: set[str] = set()
    for model in (
        schemas.CompletionRequest,
        schemas.ChatRequest,
        schemas.NextRequest,
        schemas.BeamRequest,
    ):
        names.update(model.model_fields)
    return sorted(names)


def _validation_error(errors: list[dict]) -> APIError:
    e = errors[0]
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
        close = difflib.get_close_matches(loc[-1], _known_params(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return APIError(
            400, f"unknown parameter {where!r}{hint}", param=param, code="unknown_parameter"
        )
    if kind == "missing":
        return APIError(
            400,
            f"missing required parameter {where!r}",
            param=param,
            code="missing_required_parameter",
        )
    got = repr(e.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    return APIError(
        400,
        f"invalid value for {where!r}: {e.get('msg')} (got {got})",
        param=param,
        code="invalid_value",
    )


# -- the ASGI guard: API key and body size, before anything reads the body --------------------


class _Guard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.key = api_key.encode() if api_key is not None else None
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope["path"].startswith("/v1/"):
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            # compare_digest: the time taken does not depend on where the keys differ
            good = hmac.compare_digest(token.strip(), self.key)
            if not (scheme.lower() == b"bearer" and good):
                err = APIError(
                    401,
                    "missing or incorrect API key: send 'Authorization: Bearer "
                    "KEY' with the key given to `lmgen serve --api-key`",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await err.response()(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = APIError(
            413, f"the request body is larger than {self.max_body} bytes", code="request_too_large"
        )
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await APIError(400, "invalid Content-Length").response()(
                    scope, receive, send
                )
            if int(length) > self.max_body:
                return await too_big.response()(scope, receive, send)
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await too_big.response()(scope, receive, send)
            body.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()  # afterwards: the disconnect, when it comes

        await self.app(scope, replay, send)


# -- the server ---------------------------------------------------------------------------------


class _Served:
    def __init__(self, lm, worker: ModelWorker, created: int):
        self.lm, self.worker, self.created = lm, worker, created


def create_app(
    models: dict,
    api_key: str | None = None,
    *,
    batching: bool = True,
    max_active: int = 16,
    max_waiting: int = 256,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The app serving `models` ({name: LM}); the first is the default when a request names
    none. With `api_key`, every /v1 route needs `Authorization: Bearer <api_key>`."""
    if not models:
        raise ValueError("create_app needs at least one model")
    now = int(time.time())
    served = {
        name: _Served(
            lm,
            ModelWorker(lm, max_active=max_active, max_waiting=max_waiting, batching=batching),
            now,
        )
        for name, lm in models.items()
    }

    @asynccontextmanager
    async def lifespan(app):
        yield
        for s in served.values():
            s.worker.close()

    app = FastAPI(
        title="lmgen",
        summary="OpenAI-compatible API and playground",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,  # those load a CDN
        default_response_class=SafeJSONResponse,
    )
    app.state.models = served
    app.state.api_key_required = api_key is not None
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    _add_error_handlers(app)
    api = _Api(served)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "models": {
                name: {**s.worker.load(), **_public_stats(s.worker)} for name, s in served.items()
            },
        }

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [api.model_card(n) for n in served]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        api.pick(model_id)
        return api.model_card(model_id)

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest, request: Request):
        return await api.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat(body: schemas.ChatRequest, request: Request):
        return await api.chat(body, request)

    @app.post("/v1/lmgen/next")
    async def lmgen_next(body: schemas.NextRequest, request: Request):
        name, s = api.pick(body.model)
        out = await api.run(request, s.worker, CallJob(lambda lm: next_payload(lm, body)))
        return {"model": name, **out}

    @app.post("/v1/lmgen/beam")
    async def lmgen_beam(body: schemas.BeamRequest, request: Request):
        name, s = api.pick(body.model)
        out = await api.run(request, s.worker, CallJob(lambda lm: beam_payload(lm, body)))
        return {"object": "lmgen.beam", "model": name, **out}

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _public_stats(worker: ModelWorker) -> dict:
    st = worker.stats
    return {
        "completed": st.completed,
        "cancelled": st.cancelled,
        "failed": st.failed,
        "batched_requests": st.merged_jobs,
        "batching": worker.batching,
    }


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return _validation_error(list(e.errors())).response()

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
        return _from_lmgen(e, param).response()

    @app.exception_handler(Cancelled)
    async def _gone(request, e: Cancelled):
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return APIError(500, f"internal error: {type(e).__name__}", type="server_error").response()


# -- the API ------------------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: such floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _dumps(payload: Any) -> str:
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(payload), ensure_ascii=False, allow_nan=False)


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content).encode("utf-8")


def _sse(payload: Any) -> str:
    return f"data: {_dumps(payload)}\n\n"


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if bias is None:
        return None
    out = {}
    for k, v in bias.items():
        if not k.strip().isdigit():
            raise APIError(
                400,
                f"logit_bias keys must be token ids (ints >= 0), got {k!r}",
                param="logit_bias",
                code="invalid_value",
            )
        out[int(k)] = v
    return out


_DECODING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "n": "num_return_sequences",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repetition_penalty": "repetition_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram_size",
    "num_beams": "num_beams",
    "length_penalty": "length_penalty",
    "early_stopping": "early_stopping",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "context_overflow": "context_overflow",
}


def decoding_kwargs(body: schemas._Decoding, extra_stop: list[str] | None = None) -> dict:
    """GenerationConfig keyword arguments for an OpenAI-style body (max_new_tokens aside).
    Sampling is the default, as in OpenAI's API; temperature 0 is greedy; num_beams > 1 is
    beam search."""
    kw: dict[str, Any] = {"strategy": "beam" if (body.num_beams or 1) > 1 else "sample"}
    for api_name, name in _DECODING.items():
        value = getattr(body, api_name)
        if value is not None:
            kw[name] = value
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    stop += [s for s in extra_stop or [] if s not in stop]
    if stop:
        kw["stop"] = stop
    if body.logit_bias:
        kw["logit_bias"] = _logit_bias(body.logit_bias)
    return kw


def _config(kw: dict) -> GenerationConfig:
    try:
        return GenerationConfig.from_kwargs(**kw)
    except ConfigError as e:
        raise _from_lmgen(e) from None


def _usage(results) -> dict:
    prompt = sum(len(r.prompt_token_ids) for r in results)
    completion = sum(len(c.token_ids) for r in results for c in r.choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _warnings(results) -> dict:
    warnings = results[0].warnings if results else []
    return {"warnings": [_api_text(w) for w in warnings]} if warnings else {}


class _Api:
    def __init__(self, served: dict[str, _Served]):
        self.served = served

    def pick(self, name: str | None) -> tuple[str, _Served]:
        if name is None:
            name = next(iter(self.served))
        s = self.served.get(name)
        if s is None:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has: {', '.join(self.served)}",
                param="model",
                code="model_not_found",
            )
        return name, s

    def model_card(self, name: str) -> dict:
        s = self.served[name]
        cfg = s.lm.config
        return {
            "id": name,
            "object": "model",
            "created": s.created,
            "owned_by": "lmgen",
            "max_model_len": cfg.n_positions,
            "lmgen": {
                "parameters": s.lm.model.num_parameters(),
                "vocab_size": cfg.vocab_size,
                "n_layer": cfg.n_layer,
                "n_embd": cfg.n_embd,
                "tokenizer": type(s.lm.tokenizer).__name__,
            },
        }

    # -- running jobs --

    @staticmethod
    def submit(worker: ModelWorker, job: Job) -> None:
        try:
            worker.submit(job)
        except Overloaded as e:
            raise APIError(
                429,
                f"the server is busy: {e}; retry shortly",
                type="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            ) from None

    async def run(self, request: Request, worker: ModelWorker, job: Job):
        """Runs `job` and returns its result; drops it if the client goes away first."""
        job.loop = asyncio.get_running_loop()
        self.submit(worker, job)
        fut = asyncio.wrap_future(job.future)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({fut, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if fut in done:
            return fut.result()
        job.cancel()
        raise Cancelled("the client went away")

    async def prompt_lengths(self, lm, prompts: list[str], param: str) -> list[int]:
        def lengths():
            return [len(encode_prompt(lm, p)) for p in prompts]

        try:
            return await anyio.to_thread.run_sync(lengths)
        except LmgenError as e:
            raise _from_lmgen(e, param) from None

    # -- completions --

    async def completions(self, body: schemas.CompletionRequest, request: Request):
        name, s = self.pick(body.model)
        lm = s.lm
        n = body.n or 1
        if body.best_of is not None and body.best_of != n:
            raise APIError(400, "best_of is not supported (only best_of == n)", param="best_of")
        if body.suffix:
            raise APIError(400, "suffix is not supported by these models", param="suffix")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        kw = decoding_kwargs(body)
        if body.logprobs:
            kw["logprobs"] = body.logprobs
        kw["max_new_tokens"] = body.max_tokens if body.max_tokens is not None else 16
        config = _config(kw)
        lengths = await self.prompt_lengths(lm, prompts, "prompt")
        try:
            check_context(lm, max(lengths), config)
        except GenerationError as e:
            raise _from_lmgen(e, "prompt") from None
        echo = bool(body.echo)
        want_lp = body.logprobs is not None
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": name}

        def choices(out) -> list[dict]:
            results, scored = out
            return [
                {
                    "index": k * n + c.index,
                    "text": (r.prompt if echo else "") + c.text,
                    "logprobs": _completion_logprobs(
                        lm.tokenizer, r, c, body.logprobs or 0, scored[k] if scored else None
                    )
                    if want_lp
                    else None,
                    "finish_reason": FINISH[c.finish_reason],
                }
                for k, r in enumerate(results)
                for c in r.choices
            ]

        prompt_lp = (body.logprobs or 0) if (echo and want_lp) else None
        incremental = not want_lp and config.effective_strategy() != "beam"
        if not body.stream:
            out = await self.run(
                request, s.worker, GenerateJob(prompts, config, prompt_logprobs=prompt_lp)
            )
            return {
                **head,
                "choices": choices(out),
                "usage": _usage(out[0]),
                "system_fingerprint": None,
                **_warnings(out[0]),
            }

        def chunk(index: int, text: str, reason: str | None = None, logprobs=None) -> dict:
            return {
                **head,
                "choices": [
                    {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
                ],
            }

        def on_event(item) -> list[dict]:
            if item[0] == "delta":
                return [chunk(item[1], item[2])]
            return [chunk(item[1], "", FINISH[item[2]])]

        def on_start() -> list[dict]:
            if not echo:
                return []
            return [chunk(k * n + j, p) for k, p in enumerate(prompts) for j in range(n)]

        def on_whole(out) -> list[dict]:  # non-incremental streams: one chunk per choice
            return [
                chunk(c["index"], c["text"], c["finish_reason"], c["logprobs"])
                for c in choices(out)
            ]

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        job = GenerateJob(prompts, config, stream=incremental, prompt_logprobs=prompt_lp)
        return self.stream(
            request,
            s.worker,
            job,
            on_start if incremental else lambda: [],
            on_event,
            on_whole,
            head,
            include_usage,
            incremental,
        )

    # -- chat --

    async def chat(self, body: schemas.ChatRequest, request: Request):
        name, s = self.pick(body.model)
        lm = s.lm
        _refuse_unsupported(body)
        n = body.n or 1
        prompt = chat_prompt(body.messages)
        kw = decoding_kwargs(body, extra_stop=CHAT_STOP)
        if body.logprobs:
            kw["logprobs"] = body.top_logprobs or 0
        elif body.top_logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        (length,) = await self.prompt_lengths(lm, [prompt], "messages")
        room = lm.config.n_positions - length
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            if room < 1:
                raise APIError(
                    400,
                    f"the conversation ({length} tokens) fills the model's "
                    f"context of {lm.config.n_positions} tokens",
                    param="messages",
                    code="context_length_exceeded",
                )
            max_tokens = min(room, schemas.MAX_TOKENS)
        kw["max_new_tokens"] = max_tokens
        config = _config(kw)
        try:
            check_context(lm, length, config)
        except GenerationError as e:
            raise _from_lmgen(e, "messages") from None
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "system_fingerprint": None,
        }
        want_lp = bool(body.logprobs)

        def choices(out) -> list[dict]:
            results, _ = out
            r = results[0]
            return [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": _chat_logprobs(lm.tokenizer, c) if want_lp else None,
                    "finish_reason": FINISH[c.finish_reason],
                }
                for c in r.choices
            ]

        if not body.stream:
            out = await self.run(request, s.worker, GenerateJob([prompt], config))
            return {**head, "choices": choices(out), "usage": _usage(out[0]), **_warnings(out[0])}

        chead = {**head, "object": "chat.completion.chunk"}

        def chunk(index: int, delta: dict, reason: str | None = None, logprobs=None) -> dict:
            return {
                **chead,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
                ],
            }

        def on_event(item) -> list[dict]:
            if item[0] == "delta":
                return [chunk(item[1], {"content": item[2]})]
            return [chunk(item[1], {}, FINISH[item[2]])]

        def on_start() -> list[dict]:
            return [chunk(j, {"role": "assistant", "content": ""}) for j in range(n)]

        def on_whole(out) -> list[dict]:
            return [
                item
                for c in choices(out)
                for item in (
                    chunk(
                        c["index"],
                        {"role": "assistant", "content": c["message"]["content"]},
                        None,
                        c["logprobs"],
                    ),
                    chunk(c["index"], {}, c["finish_reason"]),
                )
            ]

        incremental = not want_lp and config.effective_strategy() != "beam"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        job = GenerateJob([prompt], config, stream=incremental)
        return self.stream(
            request,
            s.worker,
            job,
            on_start if incremental else lambda: [],
            on_event,
            on_whole,
            chead,
            include_usage,
            incremental,
        )

    # -- server-sent events --

    def stream(
        self,
        request: Request,
        worker: ModelWorker,
        job: Job,
        on_start: Callable[[], list],
        on_event: Callable[[tuple], list],
        on_whole: Callable[[Any], list],
        head: dict,
        include_usage: bool,
        incremental: bool,
    ) -> StreamingResponse:
        """Streams a job as server-sent events ending in `data: [DONE]`. An incremental job
        sends its text as it is decided; otherwise each choice comes whole at the end. When
        the client goes away, the job is dropped at the worker's next turn."""
        job.loop = asyncio.get_running_loop()
        self.submit(worker, job)  # a full queue is still a proper 429 here
        fut = asyncio.wrap_future(job.future)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

        async def events() -> AsyncIterator[str]:
            try:
                for c in on_start():
                    yield _sse(c)
                if incremental:
                    while True:
                        item = await job.events.get()
                        if item[0] == "end":
                            break
                        for c in on_event(item):
                            yield _sse(c)
                try:
                    out = await fut
                except LmgenError as e:  # after the 200: the error travels as an event
                    yield _sse(_from_lmgen(e).body())
                except Exception as e:
                    log.exception("stream failed")
                    yield _sse(
                        APIError(
                            500, f"internal error: {type(e).__name__}", type="server_error"
                        ).body()
                    )
                else:
                    if not incremental:
                        for c in on_whole(out):
                            yield _sse(c)
                    if include_usage:
                        yield _sse({**head, "choices": [], "usage": _usage(out[0])})
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()  # a no-op when it finished; stops it when the client left

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _refuse_unsupported(body: schemas.ChatRequest) -> None:
    harmless = {
        "tool_choice": ("none",),
        "response_format": ({"type": "text"},),
        "modalities": (["text"],),
    }
    for name in (
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "response_format",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
    ):
        value = getattr(body, name)
        if value is None or value == [] or value in harmless.get(name, ()):
            continue
        raise APIError(
            400,
            f"{name} is not supported: lmgen's models are plain language "
            "models, not chat- or tool-tuned",
            param=name,
            code="unsupported",
        )


def chat_prompt(messages: list[schemas.ChatMessage]) -> str:
    """The plain role-tagged template: one `Role: text` line per message, then `Assistant:`.

    Our models are not chat-tuned: they continue this text as they would any other."""
    lines = []
    for m in messages:
        if isinstance(m.content, list):
            text = "".join(p.text for p in m.content)
        else:
            text = m.content or ""
        lines.append(f"{CHAT_ROLES[m.role]}: {text}")
    return "\n".join(lines) + "\nAssistant:"


# -- logprobs in OpenAI's two shapes ------------------------------------------------------------


def _completion_logprobs(tok, result, choice, top: int, scored) -> dict:
    tokens = [tok.token_to_str(t) for t in choice.token_ids]
    lps: list[float | None] = list(choice.logprobs)
    tops: list[dict] | None = None
    if top and choice.top_logprobs:
        tops = [{t.token: t.logprob for t in step} for step in choice.top_logprobs]
    if scored is not None:  # echo: the prompt's tokens come first
        p_lps, p_tops = scored
        tokens = [tok.token_to_str(t) for t in result.prompt_token_ids] + tokens
        lps = p_lps + lps
        if top:
            tops = p_tops + (tops or [{} for _ in choice.token_ids])
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(tok, choice) -> dict:
    content = []
    for k, t in enumerate(choice.token_ids):
        s = tok.token_to_str(t)
        alts = choice.top_logprobs[k] if choice.top_logprobs else []
        content.append(
            {
                "token": s,
                "logprob": choice.logprobs[k],
                "bytes": list(s.encode()),
                "top_logprobs": [
                    {"token": a.token, "logprob": a.logprob, "bytes": list(a.token.encode())}
                    for a in alts
                ],
            }
        )
    return {"content": content, "refusal": None}


# -- the playground's endpoints (run in the worker thread) ---------------------------------------

_PROCESSOR_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "no_repeat_ngram_size",
    "min_tokens_to_keep",
    "temperature_last",
)


def next_payload(lm, body: schemas.NextRequest) -> dict:
    """`lmgen next --json` for the body, plus what the playground draws: which rule removed
    each candidate (`removed_by`), its probability before the filters (`pre_filter_prob`), a
    summary of the rules (`filters`) and, with `choose`, the token the generation loop would
    pick (greedy: the most likely processed token; sample: a draw with `seed`)."""
    kw: dict[str, Any] = {
        k: getattr(body, k) for k in _PROCESSOR_FIELDS if getattr(body, k) is not None
    }
    kw["strategy"] = body.strategy or "sample"
    if body.logit_bias:
        kw["logit_bias"] = _logit_bias(body.logit_bias)
    if body.seed is not None:
        kw["seed"] = body.seed
    nt = next_token(lm, body.prompt, top=body.top, **kw)
    if bool(torch.isnan(nt.processed_logits.float().softmax(-1)).any()):
        raise GenerationError(
            "after the processor chain no token has a finite probability: "
            "the temperature or a penalty is too extreme"
        )
    out = nt.to_dict()
    config, _ = make_config(None, kw)
    ids = nt.prompt_token_ids
    chain = build_chain(config, prompt_length=len(ids), eos_token_ids=lm.eos_token_ids)
    x = torch.tensor([ids], device=nt.logits.device)
    scores = nt.logits[None].float()
    pre = scores
    removed_by = torch.full(scores.shape[-1:], -1, dtype=torch.long)
    for k, p in enumerate(chain):
        new = p(x, scores.clone())
        newly = (torch.isfinite(scores[0]) & ~torch.isfinite(new[0])).cpu()
        removed_by[newly] = k
        if not isinstance(p, _FILTERS):
            pre = p(x, pre.clone())
        scores = new
    pre_prob = pre.softmax(-1)[0].tolist()
    names = [type(p).__name__ for p in chain]
    rb = removed_by.tolist()
    for c in out["candidates"]:
        k = rb[c["token_id"]]
        c["removed_by"] = names[k] if k >= 0 else None
        c["pre_filter_prob"] = pre_prob[c["token_id"]]
    counts = torch.bincount(removed_by[removed_by >= 0], minlength=len(chain)).tolist()
    out["filters"] = [
        {
            "index": k,
            "name": names[k],
            "description": repr(p),
            "removed": counts[k] if k < len(counts) else 0,
        }
        for k, p in enumerate(chain)
    ]
    out["prompt"] = body.prompt
    out["vocab_size"] = int(scores.shape[-1])
    out["kept_count"] = int(torch.isfinite(nt.processed_logits).sum())
    if body.choose:
        strategy = config.effective_strategy()
        if strategy == "sample":
            g = make_generator(body.seed, nt.processed_logits.device)
            tid = int(sample_from_logits(nt.processed_logits[None].float(), [g])[0])
        else:
            tid = nt.greedy_token_id
        tok = lm.tokenizer
        before, after = tok.decode(ids), tok.decode(ids + [tid])
        delta = after[len(before) :] if after.startswith(before) else tok.token_to_str(tid)
        probs = nt.processed_logits.float().softmax(-1)
        out["chosen"] = {
            "token_id": tid,
            "token": tok.token_to_str(tid),
            "text": delta,
            "strategy": strategy,
            "seed": body.seed,
            "processed_prob": float(probs[tid]),
            "prob": float(nt.logits.float().softmax(-1)[tid]),
        }
    return out


def beam_payload(lm, body: schemas.BeamRequest) -> dict:
    """Beam search for one prompt with its trace: every step's candidates (parent beam, token,
    cumulative score, kept | finished | pruned), as a tree with node ids, and the path of each
    returned hypothesis through it."""
    from lmgen.beam import beam_search

    kw: dict[str, Any] = {
        "strategy": "beam",
        "num_beams": body.num_beams,
        "max_new_tokens": body.max_tokens,
    }
    for api_name, name in (
        ("n", "num_return_sequences"),
        ("length_penalty", "length_penalty"),
        ("early_stopping", "early_stopping"),
        ("repetition_penalty", "repetition_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        ("no_repeat_ngram_size", "no_repeat_ngram_size"),
        ("min_tokens", "min_new_tokens"),
        ("ignore_eos", "ignore_eos"),
    ):
        value = getattr(body, api_name)
        if value is not None:
            kw[name] = value
    if body.logit_bias:
        kw["logit_bias"] = _logit_bias(body.logit_bias)
    config, warnings = make_config(None, kw)
    ids = encode_prompt(lm, body.prompt)
    check_context(lm, len(ids), config)
    trace: list = []
    (result,) = beam_search(lm, [body.prompt], [ids], config, warnings, trace=trace)
    tr = trace[0]
    steps, prev_kept = [], {}
    for st in tr.steps:
        kept, cands = {}, []
        for k, c in enumerate(st.candidates):
            node = f"{st.step}:{k}"
            parent_id = "root" if st.step == 0 else prev_kept.get(c["parent"])
            cands.append({"id": node, "parent_id": parent_id, **c})
            if c["status"] == "kept":
                kept[c["beam"]] = node
        steps.append({"step": st.step, "candidates": cands})
        prev_kept = kept
    eos = set(lm.eos_token_ids)
    choices = []
    for c in result.choices:
        path, node = [], "root"
        for t, token in enumerate(c.token_ids):
            match = (
                next(
                    (
                        d
                        for d in steps[t]["candidates"]
                        if d["parent_id"] == node and d["token_id"] == token
                    ),
                    None,
                )
                if t < len(steps)
                else None
            )
            if match is None:
                break
            node = match["id"]
            path.append(node)
        if c.finish_reason == "eos" and len(c.token_ids) < len(steps):
            end = next(
                (
                    d
                    for d in steps[len(c.token_ids)]["candidates"]
                    if d["parent_id"] == node and d["token_id"] in eos and d["status"] == "finished"
                ),
                None,
            )
            if end is not None:
                path.append(end["id"])
        choices.append(
            {
                "index": c.index,
                "text": c.text,
                "token_ids": c.token_ids,
                "score": c.score,
                "finish_reason": FINISH[c.finish_reason],
                "path": path,
            }
        )
    return {
        "prompt": body.prompt,
        "prompt_token_ids": ids,
        "chain": result.chain,
        "num_beams": config.num_beams,
        "length_penalty": config.length_penalty,
        "steps": steps,
        "choices": choices,
        "warnings": [_api_text(w) for w in warnings],
        "usage": _usage([result]),
    }


# -- running the app in a thread (tests, notebooks) ---------------------------------------------


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Runs `app` under uvicorn in a background thread; yields its base URL, e.g.
    `http://127.0.0.1:54321`. Port 0 takes a free port (bound before uvicorn starts, so there
    is no race)."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="lmgen-uvicorn"
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
