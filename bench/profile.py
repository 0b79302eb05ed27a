"""Where a decode step's time goes: `python -m bench.profile --shape 14m [--case greedy]`.

Profiles lmgen and transformers on the same weights (torch.profiler, CPU), prints the top
operators by self time and the number of operators per generated token.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench import benchmark as B


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--shape", default="14m", choices=B.SHAPES)
    p.add_argument("--dtype", default="fp32", choices=B.DTYPES)
    p.add_argument("--case", default="greedy", choices=("greedy", "sample", "beam", "batch8"))
    p.add_argument("--quantize", choices=("int8",), help="lmgen's int8 weight-only layers")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = B.make_model(args.shape)
    d = B.save_hf_dir(model, Path(tempfile.mkdtemp()) / args.shape)
    w = B.make_workload(model.config.vocab_size, model.config.n_positions, args.tokens, tok)
    runs = {
        "lmgen": B.lmgen_runner(B.load_lmgen(d, args.dtype, tok, args.quantize), args.case, w),
        "transformers": B.hf_runner(B.load_hf(d, args.dtype), args.case, w),
    }
    for name, fn in runs.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        ka = prof.key_averages()
        ops = sum(e.count for e in ka if e.key.startswith("aten::"))
        total = sum(e.self_cpu_time_total for e in ka) / 1e3
        print(
            f"\n== {name}: {args.shape} {args.dtype}{' int8' if args.quantize else ''} "
            f"{args.case}, {w.new_tokens} tokens: "
            f"{ops / w.new_tokens:.0f} aten ops and {total / w.new_tokens:.2f} ms (profiled) "
            "per token"
        )
        print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
