"""Issue 29's samplers against their references on fixed logits: Top-H and sequence bias
against transformers' own processors, adaptive-p against llama.cpp's sampler (through
libllama when it is at hand, else a step-by-step restatement of llama.cpp's code), p-less and
p-less-norm against the paper's closed form, and the user's sampler order (llama.cpp's
`samplers` list)."""

from __future__ import annotations

import ctypes
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers.generation.logits_process import (
    SequenceBiasLogitsProcessor,
    TopHLogitsWarper,
)

from lmgen.errors import ConfigError
from lmgen.generation_config import GenerationConfig
from lmgen.processors import AdaptiveP, PLess, SequenceBias, TopH, build_chain

pytestmark = pytest.mark.usefixtures("one_thread")
NO_HISTORY = torch.zeros((1, 1), dtype=torch.long)


def chain_of(**kw):
    config = GenerationConfig.from_kwargs(**kw)
    return build_chain(config, prompt_length=1, eos_token_ids=[0])


# -- Top-H ------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_h", [0.05, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("vocab", [7, 100, 300])
def test_top_h_equals_transformers(top_h, vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(4, vocab, generator=gen) * torch.tensor([[0.5], [2.0], [5.0], [1.0]])
    logits[3, ::3] = float("-inf")  # an earlier filter's work
    ours = TopH(top_h)(NO_HISTORY, logits)
    theirs = TopHLogitsWarper(top_h)(NO_HISTORY, logits)
    assert torch.equal(ours, theirs)


def test_top_h_transformers_docstring_case():
    # transformers' tests: a peaked distribution keeps its top token, a flat one more
    peaked = torch.log(torch.tensor([[0.9, 0.05, 0.03, 0.02]]))
    flat = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25]]))
    assert torch.isfinite(TopH(0.4)(NO_HISTORY, peaked)).sum() == 1
    assert torch.isfinite(TopH(0.4)(NO_HISTORY, flat)).sum() == 1  # 0.25*ln4 per token
    assert torch.isfinite(TopH(0.8)(NO_HISTORY, flat)).sum() == 3


def test_top_h_checks_its_value():
    for bad in (0.0, 1.5, -1, float("nan")):
        with pytest.raises(ConfigError, match="top_h"):
            TopH(bad)
    with pytest.raises(ConfigError, match=r"^top_h must be in \[0, 1\], got 2"):
        GenerationConfig.from_kwargs(top_h=2)


# -- sequence bias ----------------------------------------------------------------------------

SEQUENCE_CASES = [
    [[[3], -2.0]],
    [[[1, 2], 5.0], [[2, 3, 4], -4.0], [[4], 1.5]],
    [[[0, 1], 1.0], [[5, 1], 2.0], [[3, 0, 1], -1.0], [[9, 9, 9, 9, 9, 9], 3.0]],
]


@pytest.mark.parametrize("pairs", SEQUENCE_CASES)
def test_sequence_bias_equals_transformers(pairs):
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1], [2, 2, 2, 2], [3, 0, 1, 2]])
    logits = torch.randn(4, 10, generator=gen)
    theirs = SequenceBiasLogitsProcessor(sequence_bias=pairs)(input_ids, logits)
    ours = SequenceBias(pairs)(input_ids, logits)
    assert torch.allclose(ours, theirs, atol=0, rtol=0)
    as_dict = {tuple(ids): b for ids, b in pairs}
    assert torch.equal(SequenceBias(as_dict)(input_ids, logits), ours)


def test_sequence_bias_bad_input_names_the_parameter():
    huge = [[[2**70], 1.0]]  # beyond any tensor of ids (the server once answered it with a 500)
    for bad in ([], [[[], 1.0]], [[[1, -2], 1.0]], [[[1], "x"]], "1,2=3", [[[1], float("inf")]],
                huge):  # fmt: skip
        with pytest.raises(ConfigError, match="sequence_bias") as e:
            GenerationConfig.from_kwargs(sequence_bias=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="sequence_bias has token ids outside"):
        SequenceBias([[[12], 1.0]])(NO_HISTORY, torch.zeros(1, 10))


