"""Serving benchmark: `python -m bench.serving [--models gpt2-124m,smollm2] [--clients 1,4,16,64]`.

`lmgen serve` (continuous batching) and llama.cpp's `llama-server -np N` (N slots, continuous
batching) serve the same GGUF file; N concurrent clients each send `--requests` streamed
completions one after another (the same token-id prompt, `--tokens` new tokens, temperature
0.8, a seed per request, ignore_eos: every request generates exactly `--tokens` tokens).
Per server and client count: aggregate tokens/s (all tokens over the wall time of the round),
time to first token and inter-token latency (gaps between streamed chunks) at p50 and p99.
For one client the table also shows `lmgen generate`'s single-stream speed on the same file
in this process, alternated with the one-client round seven times (the issue's goal: one client
at >= 0.95x of it).

Models: `gpt2-124m`, GPT-2's 124M shape with random weights and the bundled model's BPE
vocabulary, written as a float32 GGUF by `lmgen.gguf_export.write_gguf` (what `lmgen
export-gguf` writes); `smollm2`, the SmolLM2-135M-Instruct Q4_1 GGUF of the test-model cache
(bench/smollm2.py finds it): both sides decode its Q4_1 blocks as they are (lmgen's default
for a GGUF). Nothing is downloaded.

llama-server comes from $LLAMA_SERVER, a llama.cpp tree's build (`--llama-src` or
$LLAMACPP_SRC; `--build-llama-server` builds it there first), or PATH; without one its rows
are skipped. Results go to `--json` and, with `--markdown`, into the serving section of that
file (between the `<!-- serving -->` markers, replaced in place).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.llamacpp import build_llama_server, find_llama_server

BEGIN, END = "<!-- serving:begin -->", "<!-- serving:end -->"
SAMPLING = {"temperature": 0.8}
# both sides decode the file as it is: a quantized GGUF's blocks stay blocks in lmgen too (its
# running batch's fused step takes them), float weights stay float
PROMPT_LEN = 16


# -- the model files -----------------------------------------------------------------------------


def gpt2_124m_gguf(directory: Path) -> Path:
    """GPT-2 124M's shape, random weights (seed 0), the bundled model's BPE, float32 GGUF."""
    import torch

    import lmgen
    from bench import benchmark as B
    from lmgen.gguf_export import write_gguf

    path = directory / "gpt2-124m-f32.gguf"
    if not path.is_file():
        model, _ = B.make_model("124m")
        write_gguf(model, path, torch.float32, tokenizer=lmgen.load("shakespeare").tokenizer)
    return path


def smollm2_gguf() -> Path | None:
    from bench.smollm2 import find_gguf

    return find_gguf()


def prompt_ids(gguf: Path) -> list[int]:
    """PROMPT_LEN ids of ordinary text, as the file's own tokenizer reads it."""
    import lmgen

    lm = lmgen.load(str(gguf))
    text = "ROMEO:\nBut, soft! what light through yonder window breaks? It is the east, and"
    return lm.tokenizer.encode(text)[:PROMPT_LEN]


# -- the servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} was not ready within {timeout:g} s")


class Server:
    """A server process on a free port, stopped on exit."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.env = env

    def __enter__(self) -> Server:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(self.env or {})})  # fmt: skip
        try:
            wait_healthy(self.url, self.proc)
        except Exception:
            self.__exit__()
            raise
        return self

    def log_tail(self, chars: int = 300) -> str:
        """The end of the server's output (why it stopped, when it did)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:].strip()

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def lmgen_cmd(gguf: Path, threads: int) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "lmgen", "serve", "--model", f"m={gguf}", "--port", "{port}",
           "--max-batch", "64", "--max-active", "64", "--log-level", "warning"]  # fmt: skip
    return cmd, {"OMP_NUM_THREADS": str(threads)}


