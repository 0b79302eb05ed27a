"""Half-precision decoding keeps the fp32 model's quality (issue 15's rule): greedy tokens equal
to fp32's where the rounding allows, otherwise bits per byte within 0.01 of fp32's."""

import pytest
import torch

import lmgen
from lmgen.training import evaluate_bits_per_byte

PROMPTS = ["ROMEO:", "HAMLET:\nTo be, or not to be", "KING.\nWhat news", "First Citizen:\n"]


@pytest.fixture(scope="module")
def fp32():
    return lmgen.load()


@pytest.fixture(scope="module")
def own_text(fp32):
    """Text the fp32 model wrote (no corpus text is kept in the repository)."""
    res = fp32.generate(PROMPTS, strategy="sample", seed=3, max_new_tokens=200, ignore_eos=True)
    return "\n".join(p + r.text for p, r in zip(PROMPTS, res, strict=True))


def test_float16_greedy_equals_float32(fp32):
    half = lmgen.load(dtype=torch.float16)
    assert half.model.lm_head.weight.dtype == torch.float16
    for prompt in PROMPTS:
        want = fp32.generate(prompt, max_new_tokens=32, ignore_eos=True).token_ids
        got = half.generate(prompt, max_new_tokens=32, ignore_eos=True).token_ids
        assert list(got) == list(want), prompt


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bits_per_byte_within_a_hundredth(fp32, own_text, dtype):
    ref = evaluate_bits_per_byte(fp32, own_text, 128, 64)
    got = evaluate_bits_per_byte(lmgen.load(dtype=dtype), own_text, 128, 64)
    assert abs(got - ref) <= 0.01, (dtype, got, ref)