# -- p-less -----------------------------------------------------------------------------------


def test_p_less_closed_form():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    collision = float((probs**2).sum())  # 0.365
    kept = torch.isfinite(PLess()(NO_HISTORY, probs.log()))
    assert kept.tolist() == [[p >= collision for p in probs[0].tolist()]] == [[True] + [False] * 3]
    norm = (4 * collision - 1) / 3  # 0.15333...
    kept = torch.isfinite(PLess(normalised=True)(NO_HISTORY, probs.log()))
    assert kept.tolist() == [[p >= norm for p in probs[0].tolist()]] == [[True, True, False, False]]


def test_p_less_keeps_a_flat_row_and_the_top_of_a_peaked_one():
    flat = torch.zeros(1, 1000)
    assert bool(torch.isfinite(PLess()(NO_HISTORY, flat)).all())
    assert bool(torch.isfinite(PLess(normalised=True)(NO_HISTORY, flat)).all())
    peaked = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    assert torch.isfinite(PLess()(NO_HISTORY, peaked)).sum() == 1


def test_p_less_norm_keeps_at_least_what_p_less_keeps():
    gen = torch.Generator().manual_seed(1)
    for scale in (0.3, 1.0, 3.0, 8.0):
        logits = torch.randn(8, 500, generator=gen) * scale
        plain = torch.isfinite(PLess()(NO_HISTORY, logits))
        norm = torch.isfinite(PLess(normalised=True)(NO_HISTORY, logits))
        assert bool((norm | ~plain).all())
        probs = logits.softmax(-1)
        collision = (probs**2).sum(-1, keepdim=True)
        assert torch.equal(plain, (probs >= collision) | (probs == probs.amax(-1, keepdim=True)))


# -- adaptive-p -------------------------------------------------------------------------------


def restated_adaptive_p(steps_probs, chosen, target, decay):
    """llama.cpp's llama_sampler_adaptive_p_apply/accept, line by line, in float64."""
    weighted, total = target / (1 - decay), 1 / (1 - decay)
    out = []
    for probs, token in zip(steps_probs, chosen, strict=True):
        adapted = min(max(2 * target - weighted / total, 0.0), 1.0)
        logits = []
        for p in probs:
            d = abs((p - adapted) / 0.3)
            logits.append(5.0 - 10.0 * d * d / (1.0 + d))
        m = max(logits)
        e = [math.exp(x - m) for x in logits]
        out.append([x / sum(e) for x in e])
        weighted = probs[token] + decay * weighted
        total = 1 + decay * total
    return out


def run_adaptive(target, decay, steps_probs, chosen):
    proc = AdaptiveP(target, decay, prompt_length=1)
    out = []
    for k, probs in enumerate(steps_probs):
        ids = torch.tensor([[0, *chosen[:k]]])
        out.append(proc(ids, torch.tensor([probs]).log()).softmax(-1)[0].tolist())
    return out


STEPS = [[0.5, 0.25, 0.15, 0.1], [0.7, 0.2, 0.05, 0.05], [0.1, 0.2, 0.3, 0.4],
         [0.96, 0.02, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25]]  # fmt: skip
CHOSEN = [0, 0, 3, 0, 1]


@pytest.mark.parametrize(("target", "decay"), [(0.5, 0.9), (0.1, 0.5), (0.9, 0.0), (0.3, 0.99)])
def test_adaptive_p_equals_llama_cpp_restated(target, decay):
    ours = run_adaptive(target, decay, STEPS, CHOSEN)
    expected = restated_adaptive_p(STEPS, CHOSEN, target, decay)
    for a, b in zip(ours, expected, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


class _TokenData(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int32), ("logit", ctypes.c_float), ("p", ctypes.c_float)]


