"""What prompt-lookup decoding buys, on a copy-heavy prompt and on free text:
`python -m bench.prompt_lookup [--model shakespeare] [--tokens 128] [--rounds 3] [--threads 2]`;
with `--draft DRAFT`, also what a draft model buys on the same prompts (speculative decoding,
or universal assisted decoding where the draft's tokenizer differs from the model's).

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
from lmgen.decoding.speculative import SpeculativeStats, same_tokenizer


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


def run(model: str, tokens: int, rounds: int, k: int, ngram: int, draft: str | None = None) -> dict:
    # float weights: a GGUF's quantized blocks take another kernel for one token than for
    # several, and their roundings can settle a near-tie differently (docs/decoding.md)
    lm = lmgen.load(model, quantize="none")
    methods = {"prompt lookup": dict(prompt_lookup_num_tokens=k, prompt_lookup_max_ngram=ngram)}
    if draft is not None:
        draft_lm = lmgen.load(draft, quantize="none")
        same = same_tokenizer(lm.tokenizer, draft_lm.tokenizer)
        methods["speculative" if same else "universal assisted"] = dict(draft=draft_lm)
    rows = []
    for name, prompt in prompts(lm, tokens).items():
        timed(lm, prompt, 8)  # warm-up
        for method, options in methods.items():
            timed(lm, prompt, 8, **options)
            plain_s, fast_s = [], []
            stats = SpeculativeStats()
            for _ in range(rounds):
                s, plain = timed(lm, prompt, tokens)
                plain_s.append(s)
                stats.reset()
                s, fast = timed(lm, prompt, tokens, spec_stats=stats, **options)
                fast_s.append(s)
                if fast != plain:
                    raise SystemExit(f"{name}: {method} changed the tokens (it must not)")
            plain_rate = len(plain) / statistics.median(plain_s)
            fast_rate = len(fast) / statistics.median(fast_s)
            rows.append({
                "prompt": name,
                "method": method,
                "prompt_tokens": len(lm.tokenizer.encode(prompt)),
                "new_tokens": len(plain),
                "plain_tok_s": plain_rate,
                "method_tok_s": fast_rate,
                "speedup": fast_rate / plain_rate,
                "acceptance": stats.acceptance,
                "tokens_per_pass": stats.tokens_per_round,
            })  # fmt: skip
    return {"model": model, "draft": draft, "k": k, "max_ngram": ngram, "rounds": rounds,
            "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip


def markdown(result: dict) -> str:
    draft = f", draft `{result['draft']}`" if result["draft"] else ""
    lines = [
        f"`{result['model']}`{draft}, greedy, prompt_lookup_num_tokens={result['k']}, n-grams "
        f"up to {result['max_ngram']}, median of {result['rounds']} rounds, "
        f"{result['threads']} threads",
        "",
        "| prompt | method | prompt tokens | plain tok/s | method tok/s | speed-up | kept | "
        "tokens per pass |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['prompt']} | {r['method']} | {r['prompt_tokens']} | {r['plain_tok_s']:.1f} | "
            f"{r['method_tok_s']:.1f} | {r['speedup']:.2f}x | {r['acceptance']:.0%} | "
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
    p.add_argument("--draft", default=None, help="a draft model (directory, name or .gguf)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.model, args.tokens, args.rounds, args.k, args.ngram, args.draft)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
