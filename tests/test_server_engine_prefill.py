"""The running batch's prompt chunks take the model's own prefill path (`GPT.run_blocks`), each
chunk on its own, for a float GPT-2, a rotary (Llama-family) model, and models whose layers
hold ggml blocks (Q4_0 by lmgen's quantizer; Q8_0 read back from lmgen's own GGUF export).

Oracles:
- the same request run alone through the engine: its tokens and log-probabilities are bitwise
  the same whether its prompt chunks share steps with other requests' chunks and decoding rows
  or not;
- `lmgen.generate`'s own first-step logits (a `Session`'s `next_logits`): for a prompt of one
  chunk, bitwise, since both take the same prefill and the same head call (decode_head).
"""

from __future__ import annotations

import pytest
import torch

import lmgen
from conftest import randomize_
from lmgen import Session, kernels
from lmgen.generation_config import GenerationConfig
from lmgen.gguf_export import write_gguf
from lmgen.kernels import quant
from lmgen.lm import LM
from lmgen.model import GPT, GPTConfig
from lmgen.quantize import QuantLinear
from lmgen.server.engine import Engine
from lmgen.server.work import GenerateJob, Stats
from lmgen.tokenizers import BPETokenizer

OPTIONS = dict(prefill_chunk=16, step_tokens=40)  # several chunks a prompt, a few a step
LENGTHS = [70, 5, 37, 3]  # prompt tokens of each request: 5 chunks, 1, 3 and 1


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as in tests/test_server_engine.py (the bits are the same with any number,
    as long as it does not change between the runs compared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_llama(window: int | None = None) -> LM:
    """A random Llama-shaped model (RoPE, RMSNorm, gated SiLU MLP, grouped-query heads) whose
    layers' inputs are whole blocks of 32, for the ggml-block export; with `window`, its first
    layer attends to that many keys (a sliding window, as Gemma 3's local layers)."""
    tok = BPETokenizer.train(texts=["to be or not to be, that is the question. " * 40],
                             vocab_size=300)  # fmt: skip
    cfg = GPTConfig(vocab_size=300, n_positions=256, n_embd=64, n_layer=2, n_head=4, n_kv_head=2,
                    n_inner=128, activation_function="silu", model_type="llama",
                    positions="rope", norm="rmsnorm", mlp="gated", mlp_bias=False,
                    qkv_bias=False, attn_out_bias=False, norm_bias=False,
                    layer_norm_epsilon=1e-5, eos_token_id=tok.eos_token_id,
                    bos_token_id=tok.eos_token_id, sliding_window=window,
                    layer_types=window and ["sliding_attention", "full_attention"])  # fmt: skip
    torch.manual_seed(0)
    return LM(randomize_(GPT(cfg).eval(), scale=0.05), tok, name="tiny-llama")


def _blocks(lm) -> set[str]:
    return {k for m in lm.model.modules() if isinstance(m, QuantLinear) for k in m.kinds}


@pytest.fixture(scope="module", params=["gpt2", "gpt2-q4_0", "llama", "llama-q8_0-gguf"])
def lm(request, tmp_path_factory):
    name = request.param
    if name.endswith(("q4_0", "gguf")) and not quant.available():
        pytest.skip("lmgen's ggml-block kernels are not built here")
    if name == "gpt2":
        return lmgen.load("shakespeare")
    if name == "gpt2-q4_0":
        out = lmgen.load("shakespeare", quantize="int4")
        assert "Q4_0" in {k[:4] for k in _blocks(out)}
        return out
    llama = _tiny_llama()
    if name == "llama":
        return llama
    path = write_gguf(llama.model, tmp_path_factory.mktemp("q8") / "m.gguf", "q8_0",
                      tokenizer=llama.tokenizer)  # fmt: skip
    out = lmgen.load(path)
    assert _blocks(out) == {"Q8_0"}
    return out


def _prompts(lm) -> list[list[int]]:
    """Token-id prompts of LENGTHS, all different, no end-of-sequence id among them."""
    V = min(lm.config.vocab_size, 290)
    eos = set(lm.eos_token_ids)
    out = []
    for r, n in enumerate(LENGTHS):
        ids = [(31 * i + 17 * r + 5) % V for i in range(n)]
        out.append([t if t not in eos else (t + 1) % V for t in ids])
    return out


CONFIGS = [
    GenerationConfig(strategy="sample", seed=1, temperature=0.9, max_new_tokens=6),
    GenerationConfig(strategy="greedy", max_new_tokens=8),
    GenerationConfig(strategy="sample", seed=2, top_k=20, logprobs=2, max_new_tokens=6),
    GenerationConfig(strategy="sample", seed=3, top_p=0.9, max_new_tokens=6),
]


def _outputs(job) -> list:
    (result,), _ = job.future.result(0)
    return [(c.token_ids, c.logprobs, c.processed_logprobs, c.top_logprobs, c.finish_reason)
            for c in result.choices]  # fmt: skip


class Recorder:
    """Wraps an engine's forward pass: each step's segments as (request, tokens) and each
    request's first logits (those its prompt's last chunk gave)."""

    def __init__(self, engine: Engine):
        self.engine, self.real = engine, engine.forward
        self.steps: list[list[tuple[object, int]]] = []
        self.first: dict[object, torch.Tensor] = {}
        engine.forward = self

    def __call__(self, segments):
        owner = {id(c): g.job for e in self.engine.running for g in e.groups for c in g.caches}
        logits = self.real(segments)
        rows = iter(logits)
        for s in segments:
            if s.logits:
                self.first.setdefault(owner[id(s.cache)], next(rows).clone())
        self.steps.append([(owner[id(s.cache)], len(s.tokens)) for s in segments])
        return logits


def _run(lm, indices: list[int], head_start: int = 0):
    """The requests `indices` through one engine; the first of them `head_start` steps ahead
    of the others. Returns the jobs and the recorder."""
    engine = Engine(lm, Stats(), **OPTIONS)
    rec = Recorder(engine)
    prompts = _prompts(lm)
    jobs = {i: GenerateJob([prompts[i]], CONFIGS[i]) for i in indices}
    for k, i in enumerate(indices):
        engine.add(engine.prepare(jobs[i]))
        if k == 0:
            for _ in range(head_start):
                engine.step()
    for _ in range(500):
        if all(j.future.done() for j in jobs.values()):
            return jobs, rec
        engine.step()
    raise AssertionError("the engine did not finish")


def test_prompt_chunks_sharing_steps_give_the_tokens_they_give_alone(lm):
    alone = {i: _outputs(_run(lm, [i])[0][i]) for i in range(len(LENGTHS))}
    # request 1 starts decoding first; the others' prompts then arrive together
    jobs, rec = _run(lm, [1, 0, 2, 3], head_start=2)
    shared = [
        step for step in rec.steps
        if len({j for j, n in step if n > 1}) >= 2 and any(n == 1 for _, n in step)
    ]  # fmt: skip
    assert shared, "no step had chunks of two prompts beside a decoding row"
    for i, job in jobs.items():
        assert _outputs(job) == alone[i], f"request {i} changed when its chunks shared steps"


def test_a_prompt_of_one_chunk_gets_generates_first_logits_bitwise(lm):
    """Prompts 1 and 3 fit one chunk: their first logits in the batch (beside the other
    prompts' chunks and decoding rows) are bitwise those `lmgen.generate` starts from. Prompt 0
    (five chunks, which generate runs as one) agrees to float rounding only: its chunks'
    products have other shapes than generate's one 70-row product."""
    if not kernels.available():
        pytest.skip("without lmgen.kernels the engine's head is not generate's")
    jobs, rec = _run(lm, [1, 0, 2, 3], head_start=2)
    prompts = _prompts(lm)
    for i in (1, 3, 0):
        raw, _ = Session(lm, [prompts[i]], CONFIGS[i]).next_logits()  # (1, V)
        got = rec.first[jobs[i]]
        if i == 0:
            diff = (got - raw[0]).abs().max() / raw[0].abs().max()
            # measured, of the largest logit: float GPT-2 and Llama 2e-7 (the 16-row chunks
            # take the row kernel, generate's 70 rows oneDNN's GEMM), Q8_0 1e-7, Q4_0 8e-5 (the
            # row kernel and the block GEMM round the activations to 8 bits each in its way)
            assert diff <= (1e-3 if _blocks(lm) else 1e-5)
        else:
            assert torch.equal(got, raw[0]), f"prompt {i}: {(got - raw[0]).abs().max()}"


@pytest.mark.parametrize("name", ["gpt2", "llama-window"])
def test_without_the_kernels_the_chunks_still_share_steps_bitwise(name, monkeypatch):
    """lmgen.kernels not built: the decoding rows go op by op (products in blocks of 8 rows,
    attention row by row, within a sliding window where the layer has one), the chunks through
    the prefill's torch products; each request still gets its bits alone, and the greedy one
    generate's tokens."""
    monkeypatch.setattr(kernels, "available", lambda: False)
    small = lmgen.load("shakespeare") if name == "gpt2" else _tiny_llama(window=6)
    alone = {i: _outputs(_run(small, [i])[0][i]) for i in range(len(LENGTHS))}
    jobs, _ = _run(small, [1, 0, 2, 3], head_start=2)
    for i, job in jobs.items():
        assert _outputs(job) == alone[i], f"request {i} changed"
    (result,), _ = jobs[1].future.result(0)  # greedy: 5 prompt tokens and 8 new, past the window
    ref = lmgen.generate(small, _prompts(small)[1], CONFIGS[1]).choices[0]
    assert result.choices[0].token_ids == ref.token_ids
    assert result.choices[0].logprobs == pytest.approx(ref.logprobs, abs=1e-4)


def test_the_models_hooks_fire_once_a_step(lm):
    """A step, prompt chunks and all, is one forward pass for the model's hooks."""
    calls = {"pre": 0, "post": 0}
    handles = [
        lm.model.register_forward_pre_hook(lambda *_: calls.__setitem__("pre", calls["pre"] + 1)),
        lm.model.register_forward_hook(lambda *_: calls.__setitem__("post", calls["post"] + 1)),
    ]
    try:
        jobs, rec = _run(lm, [0, 2, 3])
    finally:
        for h in handles:
            h.remove()
    assert any(sum(n > 1 for _, n in step) >= 2 for step in rec.steps)  # several chunks a step
    assert calls == {"pre": len(rec.steps), "post": len(rec.steps)}