class _TokenDataArray(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(_TokenData)), ("size", ctypes.c_size_t),
                ("selected", ctypes.c_int64), ("sorted", ctypes.c_bool)]  # fmt: skip


def _libllama() -> ctypes.CDLL | None:
    """libllama from $LIBLLAMA, or next to llama-bench ($LLAMA_BENCH or on the PATH)."""
    candidates = [os.environ.get("LIBLLAMA", "")]
    bench = os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench")
    if bench:
        candidates.append(str(Path(bench).resolve().parent / "libllama.so"))
    for c in candidates:
        if c and Path(c).is_file():
            lib = ctypes.CDLL(c)
            if hasattr(lib, "llama_sampler_init_adaptive_p"):
                return lib
    return None


def test_adaptive_p_equals_libllama():
    lib = _libllama()
    if lib is None:
        pytest.skip("no libllama with adaptive-p (set LIBLLAMA=/path/to/libllama.so)")
    lib.llama_sampler_init_adaptive_p.restype = ctypes.c_void_p
    lib.llama_sampler_init_adaptive_p.argtypes = [ctypes.c_float, ctypes.c_float, ctypes.c_uint32]
    lib.llama_sampler_apply.argtypes = [ctypes.c_void_p, ctypes.POINTER(_TokenDataArray)]
    lib.llama_sampler_accept.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.llama_sampler_free.argtypes = [ctypes.c_void_p]
    for target, decay in ((0.5, 0.9), (0.1, 0.5), (0.3, 0.99)):
        smpl = lib.llama_sampler_init_adaptive_p(target, decay, 1234)
        chosen, expected = [], []
        for probs in STEPS:
            data = (_TokenData * len(probs))(
                *[_TokenData(i, math.log(p), 0.0) for i, p in enumerate(probs)]
            )
            arr = _TokenDataArray(data, len(probs), -1, False)
            lib.llama_sampler_apply(smpl, ctypes.byref(arr))
            expected.append({data[i].id: data[i].p for i in range(len(probs))})
            token = data[arr.selected].id
            lib.llama_sampler_accept(smpl, token)
            chosen.append(token)
        lib.llama_sampler_free(smpl)
        ours = run_adaptive(target, decay, STEPS, chosen)
        for a, b in zip(ours, expected, strict=True):
            assert a == pytest.approx([b[i] for i in range(len(a))], abs=1e-5)


def test_adaptive_p_runs_last_and_refuses_mirostat():
    chain = chain_of(strategy="sample", adaptive_target=0.4, temperature=0.7, min_p=0.05)
    assert [type(p).__name__ for p in chain] == ["Temperature", "MinP", "AdaptiveP"]
    chain = chain_of(
        strategy="sample", adaptive_target=0.4, min_p=0.05, samplers=["adaptive_p", "min_p"]
    )
    assert [type(p).__name__ for p in chain] == ["MinP", "AdaptiveP"]
    with pytest.raises(ConfigError, match="mirostat or adaptive_target"):
        chain_of(strategy="sample", adaptive_target=0.4, mirostat=2)
    for bad in (1.5, -0.5, float("nan")):
        with pytest.raises(ConfigError, match="^adaptive_target must be -1 \\(off\\) or"):
            GenerationConfig.from_kwargs(adaptive_target=bad)
    with pytest.raises(ConfigError, match=r"^adaptive_decay must be in \[0, 0.99\], got 1"):
        GenerationConfig.from_kwargs(adaptive_decay=1)


def test_adaptive_p_moves_the_target_against_the_history():
    # after likely tokens, the adapted target drops below the configured one, and after
    # unlikely ones it rises
    proc = AdaptiveP(0.5, 0.5, prompt_length=1)
    probs = torch.tensor([[0.9, 0.05, 0.05]])
    proc(torch.tensor([[0]]), probs.log())
    proc(torch.tensor([[0, 0]]), probs.log())
    assert proc.adapted_target(*proc.ema(0, (0, 0))) < 0.5
    assert proc.adapted_target(*proc.ema(0, (1,))) > 0.5


