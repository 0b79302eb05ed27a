"""The choice of one engine step, per request against vectorised:
`python -m bench.row_sampler_ab [--vocab 50257] [--rows 16] [--threads 1]`.

16 rows with different settings (temperature, top-k, top-p, min-p, penalties, logit bias;
each row a request of its own) choose their next token from random logits:

- per request: each row's processor chain, its draw and its log-probabilities, as the
  stepper does (`SampleStepper.select`) when every group chooses in its own `step()`;
- vectorised: `lmgen.server.row_sampler.RowSampler.choose` over all the rows at once.

Both give the same bits (tests/test_row_sampler.py); this times them, alternating in one
process (each first in every other round), and prints the medians of `--repeats` rounds:
milliseconds per step, wall and the thread's CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def configs(rows: int) -> list:
    from lmgen.generation_config import GenerationConfig as S

    b = dict(strategy="sample", max_new_tokens=64)
    menu = [
        S(seed=1, temperature=0.8, min_p=0.05, **b),
        S(seed=2, temperature=1.3, top_k=12, min_p=0.02, **b),
        S(seed=3, top_p=0.85, repetition_penalty=1.3, **b),
        S(seed=4, temperature=0.7, top_k=40, top_p=0.9, presence_penalty=0.6, **b),
        S(seed=5, min_p=0.1, **b),
        S(strategy="greedy", repetition_penalty=1.4, max_new_tokens=64),
        S(strategy="greedy", logit_bias={5: 3.0}, max_new_tokens=64),
        S(seed=6, presence_penalty=0.8, frequency_penalty=0.5, **b),
        S(seed=7, temperature=1.1, frequency_penalty=1.0, top_p=0.7, **b),
        S(seed=8, logit_bias={5: 4.0, 17: -100.0}, top_k=20, **b),
        S(seed=9, temperature=0.6, top_k=8, top_p=0.95, min_p=0.05, **b),
        S(seed=10, repetition_penalty=0.8, temperature=1.5, **b),
        S(seed=11, temperature=0.9, **b),
        S(strategy="greedy", max_new_tokens=64),
        S(seed=12, top_k=5, logit_bias={0: -2.5}, repetition_penalty=1.1, **b),
        S(seed=13, temperature=2.0, top_p=0.5, min_p=0.2, frequency_penalty=-0.3, **b),
    ]
    return [menu[i % len(menu)] for i in range(rows)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.row_sampler_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--length", type=int, default=200, help="tokens so far in each row")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lmgen.decoding.processors import build_chain
    from lmgen.decoding.sampling import sample_from_logits
    from lmgen.server.row_sampler import RowPart, RowRule, RowSampler, row_blocks

    V, prompt = args.vocab, args.length // 2
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.rows, V, generator=g) * 3
    rows = []
    for k, c in enumerate(configs(args.rows)):
        chain = build_chain(c, prompt_length=prompt, eos_token_ids=[0])
        ids = torch.randint(0, V, (1, args.length), generator=g)
        rows.append((chain, c.effective_strategy() == "sample", ids, k))

    def per_request():
        for chain, sample, ids, k in rows:
            x = logits[k : k + 1]
            raw_logp = x.log_softmax(dim=-1)
            scores = chain(ids, x) if chain else x
            gens = [torch.Generator().manual_seed(k)]
            nxt = sample_from_logits(scores, gens) if sample else scores.argmax(dim=-1)
            raw_logp.gather(1, nxt[:, None])
            scores.log_softmax(dim=-1).gather(1, nxt[:, None])

    def vectorised():
        parts = [RowPart(RowRule.of(chain, sample, V), ids, [torch.Generator().manual_seed(k)])
                 for chain, sample, ids, k in rows]  # fmt: skip
        for a, b in row_blocks(parts, V, logits.device):
            RowSampler(parts[a:b]).choose(logits[a:b])  # one row a request here

    fns = [("per request", per_request), ("vectorised", vectorised)]
    wall: dict[str, list[float]] = {name: [] for name, _ in fns}
    cpu: dict[str, list[float]] = {name: [] for name, _ in fns}
    with torch.inference_mode():
        for i in range(args.repeats):
            for name, fn in fns if i % 2 else fns[::-1]:  # each first in every other round
                t, c = time.perf_counter(), time.thread_time()
                fn()
                cpu[name].append((time.thread_time() - c) * 1e3)
                wall[name].append((time.perf_counter() - t) * 1e3)
    print(f"{args.rows} rows, vocabulary {V}, {args.threads} thread(s), {args.repeats} rounds")
    for name, _ in fns:
        print(f"  {name:12s} {statistics.median(wall[name]):8.2f} ms per step, "
              f"{statistics.median(cpu[name]):8.2f} ms CPU time (medians)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
