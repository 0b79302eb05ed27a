"""What prompt-lookup decoding buys, on a copy-heavy prompt and on free text:
`python -m bench.prompt_lookup [--model shakespeare] [--tokens 128] [--rounds 3] [--threads 2]`.

Greedy decoding of `--tokens` new tokens, plain and with `prompt_lookup_num_tokens` (8, n-grams
up to 2), alternated `--rounds` times; the runs must give the same tokens (the method is
lossless; the script stops if they differ). Reports the median generated tokens per second of
each, the speed-up, the share of proposals kept and the tokens per model pass. Prints a
Markdown table, or one JSON object with `--json`.

The copy-heavy prompt asks the model to repeat a passage of held-out Hamlet (a summary or a
code edit repeats its input in the same way); the free-text prompt is a speaker's name. Prompt
lookup pays where proposals are kept: each round runs the model over k + 1 positions, and
on free text, where few n-grams recur, that costs more than it saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lmgen
from lmgen.compare.passages import hamlet_text
from lmgen.decoding.speculative import SpeculativeStats


def prompts(lm, tokens: int) -> dict[str, str]:
    """copy-heavy: a passage, then the same passage begun again; free text: a speaker."""
    text = hamlet_text()
    ids = lm.tokenizer.encode(text[20000:30000])
    passage = lm.tokenizer.decode(ids[: tokens + 40])
    room = lm.config.n_positions - tokens - 8
    while len(lm.tokenizer.encode(passage)) * 2 > room:
        passage = passage[: int(len(passage) * 0.9)]
    start = passage[: len(passage) // 8]
    return {"copy-heavy": f"{passage}\n\n{start}", "free text": "HAMLET:\n"}


def timed(lm, prompt: str, tokens: int, **kw) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    out = lm.generate(prompt, max_new_tokens=tokens, ignore_eos=True, **kw)
    return time.perf_counter() - t0, out.token_ids


def run(model: str, tokens: int, rounds: int, k: int, ngram: int) -> dict:
    # float weights: a GGUF's quantized blocks take another kernel for one token than for
    # several, and their roundings can settle a near-tie differently (docs/decoding.md)
    lm = lmgen.load(model, quantize="none")
    rows = {}
    for name, prompt in prompts(lm, tokens).items():
        timed(lm, prompt, 8)  # warm-up
        plain_s, fast_s = [], []
        stats = SpeculativeStats()
        for _ in range(rounds):
            s, plain = timed(lm, prompt, tokens)
            plain_s.append(s)
            stats.reset()
            s, fast = timed(lm, prompt, tokens, prompt_lookup_num_tokens=k,
                            prompt_lookup_max_ngram=ngram, spec_stats=stats)  # fmt: skip
            fast_s.append(s)
            if fast != plain:
                raise SystemExit(f"{name}: prompt lookup changed the tokens (it must not)")
        plain_rate = len(plain) / statistics.median(plain_s)
        fast_rate = len(fast) / statistics.median(fast_s)
        rows[name] = {
            "prompt_tokens": len(lm.tokenizer.encode(prompt)),
            "new_tokens": len(plain),
            "plain_tok_s": plain_rate,
            "lookup_tok_s": fast_rate,
            "speedup": fast_rate / plain_rate,
            "acceptance": stats.acceptance,
            "tokens_per_pass": stats.tokens_per_round,
        }
    return {"model": model, "k": k, "max_ngram": ngram, "rounds": rounds,
            "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip


def markdown(result: dict) -> str:
    lines = [
        f"`{result['model']}`, greedy, prompt_lookup_num_tokens={result['k']}, n-grams up to "
        f"{result['max_ngram']}, median of {result['rounds']} rounds, "
        f"{result['threads']} threads",
        "",
        "| prompt | prompt tokens | plain tok/s | prompt lookup tok/s | speed-up | kept | "
        "tokens per pass |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['prompt_tokens']} | {r['plain_tok_s']:.1f} | "
            f"{r['lookup_tok_s']:.1f} | {r['speedup']:.2f}x | {r['acceptance']:.0%} | "
            f"{r['tokens_per_pass']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shakespeare", help="model directory, name or .gguf")
    p.add_argument("--tokens", type=int, default=128, help="new tokens per run (default 128)")
    p.add_argument("--rounds", type=int, default=3, help="alternated runs (default 3)")
    p.add_argument("--k", type=int, default=8, help="prompt_lookup_num_tokens (default 8)")
    p.add_argument("--ngram", type=int, default=2, help="prompt_lookup_max_ngram (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.model, args.tokens, args.rounds, args.k, args.ngram)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