# -- the sampler order ------------------------------------------------------------------------


def test_samplers_orders_the_chain_as_listed():
    kw = dict(strategy="sample", temperature=0.7, top_k=10, min_p=0.1, repetition_penalty=1.2)
    default = [type(p).__name__ for p in chain_of(**kw)]
    assert default == ["RepetitionPenalty", "Temperature", "TopK", "MinP"]
    listed = chain_of(**kw, samplers=["min-p", "temp", "topk", "penalties"])
    assert [type(p).__name__ for p in listed] == ["MinP", "Temperature", "TopK",
                                                  "RepetitionPenalty"]  # fmt: skip
    # llama.cpp's default order puts the temperature last
    llama = chain_of(**kw, samplers="penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;"
                     "temperature".split(";"))  # fmt: skip
    assert [type(p).__name__ for p in llama] == ["RepetitionPenalty", "TopK", "MinP",
                                                 "Temperature"]  # fmt: skip


def test_samplers_refuses_what_it_cannot_honour():
    with pytest.raises(ConfigError, match="^samplers: unknown sampler 'top_q'"):
        GenerationConfig.from_kwargs(samplers=["top_q"])
    with pytest.raises(ConfigError, match="^samplers names 'top_k' twice"):
        GenerationConfig.from_kwargs(samplers=["top_k", "top-k"])
    with pytest.raises(ConfigError, match="^samplers leaves out min_p, which"):
        chain_of(strategy="sample", top_k=5, min_p=0.1, samplers=["top_k"])
    with pytest.raises(ConfigError, match="temperature_last"):
        chain_of(strategy="sample", temperature_last=True, samplers=["top_k"])


# -- lmgen compare's rows and checks for these samplers ----------------------------------------


def test_compare_checks_the_new_samplers_claims():
    from lmgen.compare.report import checks
    from lmgen.compare.strategies import DEFAULT_STRATEGIES

    names = {s.name for s in DEFAULT_STRATEGIES}
    assert {"top-H=0.4", "p-less", "p-less-norm", "adaptive-p=0.3"} <= names
    for s in DEFAULT_STRATEGIES:
        s.config(16)  # every row is a valid config

    def m(**values):
        return {k: {"value": v} for k, v in values.items()}

    rows = {
        "min-p=0.1": m(perplexity=10.0),
        "min-p=0.1, t=2": m(perplexity=70.0, distinct_4=0.9),
        "top-H=0.4, t=2": m(perplexity=35.0, distinct_4=0.9),
        "p-less": m(perplexity=7.0, distinct_4=0.6),
        "p-less, t=2": m(perplexity=52.0),
        "p-less-norm": m(perplexity=7.0, distinct_4=0.7),
        "adaptive-p=0.3": m(chosen_prob=0.27),
        "pure sampling": m(chosen_prob=0.16),
    }
    got = {c["claim"].split(" (")[0]: c["holds"] for c in checks(rows)}
    assert got["Top-H keeps high-temperature text more coherent than min-p"] is True
    assert got["p-less degrades less than min-p as the temperature rises"] is False  # 7.4 > 7
    assert got["p-less-norm is the more diverse of the two"] is True
    assert got["adaptive-p steers the chosen tokens' probability to its target"] is True
    del rows["adaptive-p=0.3"]
    got = {c["claim"].split(" (")[0]: c["holds"] for c in checks(rows)}
    assert got["adaptive-p steers the chosen tokens' probability to its target"] is None


def test_adaptive_p_history_is_what_it_was_given():
    proc = AdaptiveP(0.5, 0.9, prompt_length=1)
    steps = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
    chosen = [0, 2, 1]
    for k, probs in enumerate(steps):
        proc(torch.tensor([[9, *chosen[:k]]]), torch.tensor([probs]).log())
    assert proc.history(0, chosen) == pytest.approx([0.6, 0.3, 0.1], abs=1e-6)
