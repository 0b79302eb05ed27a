"""What lmgen's decode kernels buy: `python -m bench.kernels_ab [--shapes 14m,124m]`.

Greedy decoding of the benchmark's workload with three settings of the same loaded model,
alternating in one process (ABC, CBA, ...): torch's products only (`lmgen.kernels` off), the
kernel's products and attention called op by op (`FUSED_DECODE_STEP` off), and the fused
step. Prints tokens/s (medians) and whether the tokens equal the first setting's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench import benchmark as B


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels_ab", description=__doc__)
    p.add_argument("--shapes", default="14m,124m")
    p.add_argument("--precisions", default="fp32,bf16,fp16,int8")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import lmgen.model as M
    from lmgen import kernels

    real_available = kernels.available
    settings = {
        "torch ops": (lambda: False, False),
        "kernels, op by op": (real_available, False),
        "fused step": (real_available, True),
    }

    def use(name):
        kernels.available, M.plan.FUSED_DECODE_STEP = settings[name]

    print("| model | precision | " + " | ".join(settings) + " | tokens equal |")
    print("|---|---|" + "---|" * len(settings) + "---|")
    for shape in args.shapes.split(","):
        model, tok = B.make_model(shape)
        d = B.save_hf_dir(model, Path(tempfile.mkdtemp()) / shape)
        w = B.make_workload(model.config.vocab_size, model.config.n_positions, args.tokens, tok)
        for precision in args.precisions.split(","):
            dtype, quantize = ("fp32", "int8") if precision == "int8" else (precision, None)
            lm = B.load_lmgen(d, dtype, tok, quantize)
            greedy = B.lmgen_runner(lm, "greedy", w)
            tokens, fns = {}, {}
            for name in settings:
                use(name)
                tokens[name] = greedy()

                def run(name=name, greedy=greedy):
                    use(name)
                    return greedy()

                fns[name] = run
            times = B.alternate(fns, args.repeats)
            rates = [f"{w.new_tokens / statistics.median(times[n]):.1f}" for n in settings]
            first = tokens["torch ops"]
            same = ", ".join(B.compare(first, tokens[n]) for n in list(settings)[1:])
            print(f"| {shape} | {precision} | " + " | ".join(rates) + f" | {same} |", flush=True)
    use("fused step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
