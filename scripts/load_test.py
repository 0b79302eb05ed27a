"""A bounded load test for `lmgen serve`: N concurrent clients for T seconds, on loopback only.

    python scripts/load_test.py --model shakespeare --clients 8 --duration 30
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 4 --duration 10 --stream

    python scripts/load_test.py --memory-probe --clients 8 --duration 60

Without --url it starts `lmgen serve` itself on a free loopback port (with --batching on|off)
and stops it at the end. Each client sends completions back to back (a fixed set of prompts,
`ignore_eos` so every request decodes exactly --max-tokens tokens) until the duration is over;
requests still running then get --grace seconds to finish. Prints throughput, latency
p50/p95/p99 (and time to first token with --stream) and error counts; --json prints one JSON
object instead. Not part of the test suite.

--memory-probe sends, from each client, one request of the largest size the API allows
(32 prompts x n=16 = 512 rows, each prompt plus max_tokens filling the context) and reports
the answers and the started server's peak resident memory (VmHWM), which is what the memory
budget (`lmgen serve --memory-budget`) bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from urllib.parse import urlparse

import httpx

from lmgen.server.cli import is_loopback

PROMPTS = [
    "ROMEO:",
    "JULIET:\nO Romeo, Romeo,",
    "First Citizen:\nBefore we proceed any further,",
    "KING RICHARD III:\nNow is the winter",
    "To be, or not to be",
    "HAMLET:\nWhat a piece of work",
    "MENENIUS:\nI tell you, friends,",
    "LADY MACBETH:\nOut, damned spot!",
]
MAX_CLIENTS, MAX_DURATION, MAX_TOKENS = 64, 300.0, 512


def loopback(url: str) -> bool:
    return is_loopback(urlparse(url).hostname or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "lmgen",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--batching",
        args.batching,
        "--log-level",
        "warning",
        "--max-active",
        str(args.max_active),
    ]
    for m in args.model or []:
        cmd += ["--model", m]
    if args.memory_budget:
        cmd += ["--memory-budget", args.memory_budget]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not start within 120 s")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


async def one_request(client: httpx.AsyncClient, args, i: int, rec: dict) -> None:
    body = {
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "ignore_eos": True,
    }
    if args.model_name:
        body["model"] = args.model_name
    if args.seeded:
        body["seed"] = i
    t0 = time.perf_counter()
    try:
        if not args.stream:
            r = await client.post("/v1/completions", json=body)
            if r.status_code != 200:
                rec["errors"][f"http {r.status_code}"] += 1
                return
            rec["tokens"] += r.json()["usage"]["completion_tokens"]
        else:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            first = None
            async with client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    rec["errors"][f"http {r.status_code}"] += 1
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        rec["errors"]["stream error"] += 1
                        return
                    if first is None and data["choices"] and data["choices"][0]["text"]:
                        first = time.perf_counter() - t0
                    if data.get("usage"):
                        rec["tokens"] += data["usage"]["completion_tokens"]
            if first is not None:
                rec["ttft"].append(first)
        rec["latency"].append(time.perf_counter() - t0)
    except httpx.TimeoutException:
        rec["errors"]["timeout"] += 1
    except httpx.HTTPError as e:
        rec["errors"][type(e).__name__] += 1


async def run(url: str, args) -> dict:
    rec = {"latency": [], "ttft": [], "tokens": 0, "errors": Counter()}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients + 4)
    timeout = httpx.Timeout(args.duration + args.grace)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        stop_at = time.perf_counter() + args.duration
        counter = iter(range(10**9))

        async def client_loop() -> None:
            while time.perf_counter() < stop_at:
                await one_request(client, args, next(counter), rec)

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(client_loop()) for _ in range(args.clients)]
        done, pending = await asyncio.wait(tasks, timeout=args.duration + args.grace)
        for t in pending:  # bounded: whatever still runs after the grace period is dropped
            t.cancel()
            rec["errors"]["unfinished"] += 1
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
        try:
            server = (await client.get("/health")).json()
        except (httpx.HTTPError, ValueError):
            server = None
    n = len(rec["latency"])
    out = {
        "url": url,
        "clients": args.clients,
        "duration_s": args.duration,
        "max_tokens": args.max_tokens,
        "stream": args.stream,
        "seeded": args.seeded,
        "batching": args.batching if not args.url else "(server's)",
        "wall_s": round(wall, 2),
        "requests_ok": n,
        "errors": dict(rec["errors"]),
        "requests_per_s": round(n / wall, 3),
        "tokens_per_s": round(rec["tokens"] / wall, 1),
        "latency_s": {
            q: round(percentile(rec["latency"], p), 3)
            for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
    }
    if args.stream:
        out["ttft_s"] = {
            q: round(percentile(rec["ttft"], p), 3)
            for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        }
    if server:
        out["server"] = server.get("models")
    return out


def peak_rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def max_size_body(args) -> dict:
    """32 prompts x n=16 whose prompt + max_tokens fill the model's context."""
    import lmgen

    lm = lmgen.load((args.model or [None])[0])
    ids = lm.tokenizer.encode(" ".join(PROMPTS) * 20)[: lm.config.n_positions // 2]
    prompt = lm.tokenizer.decode(ids)
    length = len(lm.tokenizer.encode(prompt))
    return {
        "prompt": [prompt] * 32,
        "n": 16,
        "max_tokens": lm.config.n_positions - length,
        "ignore_eos": True,
        "temperature": 1.0,
    }


async def memory_probe(url: str, args, pid: int | None) -> dict:
    body = max_size_body(args)
    statuses: Counter = Counter()
    peak = [peak_rss_mib(pid) if pid else None]
    async with httpx.AsyncClient(base_url=url, timeout=args.duration) as client:

        async def one() -> None:
            try:
                r = await client.post("/v1/completions", json=body)
                statuses[str(r.status_code)] += 1
            except httpx.TimeoutException:
                statuses["timeout"] += 1
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1

        async def sample() -> None:
            while True:
                await asyncio.sleep(0.5)
                if pid:
                    peak.append(peak_rss_mib(pid))

        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.clients)))
        wall = time.perf_counter() - t0
        sampler.cancel()
        try:
            health = (await client.get("/health", timeout=5)).json()
        except (httpx.HTTPError, ValueError):
            health = None
    rows = len(body["prompt"]) * body["n"]
    return {
        "clients": args.clients,
        "rows_per_request": rows,
        "max_tokens": body["max_tokens"],
        "statuses": dict(statuses),
        "wall_s": round(wall, 1),
        "server_peak_rss_mib": max((p for p in peak if p), default=None),
        "server_memory": (health or {}).get("memory"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (loopback only); default: start one")
    p.add_argument("--model", action="append", help="model for the started server (repeatable)")
    p.add_argument("--model-name", help="the `model` field of the requests (default: the first)")
    p.add_argument(
        "--batching", choices=["on", "off"], default="on", help="the started server's --batching"
    )
    p.add_argument("--max-active", type=int, default=16, help="the started server's --max-active")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of sending requests")
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds allowed afterwards for requests in flight",
    )
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--seeded", action="store_true", help="give every request its own seed")
    p.add_argument("--api-key", default=os.environ.get("LMGEN_API_KEY"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--memory-probe",
        action="store_true",
        help="one maximum-size request per client; report the server's peak memory",
    )
    p.add_argument("--memory-budget", help="the started server's --memory-budget")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        p.error(f"--clients must be in [1, {MAX_CLIENTS}]")
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    if not 1 <= args.max_tokens <= MAX_TOKENS:
        p.error(f"--max-tokens must be in [1, {MAX_TOKENS}]")
    if not 0 <= args.grace <= 120:
        p.error("--grace must be in [0, 120]")
    if args.url and not loopback(args.url):
        p.error("--url must be a loopback address (127.0.0.1, ::1 or localhost)")

    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        if args.memory_probe:
            out = asyncio.run(memory_probe(url.rstrip("/"), args, proc.pid if proc else None))
            print(json.dumps(out))
            return 0
        out = asyncio.run(run(url.rstrip("/"), args))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    if args.json:
        print(json.dumps(out))
        return 0
    lat = out["latency_s"]
    print(
        f"{out['clients']} clients x {out['duration_s']:g} s, {out['max_tokens']} tokens/request"
        f"{', streaming' if args.stream else ''}, batching {out['batching']}"
    )
    print(f"  requests ok     {out['requests_ok']}   errors {out['errors'] or 0}")
    print(f"  throughput      {out['requests_per_s']:.2f} req/s   {out['tokens_per_s']:.1f} tok/s")
    print(f"  latency (s)     p50 {lat['p50']:.3f}   p95 {lat['p95']:.3f}   p99 {lat['p99']:.3f}")
    if args.stream:
        t = out["ttft_s"]
        print(f"  first token (s) p50 {t['p50']:.3f}   p95 {t['p95']:.3f}   p99 {t['p99']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
