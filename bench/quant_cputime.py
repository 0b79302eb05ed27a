"""CPU time per decode token on one thread, lmgen (fused step and op by op) against llama.cpp,
on the quantized SmolLM2-135M files of the `smollm2q` rows:
`LLAMA_BENCH=.../llama-bench python -m bench.quant_cputime [--kinds q4_1,q8_0] [--repeats 2]`.

For a machine that other jobs load: there two-thread wall-clock rows measure the scheduler
(each side's threads wait on a descheduled partner), while one thread's CPU time still compares
the two implementations' work per token. lmgen: `time.thread_time()` around 80 and 16 greedy
steps after a 4-token prompt; llama.cpp: the children's user + system time of `llama-bench -t 1
-p 0 -n 80` and `-n 16` (its model load cancels out); tokens per CPU second = 64 / difference,
best of `--repeats`, the sides alternated. For a file with Q4_0 weights, a fourth column:
the fused step with Q4_0 held as the file lays it out (`QuantLinear.INTERLEAVE` off), against
the interleaved layout lmgen holds by default.
"""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import torch

STEPS = (16, 80)


def lmgen_rate(model, fused: bool) -> float:
    """Tokens per CPU second of lmgen's greedy decode steps (one thread)."""
    import lmgen.model as M

    times = []
    saved = M.plan.FUSED_DECODE_STEP
    M.plan.FUSED_DECODE_STEP = fused
    try:
        for n in STEPS:
            with torch.inference_mode():
                cache = model.new_cache(1, 4 + n + 1)
                model(torch.tensor([[1, 2, 3, 4]]), cache=cache)
                tok = torch.tensor([[42]])
                t0 = time.thread_time()
                for _ in range(n):
                    tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
                times.append(time.thread_time() - t0)
    finally:
        M.plan.FUSED_DECODE_STEP = saved
    return (STEPS[1] - STEPS[0]) / (times[1] - times[0])


def llama_rate(bench: str, path: Path) -> float:
    """Tokens per CPU second of llama-bench's tg test on one thread."""
    times = []
    for n in STEPS:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([bench, "-m", str(path), "-t", "1", "-p", "0", "-n", str(n), "-r", "1"],
                       capture_output=True, check=True, timeout=600)  # fmt: skip
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return (STEPS[1] - STEPS[0]) / (times[1] - times[0])


def main(argv=None) -> int:
    import lmgen
    from lmgen.quantize import QuantLinear

    from .quant_prefill import one_thread_files

    _, args, files, bench = one_thread_files("python -m bench.quant_cputime", __doc__, argv)
    print("| file | lmgen fused | lmgen op by op | lmgen fused, Q4_0 as in the file | "
          "llama.cpp | fused / llama.cpp |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        file = files.get(kind)
        if file is None:
            print(f"| {kind} | skipped: no file | | | | |")
            continue
        model = lmgen.load(file).model
        plain = None  # Q4_0 not interleaved (QuantLinear.INTERLEAVE off): the A/B of that layout
        if any("Q4_0x8" in getattr(m, "kinds", ()) for m in model.modules()):
            QuantLinear.INTERLEAVE = False
            try:
                plain = lmgen.load(file).model
            finally:
                QuantLinear.INTERLEAVE = True
        best = {"fused": 0.0, "op": 0.0, "file": 0.0, "llama": 0.0}
        for _ in range(args.repeats):
            best["fused"] = max(best["fused"], lmgen_rate(model, True))
            best["op"] = max(best["op"], lmgen_rate(model, False))
            if plain is not None:
                best["file"] = max(best["file"], lmgen_rate(plain, True))
            best["llama"] = max(best["llama"], llama_rate(bench, file))
        file_col = f"{best['file']:.1f}" if plain is not None else "-"
        ratio = best["fused"] / best["llama"]
        print(f"| {kind} | {best['fused']:.1f} | {best['op']:.1f} | {file_col} | "
              f"{best['llama']:.1f} | {ratio:.2f}x |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
