"""`lmgen serve`: the OpenAI-compatible API and the playground over uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from lmgen.cli_args import DTYPES, QUANTIZE_HELP, QUANTIZE_METHODS, add_command
from lmgen.cli_decoding import add_decoding_arguments
from lmgen.errors import ConfigError
from lmgen.settings import COMMAND_GROUPS, SERVE_COMPLETION_TOKENS

log = logging.getLogger(__name__)

# The measurement in docs/SERVER.md decides this default.
DEFAULT_BATCHING = "on"


def model_name(spec: str) -> tuple[str, str]:
    """`NAME=MODEL` or `MODEL` -> (name, model). A directory is named after its last part, a
    `.gguf` file after its name less the suffix, `hf:owner/gpt2` after the repository."""
    name, sep, model = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, model
    if spec.startswith("hf:"):
        return spec[3:].rstrip("/").rsplit("/", 1)[-1] or spec, spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve().name, spec
    if path.suffix.lower() == ".gguf" and path.is_file():
        return path.stem, spec
    return spec, spec


def load_models(
    specs: list[str] | None,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
) -> dict:
    """Every --model, loaded with the same runtime (`lmgen.load`'s device, dtype, quantize)."""
    import torch

    import lmgen

    runtime = dict(device=device, dtype=getattr(torch, dtype) if dtype else None, quantize=quantize)
    models = {}
    for spec in specs or [None]:
        if spec is None:
            lm = lmgen.load(None, **runtime)
            name = lm.name
        else:
            name, model = model_name(spec)
            lm = lmgen.load(model, **runtime)
        if name in models:
            raise ConfigError(
                f"two models are named {name!r}; name them with --model NAME=MODEL", "model"
            )
        lm.name = name
        lm.model.eval()
        models[name] = lm
        log.info("serving %s as %r", lm, name)
    return models


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_size(text: str | None, param: str) -> int | None:
    """`3G`, `512M`, `1.5GiB`, `1073741824` -> bytes (binary units)."""
    if text is None:
        return None
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        value = -1.0
    if not (value > 0 and value * _UNITS[unit] < 1 << 50):
        raise ConfigError(
            f"--{param.replace('_', '-')} takes a size such as 3G or 512M, got {text!r}", param
        )
    return int(value * _UNITS[unit])


KV_CACHE_SHARE = 4  # the default KV cache: a quarter of the machine's memory


def default_kv_cache_mb() -> int:
    """A quarter of the machine's physical memory, in MiB (1024 where it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1024
    return max(1, total // KV_CACHE_SHARE >> 20)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_can_listen(host: str, port: int) -> None:
    """Fails early, before any "serving" line, when the address can't be bound."""
    import socket

    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} is not a usable address: {e.strerror}", "host") from e
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}", "port") from e


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve models over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /v1/models) and a playground page at /."""
    import uvicorn

    from lmgen.cli_decoding import config_kwargs
    from lmgen.generation_config import GenerationConfig

    from .app import create_app

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}", "port")
    for name in ("max_active", "max_waiting", "kv_cache_mb", "max_batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1", name)
    if args.api_key is not None and not args.api_key:
        raise ConfigError("--api-key must not be empty", "api_key")
    budget = memory_size(args.memory_budget, "memory_budget")
    per_request = memory_size(args.max_request_memory, "max_request_memory")
    if per_request is not None and per_request > budget:
        raise ConfigError(
            f"--max-request-memory ({args.max_request_memory}) must not exceed "
            f"--memory-budget ({args.memory_budget})",
            "max_request_memory",
        )
    hosts = list(args.allowed_host or [])
    for host in hosts:
        if not host or any(c in host for c in "/ \t"):
            raise ConfigError(f"--allowed-host takes a host name, got {host!r}", "allowed_host")
    defaults = config_kwargs(args)  # the decoding flags given: defaults for every request
    GenerationConfig.from_kwargs(**defaults)  # checked now: a bad value is an error: line
    _check_can_listen(args.host, args.port)
    if not is_loopback(args.host) and args.api_key is None:
        print(
            f"warning: serving on {args.host} without --api-key: anyone who can reach this "
            "port can use the models",
            file=sys.stderr,
        )
    models = load_models(args.model, args.device, args.dtype, args.quantize)
    for lm in models.values():
        lm.decoding_defaults = defaults
    app = create_app(
        models,
        api_key=args.api_key,
        batching=args.batching == "on",
        max_active=args.max_active,
        max_waiting=args.max_waiting,
        memory_budget=budget,
        max_request_memory=per_request,
        kv_cache_bytes=args.kv_cache_mb << 20,
        max_batch=args.max_batch,
        # DNS rebinding: on loopback, only loopback Host headers and the --allowed-host ones
        allowed_hosts=hosts if is_loopback(args.host) or hosts else None,
    )
    print(
        f"lmgen: serving {', '.join(models)} at http://{args.host}:{args.port}/ "
        f"(playground at /, API at /v1)",
        file=sys.stderr,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )
    return 0


def add_parsers(sub) -> None:
    p = add_command(
        sub, cmd_serve, "serve", "serve models over an OpenAI-compatible API, with a playground"
    )
    p.add_argument(
        "--model",
        "-m",
        action="append",
        metavar="[NAME=]MODEL",
        help="a model directory, .gguf file, bundled model or hf:NAME, optionally named; "
        "repeat to serve several, e.g. a draft that requests name as draft_model for "
        "speculative decoding (default: the bundled model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("LMGEN_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $LMGEN_API_KEY)",
    )
    p.add_argument(
        "--batching",
        choices=["on", "off"],
        default=DEFAULT_BATCHING,
        help="continuous batching: greedy and sampling requests share one running batch, "
        f"each with its own settings and seed (default: {DEFAULT_BATCHING}; see docs/SERVER.md)",
    )
    p.add_argument(
        "--kv-cache-mb",
        type=int,
        default=default_kv_cache_mb(),
        metavar="MIB",
        help="KV cache each model's running batch may hold, in MiB: rows grow into it as they "
        "decode; a request waits until its first blocks fit, and when it is full the newest "
        "request is preempted and recomputed later (default: a quarter of this machine's "
        "memory). --memory-budget bounds what requests may reserve when they arrive; this "
        "bounds what the batch holds",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="rows (prompts x choices) in each model's running batch (default: 64)",
    )
    p.add_argument(
        "--max-active",
        type=int,
        default=16,
        help="requests running at once per model, in the batch or in turns (default: 16)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="requests waiting per model before answering 429 (default: 256)",
    )
    p.add_argument(
        "--memory-budget",
        default="3G",
        metavar="SIZE",
        help="memory all running requests may reserve together (KV cache and working set, "
        "estimated from the model's shape); a request that finds too little free waits, then "
        "gets 429 (default: 3G)",
    )
    p.add_argument(
        "--max-request-memory",
        default=None,
        metavar="SIZE",
        help="the most one request may reserve; a larger one gets 413 "
        "(default: the whole --memory-budget)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="HOST",
        help="answer requests whose Host header is HOST, besides loopback names (repeat for "
        "several; '*' for any). Bound to loopback, the server answers only loopback names "
        "unless told more, which stops DNS-rebinding attacks from web pages; bound elsewhere "
        "it answers any Host unless --allowed-host is given",
    )
    p.add_argument(
        "--device",
        default=None,
        help="the models' torch device: cpu, cuda, cuda:1, mps, ... (default: cpu)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights of every model in this type (default: float32); CPU decode steps keep "
        "activations in float32 where lmgen's kernel builds",
    )
    p.add_argument("--quantize", choices=QUANTIZE_METHODS, default=None, help=QUANTIZE_HELP)
    # every decoding setting, as on `lmgen generate`: defaults for requests that leave it out
    add_decoding_arguments(
        p,
        COMMAND_GROUPS["serve"],
        strategy_help="for requests that choose none; without it the API's rule applies",
        shown_defaults={
            "--max-new-tokens": f"{SERVE_COMPLETION_TOKENS} for /v1/completions; a chat reply: "
            "what the context leaves"
        },
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log the server's messages from this level up (default: info)",
    )
