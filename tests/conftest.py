"""Shared fixtures: a tiny random GPT-2 and a tiny trained byte-level BPE tokenizer.

`tiny_model_dir` is a model directory written by transformers' `save_pretrained` plus our
tokenizer, built once per session: treat it as read-only (copy it before editing). Tests that
need transformers import it themselves; nothing here imports it at collection time.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub or transformers: never touch the network, no
# progress bars, no advisory warnings in the test output.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_VOCAB = 384
TINY_SHAPE = {"n_positions": 128, "n_embd": 48, "n_layer": 2, "n_head": 4}

CORPUS = """\
It is a truth universally acknowledged that a small model, trained on a small corpus, will
repeat itself. The quick brown fox jumps over the lazy dog; the lazy dog does not mind.
To be, or not to be: that is the question. Whether 'tis nobler in the mind to suffer the
slings and arrows of outrageous fortune, or to take arms against a sea of troubles.
hello world this is a test of the language model GPT and AI.
Numbers 0123456789, punctuation !?;:, and a little Unicode: café, naïve, Ünïcödé, 日本語, 🙂.
"""


def tiny_corpus() -> list[str]:
    """Lines of a small mixed-script corpus, repeated so BPE finds enough merges."""
    return CORPUS.splitlines() * 8


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Perturbs every parameter (LayerNorm gains and biases included) so that a comparison
    of logits exercises all of them, not just the weights a fresh init makes non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if ("ln_" in name or "ln_f" in name) and name.endswith("weight"):
                p.copy_(1.0 + noise)
            elif name.endswith("bias"):
                p.copy_(noise)
            else:
                p.add_(noise)
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on `tiny_corpus()` with TINY_VOCAB tokens."""
    from lmgen.tokenizers import BPETokenizer

    tok = BPETokenizer.train(texts=tiny_corpus(), vocab_size=TINY_VOCAB)
    assert tok.vocab_size == TINY_VOCAB
    return tok


@pytest.fixture(scope="session")
def tiny_hf_model(tiny_tokenizer):
    """transformers' GPT2LMHeadModel (eval mode, GPT-2 defaults, random weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tiny_tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=tiny_tokenizer.vocab_size, bos_token_id=eos, eos_token_id=eos, **TINY_SHAPE
    )
    torch.manual_seed(0)
    return randomize_(GPT2LMHeadModel(config)).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_hf_model, tiny_tokenizer) -> Path:
    """A model directory loadable with `lmgen.load`: transformers' `save_pretrained`
    (config.json, model.safetensors) plus our tokenizer.json. Read-only."""
    directory = tmp_path_factory.mktemp("tiny") / "tiny-gpt2"
    tiny_hf_model.save_pretrained(directory)
    tiny_tokenizer.save(directory)
    return directory


@pytest.fixture
def tiny_lm(tiny_model_dir):
    """A fresh `lmgen.LM` loaded from `tiny_model_dir` (fresh per test, so it may be mutated)."""
    import lmgen

    return lmgen.load(tiny_model_dir)


def save_peaky_model(path: Path, texts: list[str]) -> Path:
    """A tiny random GPT (embeddings scaled up, so its distributions are not flat) and a BPE
    trained on `texts`, saved as a model directory; built with lmgen alone, no transformers."""
    import lmgen
    from lmgen.lm import LM
    from lmgen.tokenizers import BPETokenizer

    tok = BPETokenizer.train(texts=texts, vocab_size=300)
    torch.manual_seed(0)
    cfg = lmgen.GPTConfig(
        vocab_size=tok.vocab_size,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    model = lmgen.GPT(cfg)
    with torch.no_grad():
        model.wte.weight.mul_(10.0)
    LM(model, tok).save(path)
    return path


@pytest.fixture
def threads(request):
    """`torch.set_num_threads(n)` for one test: parametrize with `indirect=True`."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: torch's thread pool only adds contention (the CI box has 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
