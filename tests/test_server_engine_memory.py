"""Memory stays bounded in the running batch: 64 requests of 512 new tokens each under a KV
budget smaller than they need together (the cache in use never exceeds it; preemption makes
up the difference), then many more requests without the process growing."""

from __future__ import annotations

import gc
import os

import pytest
import torch

import lmgen
from lmgen.generation_config import GenerationConfig
from lmgen.lm import LM
from lmgen.server.engine import Engine
from lmgen.server.work import GenerateJob, Stats
from lmgen.tokenizers import BPETokenizer

pytestmark = pytest.mark.slow


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def lm():
    tok = BPETokenizer.train(texts=["to be or not to be, that is the question. " * 20],
                             vocab_size=300)  # fmt: skip
    torch.manual_seed(0)
    cfg = lmgen.GPTConfig(vocab_size=tok.vocab_size, n_positions=640, n_embd=64, n_layer=2,
                          n_head=4)  # fmt: skip
    return LM(lmgen.GPT(cfg).eval(), tok)


def run(engine, jobs, bound=None) -> None:
    for j in jobs:
        engine.add(engine.prepare(j))
    while not all(j.future.done() for j in jobs):
        engine.step()
        if bound is not None:
            assert engine.kv_bytes_in_use() <= bound
    for j in jobs:
        j.future.result(0)


def test_64_clients_of_512_tokens_stay_within_the_kv_budget_and_memory_does_not_grow(lm):
    per_position = Engine(lm, Stats()).kv_position_bytes
    need = 64 * (6 + 512) * per_position  # every row at its longest
    bound = need // 2
    stats = Stats()
    engine = Engine(lm, stats, kv_cache_bytes=bound, kv_block=32)
    cfg = GenerationConfig(strategy="sample", seed=1, max_new_tokens=512, ignore_eos=True)
    base = rss_bytes()
    run(engine, [GenerateJob(["to be or not"], cfg.replace(seed=i)) for i in range(64)], bound)
    assert stats.preempted > 0 and stats.completed == 64
    # the process grew by less than the whole cache would take, plus room for allocator slack
    assert rss_bytes() - base < need + (64 << 20)
    # many more requests: no growth beyond noise
    short = GenerationConfig(strategy="sample", seed=2, max_new_tokens=8)
    run(engine, [GenerateJob(["to be"], short) for _ in range(64)])
    gc.collect()
    settled = rss_bytes()
    for _ in range(15):
        run(engine, [GenerateJob(["to be"], short.replace(seed=i)) for i in range(64)])
    gc.collect()
    assert rss_bytes() - settled < 16 << 20
    assert engine.kv_bytes_in_use() == 0 and not engine.running and not engine.waiting
