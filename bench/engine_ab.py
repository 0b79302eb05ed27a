"""The running batch in process, no HTTP: `python -m bench.engine_ab [--rows 16,64] [--threads 1]
[--ttft 16,30,200] [--gguf FILE]`.

Three figures of issue 27, alternating in one process (medians of `--repeats` rounds):

- one client: `lm.generate` (one seeded sampled sequence) against the same request alone
  through `lmgen.server.engine.Engine`, tokens/s over `--tokens` new tokens (goal: >= 0.95x);
- a step of each of `--rows` (e.g. 16,64) against a step of 1: the engine's forward pass alone
  (`BatchForward`: the fused decode kernel and the head), and the whole step, while that many
  seeded requests decode; the rest of the step (each row's choice, text, scheduling, the
  caches) is printed as its share of the step;
- time to first token, for prompts of each `--ttft` length (token ids): `lm.generate` of one
  new token against the same request alone through the engine (its prompt in `prefill_chunk`
  chunks, each through the model's prefill path), from the request to its first token.

The model is the benchmark's random-weight shape (bench.benchmark.make_model) in float32, or
with `--gguf` a GGUF file as `lmgen.load` reads it (a quantized file keeps its ggml blocks),
e.g. SmolLM2-135M-Instruct.Q4_1.gguf from ~/.cache/lmgen/test-models.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import benchmark as B


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--shape", default="124m", choices=["14m", "124m"])
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rows", default="16", help="rows of the batched steps, e.g. 16,64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--ttft", default="", help="prompt lengths for time to first token, e.g. 16,200")
    p.add_argument("--gguf", default=None, help="a GGUF file instead of the random shape")
    args = p.parse_args(argv)
    counts = [int(r) for r in args.rows.split(",")]
    torch.set_num_threads(args.threads)
    from lmgen.generation_config import GenerationConfig
    from lmgen.server.engine import Engine
    from lmgen.server.work import GenerateJob, Stats

    if args.gguf:
        import lmgen

        lm, label = lmgen.load(args.gguf), Path(args.gguf).name
    else:
        model, _ = B.make_model(args.shape)
        lm = B.load_lmgen(B.save_hf_dir(model, Path(tempfile.mkdtemp()) / args.shape), "fp32")
        label = f"{args.shape} fp32"
    prompt = " ".join(str(i) for i in range(1, 17))
    N = args.tokens

    def config(seed: int) -> GenerationConfig:
        return GenerationConfig(strategy="sample", seed=seed, temperature=0.8,
                                max_new_tokens=N, ignore_eos=True)  # fmt: skip

    def generate() -> float:
        t = time.perf_counter()
        lm.generate(prompt, config(1))
        return N / (time.perf_counter() - t)

    forward_s: dict[int, list[float]] = {}

    def engine(rows: int) -> tuple[float, float]:
        """(tokens/s of the whole run, seconds per decode step) for `rows` requests."""
        e = Engine(lm, Stats())
        real = e.forward

        def timed(segments):
            t = time.perf_counter()
            out = real(segments)
            if all(len(s.tokens) == 1 for s in segments):  # decode steps only, no prefill
                forward_s.setdefault(len(segments), []).append(time.perf_counter() - t)
            return out

        e.forward = timed
        jobs = [GenerateJob([prompt], config(i + 1)) for i in range(rows)]
        t0 = time.perf_counter()
        for j in jobs:
            e.add(e.prepare(j))
        e.step()  # the prompts' prefill (and the first tokens)
        t1, s1 = time.perf_counter(), e.steps
        while not all(j.future.done() for j in jobs):
            e.step()
        t2 = time.perf_counter()
        return rows * N / (t2 - t0), (t2 - t1) / (e.steps - s1)

    generate(), engine(1), [engine(n) for n in counts]  # warm-up: kernels built, caches touched
    forward_s.clear()
    gen, one = [], []
    step: dict[int, list[float]] = {n: [] for n in [1, *counts]}
    for _ in range(args.repeats):
        gen.append(generate())
        rate, s = engine(1)
        one.append(rate)
        step[1].append(s)
        for n in counts:
            step[n].append(engine(n)[1])
    m = statistics.median
    print(f"{label}, {args.threads} thread(s), {N} new tokens, medians of {args.repeats}")
    print(f"one client: generate {m(gen):.1f} tok/s, engine {m(one):.1f} tok/s "
          f"({m(one) / m(gen):.2f}x)")  # fmt: skip
    f1 = m(forward_s[1])
    for n in [1, *counts]:
        f, s = m(forward_s[n]), m(step[n])
        print(f"{n} rows: step {s * 1e3:.1f} ms = forward pass {f * 1e3:.1f} ms "
              f"({f / f1:.2f}x one row's) + the rest {(s - f) * 1e3:.1f} ms ({(s - f) / s:.0%}); "
              f"{n / s:.0f} tok/s")  # fmt: skip
    for n in [int(t) for t in args.ttft.split(",") if t]:
        gen_ms, engine_ms = first_token_ms(lm, n, args.repeats)
        print(f"time to first token, {n}-token prompt: generate {gen_ms:.1f} ms, engine "
              f"{engine_ms:.1f} ms ({engine_ms / gen_ms:.2f}x)")  # fmt: skip
    return 0


def first_token_ms(lm, n: int, repeats: int) -> tuple[float, float]:
    """Medians (ms) of `lm.generate` of one new token and of the same greedy request alone
    through the engine, for a prompt of `n` token ids, alternated after a warm-up of each."""
    from lmgen.generation_config import GenerationConfig
    from lmgen.server.engine import Engine
    from lmgen.server.work import GenerateJob, Stats

    V = lm.config.vocab_size
    ids = [(37 * i + 11) % (V - 10) + 5 for i in range(n)]  # clear of the special ids at 0..4
    cfg = GenerationConfig(strategy="greedy", max_new_tokens=1, ignore_eos=True)

    def generate() -> float:
        t = time.perf_counter()
        lm.generate(ids, cfg)
        return time.perf_counter() - t

    def engine() -> float:
        e = Engine(lm, Stats())
        t = time.perf_counter()
        job = GenerateJob([ids], cfg)
        e.add(e.prepare(job))
        while not job.future.done():
            e.step()
        return time.perf_counter() - t

    generate(), engine()
    times: dict = {generate: [], engine: []}
    for _ in range(repeats):
        for f in times:
            times[f].append(f())
    return tuple(statistics.median(times[f]) * 1e3 for f in (generate, engine))


if __name__ == "__main__":
    raise SystemExit(main())
