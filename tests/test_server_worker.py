"""The model worker without HTTP: turn-taking, the running batch (tests/test_server_engine.py
tests the engine itself), cancellation and errors."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

import lmgen
from lmgen.generation import generate
from lmgen.generation_config import GenerationConfig
from lmgen.server.worker import (
    CallJob,
    Cancelled,
    GenerateJob,
    ModelWorker,
    release_openmp_pool,
    session_steps,
)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from lmgen.lm import LM
    from lmgen.tokenizers import BPETokenizer

    tok = BPETokenizer.train(
        texts=["To be, or not to be: that is the question."] * 20, vocab_size=280
    )
    torch.manual_seed(1)
    cfg = lmgen.GPTConfig(
        vocab_size=tok.vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    path = tmp_path_factory.mktemp("worker") / "m"
    LM(lmgen.GPT(cfg), tok).save(path)
    return lmgen.load(path)


def _wait(job, timeout=30):
    return job.future.result(timeout)


def test_session_steps_equal_generate_and_stream(lm):
    config = GenerationConfig(
        strategy="sample", seed=3, max_new_tokens=12, num_return_sequences=2, stop=["e"]
    )
    events = []
    steps = session_steps(lm, ["To be", "or not"], config, lambda *e: events.append(e))
    n_steps = 0
    try:
        while True:
            next(steps)
            n_steps += 1
    except StopIteration as stop:
        results = stop.value
    ref = generate(lm, ["To be", "or not"], config)
    assert [c.text for r in results for c in r.choices] == [c.text for r in ref for c in r.choices]
    texts = ["", "", "", ""]
    for kind, i, *rest in events:
        if kind == "delta":
            texts[i] += rest[0]
    assert texts == [c.text for r in ref for c in r.choices]
    assert sorted(i for kind, i, *_ in events if kind == "finish") == [0, 1, 2, 3]
    assert n_steps >= 1


def test_batching_runs_waiting_requests_in_one_batch(lm):
    """Requests waiting together, seeded or not, with different settings, share the running
    batch's steps; a seeded one still gives exactly the text of generate()."""
    worker = ModelWorker(lm, batching=True)
    try:
        blocker = worker.submit(CallJob(lambda _: time.sleep(0.3)))
        cfg = GenerationConfig(strategy="sample", max_new_tokens=6, ignore_eos=True)
        jobs = [worker.submit(GenerateJob([p], cfg)) for p in ("To", "To be", "or not to")]
        seeded = worker.submit(GenerateJob(["To"], cfg.replace(seed=4, top_k=5)))
        _wait(blocker)
        outs = [_wait(j) for j in jobs]
        assert worker.stats.merged_jobs == 4 and worker.engine.max_rows_seen == 4
        for (results, _), p in zip(outs, ("To", "To be", "or not to"), strict=True):
            assert results[0].prompt == p and len(results[0].token_ids) == 6
        (alone,), _ = _wait(seeded)
        assert alone.text == generate(lm, "To", cfg.replace(seed=4, top_k=5)).text
    finally:
        worker.close()


def test_turns_cancel_and_errors(lm):
    worker = ModelWorker(lm, batching=False, max_active=2, max_waiting=2)
    try:
        cfg = GenerationConfig(strategy="greedy", max_new_tokens=60, ignore_eos=True)
        long = worker.submit(GenerateJob(["To"], cfg))
        bad = worker.submit(GenerateJob(["To"], cfg.replace(max_new_tokens=500)))  # > context
        with pytest.raises(lmgen.GenerationError):
            _wait(bad)
        short = worker.submit(GenerateJob(["To"], cfg.replace(max_new_tokens=2)))
        _wait(short)
        assert not long.future.done()  # one step each in turn: the short one overtook
        long.cancel()
        with pytest.raises(Cancelled):
            _wait(long)
        assert worker.stats.cancelled == 1 and worker.stats.failed == 1
        assert worker.load() == {"active": 0, "waiting": 0}
    finally:
        worker.close()


def test_the_worker_releases_its_creators_openmp_team_before_it_starts(lm, monkeypatch):
    """ModelWorker's constructor calls `release_openmp_pool` on its creating thread, before
    the worker thread exists (so that the worker's team is the only one)."""
    from lmgen.server import worker as worker_module

    def workers() -> int:
        return sum(t.name.startswith("lmgen-worker[") for t in threading.enumerate())

    calls = []
    real = worker_module.release_openmp_pool

    def recording() -> bool:
        calls.append((threading.current_thread(), workers()))
        return real()

    monkeypatch.setattr(worker_module, "release_openmp_pool", recording)
    before = workers()
    worker = ModelWorker(lm)
    try:
        assert calls == [(threading.current_thread(), before)]  # on the caller, before the start
        assert workers() == before + 1
    finally:
        worker.close()


def test_release_openmp_pool_ends_the_calling_threads_openmp_team():
    """`release_openmp_pool` ends the calling thread's OpenMP threads, so that the worker's
    own team is not throttled by them: the process has fewer threads after it."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("no /proc here")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.randn(1 << 22).mul(2).sum()  # a parallel region: an OpenMP team on this thread
        before = len(os.listdir("/proc/self/task"))
        if not release_openmp_pool():
            pytest.skip("torch does not run on GNU OpenMP here")
        deadline = time.monotonic() + 5
        while len(os.listdir("/proc/self/task")) >= before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(os.listdir("/proc/self/task")) < before
    finally:
        torch.set_num_threads(threads)
