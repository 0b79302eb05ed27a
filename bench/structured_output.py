"""What the structured-output mask costs a sampling step of the bundled model:
`python -m bench.structured_output [--tokens 128] [--rounds 7] [--threads 1]`.

Times a sampling session of up to `--tokens` steps with and without a constraint, alternating
the two runs `--rounds` times, and
reports the median per-step CPU times (process time: steadier than the wall clock on a shared
machine), their ratio, and the mask's own cost (a fresh processor called on the recorded
sequences, no model). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lmgen
from lmgen.decoding.grammar import StructuredOutput, constraint_of

# Constraints the bundled model is unlikely to finish within the run (each ends only after a
# rare string), so both runs take about as many steps; times are per step either way.
CONSTRAINTS = {
    "regex": {"regex": r"[a-z ,.;:!?'\n]*ZZZ"},
    "json_schema": {
        "json_schema": {
            "type": "object",
            "properties": {"speech": {"type": "string"}, "act": {"type": "integer"}},
            "required": ["speech", "act"],
        }
    },
    "grammar": {"grammar": 'start: (line "\\n")* "THE END"\nline: /[A-Za-z ,.;:!?\']+/\n'},
    # a bounded repetition: each count is a new lexer state, the costly case
    "regex_bounded": {"regex": "[a-z ,.]{2000}"},
}


def step_seconds(lm, tokens: int, **kwargs) -> tuple[float, lmgen.Session]:
    session = lmgen.Session(lm, "ROMEO:", strategy="sample", seed=1, max_new_tokens=tokens,
                            record=(), **kwargs)  # fmt: skip
    session.step()  # prefill and the first step outside the clock
    start = time.process_time()
    steps = 0
    while not session.done:
        session.step()
        steps += 1
    return (time.process_time() - start) / steps, session


def mask_seconds(session: lmgen.Session) -> float:
    """The constraint's processor alone, fresh (no state cached), over the session's tokens."""
    lm, (kind, value) = session.lm, constraint_of(session.config)
    width = len(session.prompt_token_ids[0])
    proc = StructuredOutput(kind, value, lm.tokenizer, lm.eos_token_ids, prompt_length=width)
    ids = torch.tensor([session.prompt_token_ids[0] + session.results()[0].choices[0].token_ids])
    logits = torch.zeros(1, lm.config.vocab_size)
    start = time.process_time()
    for end in range(width, ids.shape[1]):
        proc(ids[:, :end], logits)
    return (time.process_time() - start) / (ids.shape[1] - width)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.structured_output", description=__doc__)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = lmgen.load()
    out = {"model": lm.name, "tokens": args.tokens, "rounds": args.rounds,
           "threads": args.threads, "cases": {}}  # fmt: skip
    for name, constraint in CONSTRAINTS.items():
        plain, masked, own = [], [], []
        for _ in range(args.rounds):
            plain.append(step_seconds(lm, args.tokens, ignore_eos=True)[0])
            seconds, session = step_seconds(lm, args.tokens, **constraint)
            masked.append(seconds)
            own.append(mask_seconds(session))
        base, with_mask = statistics.median(plain), statistics.median(masked)
        out["cases"][name] = {
            "step_ms": round(base * 1e3, 3),
            "step_with_mask_ms": round(with_mask * 1e3, 3),
            "added_percent": round(100 * (with_mask / base - 1), 1),
            "mask_call_us": round(statistics.median(own) * 1e6, 1),
            "mask_call_percent_of_step": round(100 * statistics.median(own) / base, 1),
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
