"""The app: `create_app(models)` -> a FastAPI application, and `serve_in_thread` to run one.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
`POST /v1/chat/completions`, `POST /v1/lmgen/next`, `POST /v1/lmgen/pipeline`,
`GET /v1/lmgen/settings`, `POST /v1/lmgen/beam`, vLLM's
`POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info`, `GET /health`, Prometheus'
`GET /metrics` (metrics.py), and the
playground at `GET /`. This module only assembles: the HTTP plumbing is in errors.py,
guard.py, responses.py and jobs.py, the OpenAI mapping in mapping.py and openai_api.py, the
playground's endpoints in playground.py (with pipeline.py and controls.py), the tokenizer's in
tokenizer_endpoints.py; the model work runs in worker.py's threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from . import controls, openai_api, pipeline, playground, schemas, tokenizer_endpoints
from .budget import DEFAULT_TOTAL, DEFAULT_WAIT_S, MemoryBudget
from .errors import add_error_handlers
from .guard import Guard, HostCheck
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .openapi import BODY_ERRORS, COMMON_ERRORS, STREAMED, without_422
from .registry import Registry
from .responses import SafeJSONResponse
from .worker import ModelWorker

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def create_app(
    models: dict,
    api_key: str | None = None,
    *,
    batching: bool = True,
    max_active: int = 16,
    max_waiting: int = 256,
    max_body_bytes: int = MAX_BODY_BYTES,
    memory_budget: int = DEFAULT_TOTAL,
    max_request_memory: int | None = None,
    memory_wait_s: float = DEFAULT_WAIT_S,
    allowed_hosts: list[str] | None = None,
    kv_cache_bytes: int | None = None,
    max_batch: int = 64,
) -> FastAPI:
    """The app serving `models` ({name: LM}); the first is the default when a request names
    none. With `api_key`, every /v1 route needs `Authorization: Bearer <api_key>`.

    Requests reserve the memory they need from `memory_budget` bytes (at most
    `max_request_memory` each; see budget.py); each model's running batch holds at most
    `kv_cache_bytes` of KV cache (engine.py; None: unbounded). With `allowed_hosts` (a list,
    possibly empty), only requests whose Host header is a loopback name or one of those hosts
    are served (`lmgen serve` passes it when bound to loopback); None serves any Host."""
    budget = MemoryBudget(memory_budget, max_request_memory, memory_wait_s)
    served = Registry(
        models, budget, max_active=max_active, max_waiting=max_waiting, batching=batching,
        kv_cache_bytes=kv_cache_bytes, max_batch=max_batch,
    )  # fmt: skip
    metrics = ServerMetrics()
    for name, s in served.items():
        watcher = metrics.watch(name, s.worker)
        if s.worker.engine is not None:
            s.worker.engine.metrics = watcher

    @asynccontextmanager
    async def lifespan(app):
        yield
        served.close()

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
    hosts = HostCheck(allowed_hosts) if allowed_hosts is not None else None
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes, hosts=hosts)
    add_error_handlers(
        app, sorted({*schemas.known_params(), *pipeline.PipelineRequest.model_fields})
    )
    without_422(app)

    @app.get("/health", responses={421: COMMON_ERRORS[421]})
    async def health():
        return {
            "status": "ok",
            "models": {
                name: {**s.worker.load(), **public_stats(s.worker)} for name, s in served.items()
            },
            "memory": budget.stats(),
        }

    @app.get("/metrics", responses={421: COMMON_ERRORS[421]})
    async def prometheus_metrics():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=COMMON_ERRORS)
    async def list_models():
        return {"object": "list", "data": [served.card(n) for n in served]}

    @app.get("/v1/models/{model_id:path}", responses=COMMON_ERRORS)
    async def get_model(model_id: str):
        served.pick(model_id)
        return served.card(model_id)

    @app.post("/v1/completions", responses={**BODY_ERRORS, **STREAMED})
    async def completions(body: schemas.CompletionRequest, request: Request):
        return await openai_api.completions(served, body, request)

    @app.post("/v1/chat/completions", responses={**BODY_ERRORS, **STREAMED})
    async def chat(body: schemas.ChatRequest, request: Request):
        return await openai_api.chat(served, body, request)

    @app.post("/v1/lmgen/next", responses=BODY_ERRORS)
    async def lmgen_next(body: schemas.NextRequest, request: Request):
        return await playground.next_route(served, body, request)

    @app.post("/v1/lmgen/pipeline", responses=BODY_ERRORS)
    async def lmgen_pipeline(body: pipeline.PipelineRequest, request: Request):
        return await playground.pipeline_route(served, body, request)

    @app.get("/v1/lmgen/settings", responses=COMMON_ERRORS)
    async def lmgen_settings():
        return controls.catalog()

    @app.post("/v1/lmgen/beam", responses=BODY_ERRORS)
    async def lmgen_beam(body: schemas.BeamRequest, request: Request):
        return await playground.beam_route(served, body, request)

    @app.post("/v1/lmgen/chat_prompt", responses=BODY_ERRORS)
    async def lmgen_chat_prompt(body: schemas.TokenizeRequest):
        return await playground.chat_prompt_route(served, body)

    @app.post("/tokenize", responses=BODY_ERRORS)
    async def tokenize_route(body: schemas.TokenizeRequest):
        return await tokenizer_endpoints.tokenize(served, body)

    @app.post("/detokenize", responses=BODY_ERRORS)
    async def detokenize_route(body: schemas.DetokenizeRequest):
        return await tokenizer_endpoints.detokenize(served, body)

    @app.get("/tokenizer_info", responses=COMMON_ERRORS)
    async def tokenizer_info(model: str | None = None):
        return tokenizer_endpoints.tokenizer_info(served, model)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def public_stats(worker: ModelWorker) -> dict:
    st = worker.stats
    return {
        "completed": st.completed,
        "cancelled": st.cancelled,
        "failed": st.failed,
        "batched_requests": st.merged_jobs,
        "batching": worker.batching,
    }


# -- running the app in a thread (tests, notebooks) -------------------------------------------


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
