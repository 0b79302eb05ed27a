"""The running batch (lmgen.server.engine) without HTTP. The oracle throughout is the same
request run alone through the engine: tokens and log-probabilities must be bitwise equal
whoever else shares its steps, when it joins, where its rows sit, and how its prompt's prefill
is interleaved with the others' decoding."""

from __future__ import annotations

import time

import pytest
import torch

import lmgen
from lmgen.generation import generate
from lmgen.generation_config import GenerationConfig
from lmgen.kernels import quant
from lmgen.quantize import GEMV_ROWS, QuantLinear
from lmgen.server.engine import BLOCK, Engine, RowLinear
from lmgen.server.worker import CallJob, Cancelled, GenerateJob, ModelWorker, Stats


@pytest.fixture(scope="module")
def lm():
    return lmgen.load("shakespeare")


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a machine whose cores are shared, OpenMP's fork/join can make each
    product take milliseconds (results are the same with any number of threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPTS = [
    "ROMEO:",
    "JULIET:\nO Romeo, Romeo!",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "To be, or not to be",
]


def mixed_configs() -> list[GenerationConfig]:
    """16 requests with different settings: seeded sampling with its own temperature, top-k,
    top-p, min-p, penalties, logit bias; greedy; a stop string; n=2; logprobs; DRY; a regex."""
    S = GenerationConfig
    base = dict(max_new_tokens=16)
    return [
        S(strategy="sample", seed=1, temperature=0.8, **base),
        S(strategy="sample", seed=2, temperature=1.3, top_k=12, **base),
        S(strategy="sample", seed=3, top_p=0.85, **base),
        S(strategy="sample", seed=4, temperature=0.7, top_k=40, top_p=0.9, **base),
        S(strategy="sample", seed=5, min_p=0.08, **base),
        S(strategy="greedy", **base),
        S(strategy="greedy", repetition_penalty=1.4, **base),
        S(strategy="sample", seed=6, presence_penalty=0.8, frequency_penalty=0.5, **base),
        S(strategy="sample", seed=7, stop=["e"], **base),
        S(strategy="sample", seed=8, num_return_sequences=2, **base),
        S(strategy="sample", seed=9, logprobs=3, **base),
        S(strategy="sample", seed=10, logit_bias={5: 4.0, 17: -100.0}, **base),
        S(strategy="sample", seed=11, dry_multiplier=0.8, **base),
        S(strategy="sample", seed=12, regex="[a-z ]+", **base),
        S(strategy="sample", seed=13, temperature=0.9, ignore_eos=True, min_new_tokens=5, **base),
        S(strategy="sample", seed=14, typical_p=0.9, **base),
    ]


def job(config: GenerationConfig, i: int, prompts=None) -> GenerateJob:
    return GenerateJob(prompts or [PROMPTS[i % len(PROMPTS)]], config)


def outputs(result) -> list:
    results, _ = result
    return [(c.token_ids, c.logprobs, c.processed_logprobs, c.top_logprobs, c.finish_reason)
            for r in results for c in r.choices]  # fmt: skip


def drive(engine: Engine, jobs: list[GenerateJob], limit: int = 2000) -> int:
    """Steps the engine until every job is done; returns the steps taken."""
    for _ in range(limit):
        if all(j.future.done() for j in jobs):
            return engine.steps
        engine.step()
    raise AssertionError("the engine did not finish")


def alone(lm, config, i, prompts=None, **options) -> list:
    engine = Engine(lm, Stats(), **options)
    j = job(config, i, prompts)
    engine.add(engine.prepare(j))
    drive(engine, [j])
    return outputs(j.future.result())


def test_mixed_requests_equal_each_alone(lm):
    configs = mixed_configs()
    refs = [alone(lm, c, i) for i, c in enumerate(configs)]
    engine = Engine(lm, Stats())
    jobs = [job(c, i) for i, c in enumerate(configs)]
    for j in jobs:
        engine.add(engine.prepare(j))
    drive(engine, jobs)
    assert engine.max_rows_seen >= 16  # they really shared steps
    for i, (j, ref) in enumerate(zip(jobs, refs, strict=True)):
        assert outputs(j.future.result()) == ref, f"request {i} changed in the batch"
    # and each is what lmgen.generate gives (tokens; logits differ by float rounding only)
    for i in (0, 5, 8, 9):
        (result,), _ = jobs[i].future.result()
        ref = generate(lm, PROMPTS[i % len(PROMPTS)], configs[i])
        assert [c.token_ids for c in result.choices] == [c.token_ids for c in ref.choices]
        for a, b in zip(result.choices, ref.choices, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_requests_joining_and_leaving_midway(lm):
    configs = mixed_configs()
    refs = [alone(lm, c, i) for i, c in enumerate(configs[:8])]
    engine = Engine(lm, Stats())
    jobs = [job(c, i) for i, c in enumerate(configs[:8])]
    for k, j in enumerate(jobs):  # one joins every third step, in reverse order of place
        engine.add(engine.prepare(j))
        for _ in range(3 if k % 2 else 1):
            engine.step()
    drive(engine, jobs)
    for j, ref in zip(jobs, refs, strict=True):
        assert outputs(j.future.result()) == ref


def test_chunked_prefill_keeps_decoding_rows_moving(lm):
    long_prompt = " ".join(["the king and the queen of Denmark"] * 20)
    cfg = GenerationConfig(strategy="sample", seed=3, max_new_tokens=40, ignore_eos=True)
    options = dict(step_tokens=12, prefill_chunk=8)
    ref_long = alone(lm, cfg, 0, [long_prompt], **options)
    ref_short = alone(lm, cfg, 0, ["ROMEO:"], **options)
    engine = Engine(lm, Stats(), **options)
    short = job(cfg, 0, ["ROMEO:"])
    engine.add(engine.prepare(short))
    for _ in range(3):
        engine.step()
    group = engine.running[0].groups[0]
    long = job(cfg, 0, [long_prompt])
    engine.add(engine.prepare(long))
    n_prompt = len(engine.waiting[0].groups[0].prompt)
    assert n_prompt > 100
    before = group.session.tokens.length
    steps = 0
    while engine.running and (len(engine.running) < 2 or engine.running[1].groups[0].prefilling):
        engine.step()
        steps += 1
    # the long prompt took several steps (8 tokens a step next to the decoding row) ...
    assert steps >= n_prompt // 11
    # ... and the decoding row got one token in every one of them
    assert group.session.tokens.length - before == steps
    drive(engine, [short, long])
    assert outputs(short.future.result()) == ref_short
    assert outputs(long.future.result()) == ref_long


def test_cancelled_request_frees_its_rows_for_the_next(lm):
    cfg = GenerationConfig(strategy="greedy", max_new_tokens=50, ignore_eos=True)
    stats = Stats()
    engine = Engine(lm, stats, max_rows=2)
    a, b, c = job(cfg, 0), job(cfg, 1), job(cfg, 2)
    for j in (a, b, c):
        engine.add(engine.prepare(j))
    engine.step()
    assert [e.job for e in engine.running] == [a, b] and engine.waiting[0].job is c
    a.cancel()
    engine.step()  # the next step drops it and admits the queued one
    assert [e.job for e in engine.running] == [b, c]
    with pytest.raises(Cancelled):
        a.future.result(0)
    assert stats.cancelled == 1
    drive(engine, [b, c])
    assert outputs(c.future.result()) == alone(lm, cfg, 2)


def test_a_failing_request_fails_alone(lm):
    """An error in one request's step (here: its session raises) fails that request only;
    the others in the batch go on unchanged."""
    cfg = GenerationConfig(strategy="sample", seed=1, max_new_tokens=10)
    stats = Stats()
    engine = Engine(lm, stats)
    good, bad = job(cfg, 0), job(cfg, 1)
    for j in (good, bad):
        engine.add(engine.prepare(j))
    engine.step()
    session = engine.running[1].groups[0].session

    def fails():
        raise lmgen.GenerationError("no token can be sampled")

    session.step = fails
    drive(engine, [good, bad])
    with pytest.raises(lmgen.GenerationError):
        bad.future.result(0)
    assert outputs(good.future.result()) == alone(lm, cfg, 0)
    assert (stats.failed, stats.completed) == (1, 1)
    assert engine.running == []


@pytest.mark.parametrize("kernel", [True, False])
def test_row_linear_is_batch_invariant(kernel):
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 200)
    lin = RowLinear(layer)
    if not kernel:
        lin.kernel = False
    elif not lin.kernel:
        pytest.skip("lmgen.kernels is not available here")
    x = torch.randn(40, 96)
    with torch.inference_mode():
        ref = torch.cat([lin(x[i : i + 1]) for i in range(40)])  # every row alone
        for n in (2, 3, 4, 5, BLOCK, BLOCK + 1, 17, 40):
            perm = torch.randperm(40)[:n]
            assert torch.equal(lin(x[perm]), ref[perm]), n
        assert (ref - layer(x)).abs().max() < 1e-4


@pytest.mark.skipif(not quant.available(), reason="lmgen.kernels.quant is not built here")
def test_row_linear_of_blocks_is_batch_invariant():
    """A layer of ggml blocks: its forward sends more than `GEMV_ROWS` rows to the prompt GEMM
    (other bits); the batch's product keeps each row's bits at any row count."""
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(torch.nn.Linear(96, 200))
    lin = RowLinear(layer)
    x = torch.randn(40, 96)
    with torch.inference_mode():
        ref = torch.cat([lin(x[i : i + 1]) for i in range(40)])
        for n in (2, GEMV_ROWS, GEMV_ROWS + 1, 17, 40):
            perm = torch.randperm(40)[:n]
            assert torch.equal(lin(x[perm]), ref[perm]), n
        assert torch.equal(ref[:1], layer(x[:1]))  # one row: the layer's own product
        assert (ref - layer(x)).abs().max() < 1e-3  # many rows: the GEMM, to float rounding


def test_worker_runs_the_batch_and_beam_search_on_its_own(lm):
    worker = ModelWorker(lm, batching=True)
    try:
        blocker = worker.submit(CallJob(lambda _: time.sleep(0.3)))
        configs = mixed_configs()[:6]
        jobs = [worker.submit(job(c, i)) for i, c in enumerate(configs)]
        beam_cfg = GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=8)
        beam = worker.submit(GenerateJob(["ROMEO:"], beam_cfg))
        blocker.future.result(30)
        for i, (j, c) in enumerate(zip(jobs, configs, strict=True)):
            assert outputs(j.future.result(60)) == alone(lm, c, i)
        (result,), _ = beam.future.result(60)
        assert result.text == generate(lm, "ROMEO:", beam_cfg).text
        assert worker.engine.max_rows_seen >= 6 and worker.stats.merged_jobs == 6
        assert worker.load() == {"active": 0, "waiting": 0}
    finally:
        worker.close()


