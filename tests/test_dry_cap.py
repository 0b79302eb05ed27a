"""DRY's exponent cap is computed in float32, as llama.cpp (`FLOAT_MAX_LOG / std::log(dry_base)`
on floats) and vLLM compute it: 128 for dry_base=2, where float64 arithmetic gives 127."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmgen.decoding.dry import DRY


def llama_cpp_cap(base: float) -> int:
    """llama.cpp's arithmetic: every operand a C float, the quotient truncated to int."""
    if not np.float32(base) > np.float32(1.000001):
        return 0
    return int(np.float32(88.7228391) / np.log(np.float32(base)))


@pytest.mark.parametrize("base", [1.0, 1.5, 1.75, 2.0, 3.0, 10.0, 1000.0])
def test_cap_matches_float32(base):
    assert DRY(1.0, base=base).max_exponent == llama_cpp_cap(base)


def test_base_two_caps_at_128_not_127():
    assert llama_cpp_cap(2.0) == 128
    assert int(88.7228391 / math.log(2.0)) == 127  # what float64 would have said
    assert DRY(1.0, base=2.0).max_exponent == 128


def test_a_long_repeat_is_penalised_at_the_cap():
    # "a b c" repeated: the token after the newest "a b c ... a b" extends a long repeat; with
    # allowed_length 1 and a repeat far longer than the cap, the penalty is base ** cap.
    dry = DRY(1e-30, base=2.0, allowed_length=1)
    row = [1, 2, 3] * 60
    penalties = dry.penalties(row)
    assert penalties[1] == pytest.approx(1e-30 * 2.0**128)
    logits = torch.zeros(1, 8)
    out = dry(torch.tensor([row]), logits)
    assert out[0, 1].item() == pytest.approx(-1e-30 * 2.0**128, rel=1e-6)
