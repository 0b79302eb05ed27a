"""The engine's vectorised choice (lmgen.server.row_sampler) against its oracle, the processor
chain run on each row alone: bitwise equal scores, tokens and log-probabilities, on random
logits (hypothesis) and through the engine (a batch of 16 different requests against each
request alone with the pass turned off)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmgen
from lmgen.decoding.processors import (
    DRY,
    LogitBias,
    MinP,
    PresenceFrequencyPenalty,
    ProcessorChain,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
)
from lmgen.decoding.sampling import sample_from_logits
from lmgen.generation_config import GenerationConfig
from lmgen.server.engine import Engine
from lmgen.server.row_sampler import RowPart, RowRule, RowSampler, row_blocks
from lmgen.server.worker import GenerateJob, Stats

V = 48
PROMPT = 3  # prompt columns of every random sequence


@st.composite
def chains(draw) -> ProcessorChain:
    """A random chain of the rules the pass takes, in the default order."""
    chain = []
    if draw(st.booleans()):
        chain.append(RepetitionPenalty(draw(st.floats(0.3, 3.0))))
    if draw(st.booleans()):
        chain.append(
            PresenceFrequencyPenalty(
                draw(st.floats(-2, 2)), draw(st.floats(-2, 2)), prompt_length=PROMPT
            )
        )
    if draw(st.booleans()):
        ids = draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=4, unique=True))
        chain.append(LogitBias({t: draw(st.floats(-100, 100)) for t in ids}))
    if draw(st.booleans()):
        chain.append(Temperature(draw(st.floats(0.05, 3.0))))
    keep = draw(st.integers(1, 3))
    if draw(st.booleans()):
        chain.append(TopK(draw(st.integers(1, V + 5)), keep))
    if draw(st.booleans()):
        chain.append(TopP(draw(st.floats(0.01, 0.999)), keep))
    if draw(st.booleans()):
        chain.append(MinP(draw(st.floats(0.0, 1.0)), keep))
    return ProcessorChain(chain)


@st.composite
def batches(draw):
    """Requests of 1-2 rows each: (chain, sample, input_ids, logits)."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        rows = draw(st.integers(1, 2))
        length = draw(st.integers(PROMPT, PROMPT + 6))
        ids = draw(st.lists(st.integers(0, V - 1), min_size=rows * length, max_size=rows * length))
        # few distinct values: ties are common, as are -inf logits
        values = st.sampled_from([-3.0, -1.5, -0.0, 0.0, 0.25, 1.0, 2.5, 4.0, float("-inf")])
        raw = draw(st.lists(values, min_size=rows * V, max_size=rows * V))
        logits = torch.tensor(raw).view(rows, V)
        noise = draw(st.integers(0, 2**31 - 1))
        logits = logits + torch.randn(rows, V, generator=torch.Generator().manual_seed(noise)) * (
            draw(st.sampled_from([0.0, 1e-3, 1.0]))
        )
        logits[:, draw(st.integers(0, V - 1))] = 5.0  # every row keeps something to draw
        seqs = torch.tensor(ids).view(rows, length)
        out.append((draw(chains()), draw(st.booleans()), seqs, logits))
    return out


def seeded(seed: int, rows: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + r) for r in range(rows)]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().view(torch.int32)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_vectorised_pass_equals_each_chain_alone(batch):
    parts = []
    for k, (chain, sample, ids, _) in enumerate(batch):
        rule = RowRule.of(chain, sample, V)
        assert rule is not None
        parts.append(RowPart(rule, ids, seeded(100 * k, ids.shape[0])))
    logits = torch.cat([b[3] for b in batch])
    sampler = RowSampler(parts)
    scores = sampler.process(logits)
    nxt, raw, proc = sampler.choose(logits)

    a = 0
    for k, (chain, sample, ids, lg) in enumerate(batch):
        n = ids.shape[0]
        for r in range(n):  # each row alone, through the chain
            ref = chain(ids[r : r + 1], lg[r : r + 1])
            assert torch.equal(bits(scores[a + r : a + r + 1]), bits(ref))
        ref = chain(ids, lg) if chain else lg
        if sample:
            tok = sample_from_logits(ref, seeded(100 * k, n))
        else:
            tok = ref.argmax(dim=-1)
        assert nxt[a : a + n].tolist() == tok.tolist()
        raw_ref = lg.log_softmax(-1).gather(1, tok[:, None])[:, 0]
        proc_ref = ref.log_softmax(-1).gather(1, tok[:, None])[:, 0] if chain else raw_ref
        assert torch.equal(bits(raw[a : a + n]), bits(raw_ref))
        assert torch.equal(bits(proc[a : a + n]), bits(proc_ref))
        a += n


