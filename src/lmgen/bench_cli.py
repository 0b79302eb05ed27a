"""`lmgen bench`: the side-by-side benchmark against transformers (lmgen.benchmark)."""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    from .benchmark import build_arg_parser

    p = subparsers.add_parser(
        "bench",
        help="benchmark lmgen against transformers on the same weights",
        description="Alternating A/B speed runs (greedy, sampling, beam, batch 8, prefill, time "
        "to first token), memory-bandwidth fractions and peak RSS; writes docs/benchmarks.md. "
        "Needs transformers installed.",
    )
    build_arg_parser(p)
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from .benchmark import run_cli

    return run_cli(args)
