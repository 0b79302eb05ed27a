"""The running batch in process, no HTTP: `python -m bench.engine_ab [--shape 124m] [--threads 1]`.

Two figures of issue 27, alternating in one process (medians of `--repeats` rounds):

- one client: `lm.generate` (one seeded sampled sequence) against the same request alone
  through `lmgen.server.engine.Engine`, tokens/s over `--tokens` new tokens (goal: >= 0.95x);
- a step of 16 rows against a step of 1: the engine's forward pass alone (`BatchForward`), and
  the whole step (with each row's choice), while 16 (or 1) seeded requests decode
  (goal for the forward pass: <= 1.5x).

The model is the benchmark's random-weight shape (bench.benchmark.make_model) in float32.
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
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lmgen.generation_config import GenerationConfig
    from lmgen.server.engine import Engine
    from lmgen.server.work import GenerateJob, Stats

    model, _ = B.make_model(args.shape)
    lm = B.load_lmgen(B.save_hf_dir(model, Path(tempfile.mkdtemp()) / args.shape), "fp32")
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

    generate(), engine(1), engine(args.rows)  # warm-up: kernels built, caches touched
    forward_s.clear()
    gen, one, step1, stepn = [], [], [], []
    for _ in range(args.repeats):
        gen.append(generate())
        rate, s = engine(1)
        one.append(rate)
        step1.append(s)
        stepn.append(engine(args.rows)[1])
    m = statistics.median
    f1 = m(forward_s[1])
    fn = m(forward_s[args.rows])
    print(f"{args.shape} fp32, {args.threads} thread(s), {N} new tokens, medians of {args.repeats}")
    print(f"one client: generate {m(gen):.1f} tok/s, engine {m(one):.1f} tok/s "
          f"({m(one) / m(gen):.2f}x)")  # fmt: skip
    print(f"forward pass: 1 row {f1 * 1e3:.1f} ms, {args.rows} rows {fn * 1e3:.1f} ms "
          f"({fn / f1:.2f}x)")  # fmt: skip
    print(f"whole step: 1 row {m(step1) * 1e3:.1f} ms, {args.rows} rows {m(stepn) * 1e3:.1f} ms "
          f"({m(stepn) / m(step1):.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
