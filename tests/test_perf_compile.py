"""The torch.compile'd decode step (compile.py) gives the eager tokens. Compiling takes about a
minute on a 2-core CPU, so this is a slow test."""

from __future__ import annotations

import pytest
import torch

from bench.benchmark import IdTokenizer
from lmgen.lm import LM
from lmgen.model import GPT, GPTConfig


@pytest.mark.slow
def test_compiled_step_gives_the_eager_tokens():
    torch.manual_seed(0)
    m = GPT(
        GPTConfig(
            vocab_size=101,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    lm = LM(m, IdTokenizer(101))
    for prompt, n in (("1 2 3", 20), ("4 5 6 7 8", 30)):  # two lengths, one compile
        eager = lm.generate(prompt, max_new_tokens=n, ignore_eos=True)
        compiled = lm.generate(prompt, max_new_tokens=n, ignore_eos=True, compile=True)
        assert compiled.token_ids == eager.token_ids
        assert compiled.choices[0].logprobs == pytest.approx(eager.choices[0].logprobs, abs=1e-4)
