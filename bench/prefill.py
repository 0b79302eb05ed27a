"""Prompt processing (prefill) rates: lmgen's forward over an n-token prompt against
llama-bench's pp test (`-p n -n 0`) on the same weights.

lmgen's side is one `model(ids, cache=..., logits_to_keep=1)` call on a fresh KV cache (made
before the clock starts, as llama-bench makes its context before timing), ids drawn at random
from the vocabulary as llama-bench's are, the best of `repeats` after a warm-up; llama-bench
reports its mean. Both sides do the same work: the keys and values of every position written
to a cache, and the logits of the last position only (llama-bench's batch asks for the last
token's output alone, as generation does; lmgen's `generate` prefills with
`logits_to_keep=1`).
"""

from __future__ import annotations

import json
import subprocess
import time

import torch

PROMPT_TOKENS = 512


def lmgen_prompt_rate(model, n: int = PROMPT_TOKENS, repeats: int = 3) -> float:
    """Tokens/s of one forward over an `n`-token prompt (best of `repeats`, after a warm-up)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)
    best = float("inf")
    with torch.inference_mode():
        model(ids, cache=model.new_cache(1, n), logits_to_keep=1)  # warm-up (oneDNN's kernels)
        for _ in range(repeats):
            cache = model.new_cache(1, n)
            t0 = time.perf_counter()
            model(ids, cache=cache, logits_to_keep=1)
            best = min(best, time.perf_counter() - t0)
    return n / best


def llama_prompt_rate(
    binary: str, path, threads: int, n: int = PROMPT_TOKENS, repeats: int = 2, timeout=900
) -> float:
    """llama-bench's pp rate (`-p n -n 0`, the mean over `repeats`)."""
    cmd = [binary, "-m", str(path), "-p", str(n), "-n", "0", "-t", str(threads),
           "-r", str(repeats), "-o", "json"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-500:]}")
    return float(json.loads(p.stdout)[0]["avg_ts"])


def prefill_row(label: str, precision: str, gguf: str, model, path, args, binary) -> dict:
    """One pp row: lmgen's rate with `model`, llama-bench's on the GGUF `path` (kind
    "prefill"; a side that cannot run is NaN with the reason in the note)."""
    row = {"what": f"pp{PROMPT_TOKENS}", "kind": "prefill", "model": label, "dtype": precision,
           "gguf": gguf, "plain": float("nan"), "optimised": float("nan")}  # fmt: skip
    notes = []
    try:
        row["plain"] = lmgen_prompt_rate(model, repeats=max(1, args.repeats))
    except Exception as e:  # a measurement: report, never fail the run
        notes.append(f"lmgen failed: {type(e).__name__}: {str(e)[:120]}")
    if binary is None:
        notes.append("llama.cpp not measured: no llama-bench ($LLAMA_BENCH)")
    else:
        try:
            row["optimised"] = llama_prompt_rate(binary, path, args.threads)
        except Exception as e:
            notes.append(f"llama.cpp failed: {type(e).__name__}: {str(e)[:120]}")
    notes.append(
        f"a {PROMPT_TOKENS}-token prompt, one forward into a KV cache, the last position's "
        f"logits (lmgen: best of {max(1, args.repeats)}; "
        f"llama-bench -p {PROMPT_TOKENS} -n 0 -t {args.threads}, mean of 2)"
    )
    row["note"] = "; ".join(notes)
    return row