@pytest.mark.parametrize("family", ["gemma3-local-global", "llama-gqa6:2-bias-llama3"])
def test_rotary_gqa_family_in_the_batch_equals_generate(family, tmp_path):
    """The batch runs every family: grouped-query heads (the one-query kernel takes equal head
    counts only), RoPE at each row's own positions, sliding windows shorter than the rows."""
    pytest.importorskip("transformers")
    from lmgen.tokenizers import BPETokenizer
    from test_families import _hf_model

    tok = BPETokenizer.train(texts=["to be or not to be, that is the question. " * 40],
                             vocab_size=300)  # fmt: skip
    _hf_model(family, tok).save_pretrained(tmp_path)
    tok.save(tmp_path)
    small = lmgen.load(tmp_path)
    prompts = ["to be or not", "that is the question: to be or"]
    cfg = GenerationConfig(strategy="greedy", max_new_tokens=10, min_new_tokens=10)
    engine = Engine(small, Stats())
    jobs = [job(cfg, 0, [p]) for p in prompts]
    for j in jobs:
        engine.add(engine.prepare(j))
    drive(engine, jobs)
    for j, p in zip(jobs, prompts, strict=True):
        (result,), _ = j.future.result()
        ref = generate(small, p, cfg)
        assert result.choices[0].token_ids == ref.choices[0].token_ids