def llama_cmd(binary: str, gguf: Path, threads: int, slots: int, ctx: int) -> list[str]:
    return [binary, "-m", str(gguf), "--port", "{port}", "-t", str(threads), "-np", str(slots),
            "-c", str(slots * ctx), "--log-disable"]  # fmt: skip


# -- the clients ---------------------------------------------------------------------------------


async def one_request(session, url: str, prompt: list[int], tokens: int, seed: int) -> dict:
    body = {"model": "m", "prompt": prompt, "max_tokens": tokens, "seed": seed,
            "stream": True, "ignore_eos": True, **SAMPLING}  # fmt: skip
    t0 = time.perf_counter()
    stamps = []
    async with session.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {(await r.read())[:300]!r}")
        async for line in r.content:  # the stream's lines as they arrive
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            # a token's chunk: text, or none where the token decodes to nothing (the random
            # model's padded vocabulary) but the stream is not over
            if any(
                c.get("text") or c.get("finish_reason") is None for c in chunk.get("choices", [])
            ):
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError(f"{url}: a stream without tokens")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"ttft": stamps[0] - t0, "gaps": gaps, "tokens": tokens}


async def round_of(url: str, clients: int, requests: int, prompt, tokens: int) -> dict:
    import aiohttp

    # The clients share the server's cores (two here), so their own CPU time per streamed
    # token is taken from the server's: aiohttp's costs 0.22-0.25 ms a token where httpx's
    # cost 0.52-0.59 (SmolLM2, one client, measured per thread from /proc). A new connection
    # per request, for both servers: llama-server (cpp-httplib) closes a keep-alive
    # connection after a few requests, and a request sent on it as it closes failed
    # ("Server disconnected without sending a response") in one round of several runs.
    connector = aiohttp.TCPConnector(limit=clients + 4, force_close=True)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_client(c: int) -> list[dict]:
            return [
                await one_request(session, url, prompt, tokens, seed=1000 * c + k)
                for k in range(requests)
            ]

        t0 = time.perf_counter()
        results = await asyncio.gather(*[one_client(c) for c in range(clients)])
        wall = time.perf_counter() - t0
    done = [r for rs in results for r in rs]
    ttft = [r["ttft"] for r in done]
    gaps = [g for r in done for g in r["gaps"]]
    return {
        "clients": clients,
        "requests": len(done),
        "tokens": sum(r["tokens"] for r in done),
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in done) / wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(gaps, 50),
        "itl_p99": percentile(gaps, 99),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_rounds(url: str, counts: list[int], requests: int, prompt, tokens: int) -> list[dict]:
    asyncio.run(round_of(url, 1, 1, prompt, min(tokens, 8)))  # warm-up: kernels, first call
    rows = []
    for n in counts:
        row = asyncio.run(round_of(url, n, requests, prompt, tokens))
        print(f"   {n} clients: {row['tokens_per_s']:.1f} tok/s", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


class GenerateRate:
    """`lmgen generate`'s single-stream tokens/s on the file: the same request (token ids,
    seeded sampling, `tokens` new tokens) in this process, timed whole (its prefill included,
    as a client's round includes its time to first token)."""

    def __init__(self, gguf: Path, prompt: list[int], tokens: int, threads: int):
        import torch

        import lmgen

        torch.set_num_threads(threads)
        self.lm = lmgen.load(str(gguf))
        self.text = self.lm.tokenizer.decode(prompt)
        self.kw = dict(strategy="sample", max_new_tokens=tokens, ignore_eos=True, seed=1,
                       **SAMPLING)  # fmt: skip
        self.tokens = tokens
        self.lm.generate(self.text, **{**self.kw, "max_new_tokens": 8})  # warm-up

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.lm.generate(self.text, **self.kw)
        return self.tokens / (time.perf_counter() - t0)


def one_client_vs_generate(
    url: str, generate: GenerateRate, requests: int, prompt, tokens: int, repeats: int = 7
) -> tuple[dict, float, list[float]]:
    """The one-client round and `lmgen generate`, alternated `repeats` times while the server
    idles between rounds: (the round of median tokens/s, generate's median tokens/s, each
    round's tokens/s over the generate run beside it). The host's memory bandwidth drifts by
    tens of percent within minutes here, so the two are never measured apart, and the share
    the table reports is the median of these adjacent pairs' ratios, not a ratio of two
    medians taken minutes apart."""
    rounds, rates, ratios = [], [], []
    for i in range(repeats):
        for side in ("server", "generate") if i % 2 == 0 else ("generate", "server"):
            if side == "server":
                rounds.append(asyncio.run(round_of(url, 1, requests, prompt, tokens)))
            else:
                rates.append(generate())
        ratios.append(rounds[-1]["tokens_per_s"] / rates[-1])
    by_rate = sorted(rounds, key=lambda r: r["tokens_per_s"])
    row = dict(by_rate[len(by_rate) // 2], rounds=[r["tokens_per_s"] for r in rounds])
    print(f"   1 client: {row['tokens_per_s']:.1f} tok/s; generate {statistics.median(rates):.1f}"
          f"; pairs {statistics.median(ratios):.2f}x", file=sys.stderr, flush=True)  # fmt: skip
    return row, statistics.median(rates), ratios


# -- the report ----------------------------------------------------------------------------------


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        BEGIN,
        "## Serving: continuous batching against llama-server",
        "",
        f"`{report['command']}` on {m['cpu']} ({m['cores']} cores, {report['threads']} "
        f"threads each), {m['date']}. Each client streams {report['requests']} requests of "
        f"{report['tokens']} new tokens (temperature 0.8, a seed each, ignore_eos) after a "
        f"{PROMPT_LEN}-token prompt; llama-server runs with `-np` = clients and the file's "
        "weights as they are, and so does lmgen (a GGUF's blocks kept); a new connection per "
        "request. lmgen's one-client row is the median of its rounds alternated with `lmgen "
        "generate` in the benchmark's process; its share of generate's speed is the median "
        f"of each round over the generate run beside it. Raw results: `{report['json']}`.",
        "",
        "| model | clients | lmgen tok/s | llama-server tok/s | ratio | TTFT p50 / p99 ms "
        "(lmgen) | (llama) | ITL p50 / p99 ms (lmgen) | (llama) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in report["models"]:
        ours = {r["clients"]: r for r in model["lmgen"]}
        theirs = {r["clients"]: r for r in model.get("llama_server", [])}
        for n, r in ours.items():
            t = theirs.get(n)
            tps = f"{t['tokens_per_s']:.1f}" if t else "-"
            ratio = f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x" if t else "-"
            lines.append(
                f"| {model['name']} | {n} | {r['tokens_per_s']:.1f} | {tps} | {ratio} | "
                f"{_ms(r, 'ttft')} | {_ms(t, 'ttft')} | {_ms(r, 'itl')} | {_ms(t, 'itl')} |"
            )
        if model.get("generate_tps"):
            one = ours.get(1)
            share = ""
            if model.get("one_client_ratios"):  # adjacent pairs (one_client_vs_generate)
                share = f" (one client: {statistics.median(model['one_client_ratios']):.2f}x)"
            elif one:  # an earlier run's JSON
                share = f" (one client: {one['tokens_per_s'] / model['generate_tps']:.2f}x)"
            lines.append(
                f"| {model['name']} | `lmgen generate` | {model['generate_tps']:.1f}{share} "
                "| | | | | | |"
            )
        if model.get("note"):
            lines += ["", f"{model['name']}: {model['note']}", ""]
    if report.get("note"):
        lines += ["", report["note"]]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _ms(r: dict | None, what: str) -> str:
    if not r:
        return "-"
    return f"{r[what + '_p50'] * 1e3:.0f} / {r[what + '_p99'] * 1e3:.0f}"


def write_markdown(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--models", default="gpt2-124m,smollm2")
    p.add_argument("--clients", default="1,4,16,64", help="concurrent clients per round")
    p.add_argument("--requests", type=int, default=2, help="requests per client per round")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--llama-src", default=os.environ.get("LLAMACPP_SRC"),
                   help="a llama.cpp source tree whose build/bin has llama-server")  # fmt: skip
    p.add_argument("--build-llama-server", action="store_true",
                   help="build llama-server in --llama-src first")  # fmt: skip
    p.add_argument("--no-llama", action="store_true", help="lmgen only")
    p.add_argument("--json", default="docs/benchmarks-serving.json")
    p.add_argument("--markdown", default=None, help="e.g. docs/benchmarks.md")
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "lmgen-bench-serving"))
    p.add_argument("--note", default=None, help="a line under the table (e.g. the machine's load)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="no run: the table of an earlier run's JSON (to --markdown)")  # fmt: skip
    args = p.parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        if args.note:
            report["note"] = args.note
        section = to_markdown(report)
        print(section)
        if args.markdown:
            write_markdown(Path(args.markdown), section)
        return 0
    counts = [int(c) for c in args.clients.split(",")]
    if min(counts) < 1 or args.requests < 1 or args.tokens < 1:
        p.error("--clients, --requests and --tokens must be >= 1")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    binary = None
    if not args.no_llama:
        if args.build_llama_server:
            if not args.llama_src:
                p.error("--build-llama-server needs --llama-src (or $LLAMACPP_SRC)")
            binary = build_llama_server(args.llama_src)
        binary = binary or find_llama_server(args.llama_src)
    from bench.benchmark import machine_info

    given = argv if argv is not None else sys.argv[1:]
    report = {
        "command": "python -m bench.serving " + " ".join(given),
        "machine": machine_info(),
        "threads": args.threads,
        "requests": args.requests,
        "tokens": args.tokens,
        "json": args.json,
        "llama_server": binary,
        "note": args.note,
        "models": [],
    }
    import aiohttp

    for name in args.models.split(","):
        gguf = gpt2_124m_gguf(work) if name == "gpt2-124m" else smollm2_gguf()
        entry: dict = {"name": name, "gguf": str(gguf) if gguf else None}
        report["models"].append(entry)
        if gguf is None:
            entry["note"] = "skipped: the GGUF file is not in the test-model cache"
            entry["lmgen"] = []
            continue
        prompt = prompt_ids(gguf)
        ctx = PROMPT_LEN + args.tokens + 8
        print(f"{name}: lmgen serve", file=sys.stderr, flush=True)
        cmd, env = lmgen_cmd(gguf, args.threads)
        generate = GenerateRate(gguf, prompt, args.tokens, args.threads) if 1 in counts else None
        with Server(cmd, env) as s:
            rest = [n for n in counts if n != 1]
            entry["lmgen"] = run_rounds(s.url, rest, args.requests, prompt, args.tokens)
            if generate is not None:
                one, entry["generate_tps"], entry["one_client_ratios"] = one_client_vs_generate(
                    s.url, generate, args.requests, prompt, args.tokens
                )
                entry["lmgen"].insert(0, one)
        del generate
        if binary is None:
            entry["note"] = "llama-server not found: its rows are skipped"
            continue
        entry["llama_server"] = []
        for n in counts:
            print(f"{name}: llama-server -np {n}", file=sys.stderr, flush=True)
            with Server(llama_cmd(binary, gguf, args.threads, n, ctx)) as s:
                try:
                    entry["llama_server"] += run_rounds(s.url, [n], args.requests, prompt,
                                                        args.tokens)  # fmt: skip
                except aiohttp.ClientError as e:  # a measurement: report the failure, go on
                    why = f"llama-server -np {n} failed ({type(e).__name__}: {e}; exit code "
                    why += f"{s.proc.poll()}; its last output: {s.log_tail()!r})"
                    entry["note"] = "; ".join(filter(None, [entry.get("note"), why]))
                    print(f"   {why}", file=sys.stderr, flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    section = to_markdown(report)
    print(section)
    if args.markdown:
        write_markdown(Path(args.markdown), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