@pytest.mark.parametrize("one_block", [False, True])
def test_a_gpt2_sized_vocabulary_gives_the_same_bits(one_block):
    """Torch's row reductions take other code paths over 50257 columns than over 48: 16 rows
    of different settings, built by `build_chain` from configs, against each chain alone; in
    the CPU's blocks of rows and all in one block."""
    from lmgen.decoding.processors import build_chain

    vocab, S = 50257, GenerationConfig
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, vocab, generator=g) * 3
    configs = [c for c in vector_configs()[:16]]
    configs[0] = S(strategy="sample", seed=1, top_p=0.9, repetition_penalty=1.2)  # full sort
    parts, refs = [], []
    for k, c in enumerate(configs):
        sample = c.effective_strategy() == "sample"
        chain = build_chain(c, prompt_length=50, eos_token_ids=[0])
        ids = torch.randint(0, vocab, (1, 100), generator=g)
        parts.append(RowPart(RowRule.of(chain, sample, vocab), ids, seeded(k, 1)))
        x = logits[k : k + 1]
        ref = chain(ids, x) if chain else x
        tok = sample_from_logits(ref, seeded(k, 1)) if sample else ref.argmax(dim=-1)
        refs.append((tok, x.log_softmax(-1).gather(1, tok[:, None]), ref, chain))
    if one_block:
        nxt, raw, proc = RowSampler(parts).choose(logits)
    else:  # one row a part here
        blocks = row_blocks(parts, vocab, logits.device)
        assert len(blocks) > 1
        chosen = [RowSampler(parts[a:b]).choose(logits[a:b]) for a, b in blocks]
        nxt, raw, proc = (torch.cat(t) for t in zip(*chosen, strict=True))
    for k, (tok, raw_ref, ref, chain) in enumerate(refs):
        assert nxt[k] == tok[0], k
        assert torch.equal(bits(raw[k : k + 1]), bits(raw_ref[:, 0]))
        proc_ref = ref.log_softmax(-1).gather(1, tok[:, None])[:, 0] if chain else raw_ref[:, 0]
        assert torch.equal(bits(proc[k : k + 1]), bits(proc_ref))


def test_a_row_with_nothing_to_draw_fails_its_block_before_any_row_draws():
    """The engine then lets each group of the block choose alone (and fail alone): no
    generator may have moved."""
    from lmgen.errors import GenerationError

    gens = seeded(5, 2)
    parts = [RowPart(RowRule.of([MinP(0.1)], True, V), torch.zeros(1, 4, dtype=torch.long), [g])
             for g in gens]  # fmt: skip
    logits = torch.randn(2, V)
    logits[1] = float("-inf")
    with pytest.raises(GenerationError):
        RowSampler(parts).choose(logits)
    for g, fresh in zip(gens, seeded(5, 2), strict=True):
        assert torch.equal(g.get_state(), fresh.get_state())


def test_other_chains_are_not_taken():
    """Another processor, another order, or a bias outside the vocabulary: the chain runs."""
    assert RowRule.of([Temperature(0.5), MinP(0.1)], True, V) is not None
    assert RowRule.of([DRY(0.8, 1.75, 2, -1)], True, V) is None
    assert RowRule.of([MinP(0.1), Temperature(0.5)], True, V) is None  # temperature_last
    assert RowRule.of([LogitBias({V + 1: 1.0})], True, V) is None


# -- through the engine -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    return lmgen.load("shakespeare")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo!", "To be, or not to be", "First Citizen:"]


def vector_configs() -> list[GenerationConfig]:
    """16 requests the pass takes, each with its own settings, then two it does not."""
    S = GenerationConfig
    b = dict(strategy="sample", max_new_tokens=8)
    return [
        S(seed=1, temperature=0.8, min_p=0.05, **b),
        S(seed=2, temperature=1.3, top_k=12, min_p=0.02, **b),
        S(seed=3, top_p=0.85, repetition_penalty=1.3, **b),
        S(seed=4, temperature=0.7, top_k=40, top_p=0.9, presence_penalty=0.6, **b),
        S(seed=5, min_p=0.1, **b),
        S(strategy="greedy", repetition_penalty=1.4, max_new_tokens=8),
        S(strategy="greedy", logit_bias={5: 3.0}, max_new_tokens=8),
        S(seed=6, presence_penalty=0.8, frequency_penalty=0.5, **b),
        S(seed=7, temperature=1.1, frequency_penalty=1.0, top_p=0.7, **b),
        S(seed=8, logit_bias={5: 4.0, 17: -100.0}, top_k=20, **b),
        S(seed=9, temperature=0.6, top_k=8, top_p=0.95, min_p=0.05, min_tokens_to_keep=2, **b),
        S(seed=10, repetition_penalty=0.8, temperature=1.5, **b),
        S(seed=11, temperature=0.9, **b),
        S(strategy="greedy", max_new_tokens=8),
        S(seed=12, top_k=5, logit_bias={0: -2.5}, repetition_penalty=1.1, **b),
        S(seed=13, temperature=2.0, top_p=0.5, min_p=0.2, frequency_penalty=-0.3, **b),
        # not taken: DRY (its own chain), temperature + top-k (the fused candidate sampler)
        S(seed=14, dry_multiplier=0.8, min_p=0.05, **b),
        S(seed=15, temperature=0.8, top_k=30, **b),
    ]


def run(lm, configs, vector_pass=True, first=0):
    """Runs the requests together (request i on prompt `first + i`); their outputs."""
    engine = Engine(lm, Stats(), vector_pass=vector_pass)
    jobs = [GenerateJob([PROMPTS[(first + i) % len(PROMPTS)]], c) for i, c in enumerate(configs)]
    for j in jobs:
        engine.add(engine.prepare(j))
    while not all(j.future.done() for j in jobs):
        engine.step()
    outs = []
    for j in jobs:
        (result,), _ = j.future.result()
        (c,) = result.choices
        outs.append((c.token_ids, c.logprobs, c.processed_logprobs, c.finish_reason))
    return engine, outs


def test_a_batch_of_different_settings_equals_each_request_alone(lm):
    configs = vector_configs()
    alone = [run(lm, [c], vector_pass=False, first=i)[1][0] for i, c in enumerate(configs)]
    engine, together = run(lm, configs)
    assert engine.max_rows_seen >= 18
    for i, (a, b) in enumerate(zip(together, alone, strict=True)):
        assert a == b, f"request {i} changed in the vectorised pass"
    # every pick of the first 16 came from the pass, none of the last two's
    assert engine.vector_rows == sum(len(out[0]) for out in together[:16])