def test_preemption_under_a_tiny_kv_budget_gives_the_same_outputs(lm):
    """A KV cache for about two requests at a time, growing 8 positions at a block: the newest
    request is preempted when a row cannot grow, recomputed later (its prompt prefilled again,
    its tokens replayed one a step as first computed) and returns the same tokens and
    log-probabilities as alone; the cache in use never exceeds the bound."""
    configs = [c for c in mixed_configs()[:10] if c.num_return_sequences == 1][:6]
    configs.append(GenerationConfig(strategy="sample", seed=21, num_return_sequences=2,
                                    max_new_tokens=16))  # fmt: skip
    refs = [alone(lm, c, i) for i, c in enumerate(configs)]
    per_position = Engine(lm, Stats()).kv_position_bytes
    bound = 2 * 40 * per_position  # two rows of 40 positions
    stats = Stats()
    engine = Engine(lm, stats, kv_cache_bytes=bound, kv_block=8)
    jobs = [job(c, i) for i, c in enumerate(configs)]
    for j in jobs:
        engine.add(engine.prepare(j))
    for _ in range(3000):
        if all(j.future.done() for j in jobs):
            break
        engine.step()
        assert engine.kv_bytes_in_use() <= bound
    assert stats.preempted > 0
    for i, (j, ref) in enumerate(zip(jobs, refs, strict=True)):
        assert outputs(j.future.result(0)) == ref, f"request {i} changed by preemption"


def test_a_request_larger_than_the_kv_cache_is_refused_with_a_message(lm):
    engine = Engine(lm, Stats(), kv_cache_bytes=1000)
    cfg = GenerationConfig(strategy="greedy", max_new_tokens=20)
    with pytest.raises(lmgen.ConfigError, match="KV cache needs .* --kv-cache-mb"):
        engine.prepare(job(cfg, 0))
