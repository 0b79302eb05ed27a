"""CPU time per prompt token on one thread, a 512-token prompt in one forward (pp512), on the
quantized SmolLM2-135M files of the `smollm2q` rows: lmgen's block GEMM (lmgen.kernels.quant
`gemm`) against its former path (dequantize each weight, torch's float32 GEMM) and llama.cpp:
`LLAMA_BENCH=.../llama-bench python -m bench.quant_prefill [--kinds q4_0,q8_0] [--repeats 2]
[--files DIR]`.

For a machine other jobs load (see bench.quant_cputime): one thread's CPU time compares the
implementations' work per token where two threads' wall clock would measure the scheduler.
lmgen: `time.thread_time()` around `model(ids)` (512 random ids, as llama-bench draws them,
logits for every position as bench.prefill measures); llama.cpp: the children's user + system
time of `llama-bench -t 1 -p 512 -n 0 -r 3` less `-r 1` (its load and warm-up cancel out).
Tokens per CPU second, best of `--repeats`, the three sides alternated in each round.
`--files DIR` reuses DIR/q8_0.gguf, DIR/q4_0.gguf, DIR/q4_k.gguf from an earlier run of
bench.smollm2's `quant_files` (q4_1 is the test-model file itself).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import torch

PROMPT = 512


def lmgen_rate(model, gemm: bool) -> float:
    """Prompt tokens per CPU second of one forward over PROMPT tokens (one thread); `gemm`
    False: the products dequantize the weight and use torch's GEMM, as before quant_gemm.h."""
    from lmgen.kernels import quant

    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT),
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    saved = quant.has_gemm
    if not gemm:
        quant.has_gemm = lambda: False
    try:
        with torch.inference_mode():
            model(ids[:, :32])  # warm-up: buffers, the kernel's first call
            t0 = time.thread_time()
            model(ids)
            return PROMPT / (time.thread_time() - t0)
    finally:
        quant.has_gemm = saved


def llama_rate(bench: str, path: Path) -> float:
    """Prompt tokens per CPU second of llama-bench's pp test on one thread."""
    times = []
    for reps in (1, 3):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = [bench, "-m", str(path), "-t", "1", "-p", str(PROMPT), "-n", "0", "-r", str(reps)]
        subprocess.run(cmd, capture_output=True, check=True, timeout=900)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return 2 * PROMPT / (times[1] - times[0])


def files_for(args, path: Path) -> dict[str, Path | None]:
    from .smollm2 import quant_files

    if args.files:
        folder = Path(args.files)
        found = {k: folder / f"{k}.gguf" for k in ("q8_0", "q4_0", "q4_k")}
        return {"q4_1": path, **{k: (f if f.is_file() else None) for k, f in found.items()}}
    return {k: f for k, (f, _) in quant_files(path, Path(tempfile.mkdtemp())).items()}


def one_thread_files(
    prog: str, doc: str, argv
) -> tuple[argparse.ArgumentParser, object, dict, str]:
    """The options this and bench.quant_cputime share (--kinds, --repeats, --files,
    --smollm2-gguf), parsed; one torch thread; the files and llama-bench found (else a usage
    error): (parser, args, {kind: file or None}, llama-bench)."""
    from .llamacpp import find_llama_bench
    from .smollm2 import QUANT_KINDS, find_gguf

    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--kinds", default=",".join(QUANT_KINDS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--files", help="a folder with q8_0.gguf, q4_0.gguf, q4_k.gguf (as "
                   "bench.quant_prefill's doc says)")  # fmt: skip
    p.add_argument("--smollm2-gguf", help="the SmolLM2-135M Q4_1 file (default: test-model cache)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    path, bench = find_gguf(args.smollm2_gguf), find_llama_bench()
    if path is None or bench is None:
        p.error("needs the SmolLM2-135M Q4_1 GGUF and llama-bench ($LLAMA_BENCH)")
    return p, args, files_for(args, path), bench


def main(argv=None) -> int:
    import lmgen
    from lmgen.kernels import quant

    p, args, files, bench = one_thread_files("python -m bench.quant_prefill", __doc__, argv)
    if not quant.has_gemm():
        p.error(f"the block GEMM is not built here ({quant.integer_dot()} integer dots)")
    print(f"pp{PROMPT}, tokens per CPU second, one thread")
    print("| file | lmgen GEMM | lmgen dequantize + torch | llama.cpp | GEMM / llama.cpp |")
    print("|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        file = files.get(kind)
        if file is None:
            print(f"| {kind} | skipped: no file | | | |")
            continue
        model = lmgen.load(file).model
        best = {"gemm": 0.0, "float": 0.0, "llama": 0.0}
        for _ in range(args.repeats):
            best["gemm"] = max(best["gemm"], lmgen_rate(model, True))
            best["float"] = max(best["float"], lmgen_rate(model, False))
            best["llama"] = max(best["llama"], llama_rate(bench, file))
        print(f"| {kind} | {best['gemm']:.1f} | {best['float']:.1f} | {best['llama']:.1f} | "
              f"{best['gemm'] / best['llama']:.2f}x |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
