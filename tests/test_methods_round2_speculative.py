"""Prompt-lookup decoding and universal assisted decoding (issue 29): lossless, i.e. the very
tokens of plain decoding, greedy and seeded sampling; prompt lookup's candidates as
transformers' PromptLookupCandidateGenerator finds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

import lmgen
from lmgen.decoding.proposers import prompt_lookup
from lmgen.decoding.speculative import SpeculativeStats
from lmgen.errors import ConfigError
from lmgen.lm import LM

pytestmark = pytest.mark.usefixtures("one_thread")
SHAKESPEARE = Path(lmgen.__file__).parent / "models" / "shakespeare"
COPY_PROMPT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet "
    "is the sun.\n\nJULIET:\nBut soft, what light through yonder window breaks?\nIt is the "
)


@pytest.fixture(scope="module")
def shakespeare():
    return lmgen.load(SHAKESPEARE)


@pytest.mark.parametrize(
    "seq",
    [[1, 2, 3, 1, 2], [5, 5, 5, 5], [1, 2, 3, 4], [7, 1, 2, 9, 9, 1, 2], [3, 1, 3, 1, 3, 2, 3]],
)
@pytest.mark.parametrize(("max_ngram", "k"), [(1, 3), (2, 2), (3, 5)])
def test_prompt_lookup_candidates_equal_transformers(seq, max_ngram, k):
    ids = torch.tensor([seq])
    gen = PromptLookupCandidateGenerator(
        num_output_tokens=k, max_matching_ngram_size=max_ngram, max_length=100
    )
    theirs, _ = gen.get_candidates(ids)
    assert prompt_lookup(ids[0], max_ngram, k) == theirs[0, len(seq) :].tolist()


SAMPLED = {"strategy": "sample", "seed": 3, "temperature": 0.8}
FUSED = {"strategy": "sample", "seed": 11, "top_k": 20, "top_p": 0.9}


@pytest.mark.parametrize("kw", [{}, SAMPLED, FUSED])
def test_prompt_lookup_makes_the_plain_tokens(shakespeare, kw):
    plain = shakespeare.generate(COPY_PROMPT, max_new_tokens=60, **kw)
    stats = SpeculativeStats()
    fast = shakespeare.generate(COPY_PROMPT, max_new_tokens=60, prompt_lookup_num_tokens=8,
                                spec_stats=stats, **kw)  # fmt: skip
    assert fast.token_ids == plain.token_ids
    assert fast.choices[0].logprobs == pytest.approx(plain.choices[0].logprobs, abs=1e-4)
    assert stats.rounds < 60  # some proposals were kept: fewer model passes than tokens


def test_prompt_lookup_with_several_prompts_and_choices(shakespeare):
    prompts = [COPY_PROMPT, "KING:\nWhat say you?\nKING:\nWhat"]
    kw = dict(max_new_tokens=20, strategy="sample", seed=5)
    plain = shakespeare.generate(prompts, **kw)
    fast = shakespeare.generate(prompts, prompt_lookup_num_tokens=4, **kw)
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    many = shakespeare.generate(COPY_PROMPT, prompt_lookup_num_tokens=4,
                                num_return_sequences=2, **kw)  # fmt: skip
    again = shakespeare.generate(COPY_PROMPT, num_return_sequences=2, **kw)
    assert [c.token_ids for c in many.choices] == [c.token_ids for c in again.choices]


def test_prompt_lookup_bad_values_name_the_setting():
    with pytest.raises(ConfigError, match=r"^prompt_lookup_num_tokens must be an int >= 0"):
        lmgen.GenerationConfig.from_kwargs(prompt_lookup_num_tokens=-1)
    with pytest.raises(ConfigError, match=r"^prompt_lookup_max_ngram must be an int >= 1"):
        lmgen.GenerationConfig.from_kwargs(prompt_lookup_max_ngram=0)


class PermutedTokenizer:
    """The model's tokenizer with every id moved by a permutation: another tokenizer over the
    same pieces."""

    def __init__(self, inner, perm: torch.Tensor):
        self.inner, self.perm, self.inv = inner, perm.tolist(), perm.argsort().tolist()
        self.vocab_size = inner.vocab_size
        self.eos_token_id = self.bos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [self.perm[i] for i in self.inner.encode(text)]

    def decode(self, ids) -> str:
        return self.inner.decode([self.inv[i] for i in ids])

    def token_to_str(self, i: int) -> str:
        return self.inner.token_to_str(self.inv[i])


def permuted_copy(lm) -> LM:
    """The same network over permuted token ids: a draft with its own tokenizer whose
    proposals the model always agrees with under greedy decoding."""
    model = lmgen.load(SHAKESPEARE).model
    vocab = lm.config.vocab_size
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
    inv = perm.argsort()
    with torch.no_grad():
        model.wte.weight.copy_(model.wte.weight[inv])
        if model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr():
            model.lm_head.weight.copy_(model.lm_head.weight[inv])
    model.reset_plan()
    return LM(model, PermutedTokenizer(lm.tokenizer, perm))


def test_universal_assisted_decoding_greedy_and_seeded(shakespeare, tiny_lm):
    prompt = "ROMEO:\nWhat light"
    own = permuted_copy(shakespeare)
    for draft in (own, tiny_lm):  # the same network renumbered; a BPE model of its own
        for kw in ({}, {"strategy": "sample", "seed": 7, "temperature": 0.9}):
            plain = shakespeare.generate(prompt, max_new_tokens=40, **kw)
            stats = SpeculativeStats()
            assisted = shakespeare.generate(prompt, max_new_tokens=40, draft=draft,
                                            speculative_k=4, spec_stats=stats, **kw)  # fmt: skip
            assert assisted.token_ids == plain.token_ids
            if draft is own and not kw:
                assert stats.acceptance > 0.9  # the renumbered twin proposes the model's tokens
