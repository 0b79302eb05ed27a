"""A tiny chat model for tests: a random GPT whose byte-level BPE has ChatML's special tokens,
saved with the Qwen2.5 chat template in its tokenizer_config.json."""

from __future__ import annotations

import json

import torch
from tests.chat_templates import QWEN25
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import lmgen
from lmgen.lm import LM
from lmgen.tokenizers import BPETokenizer

TEXTS = [
    "To be, or not to be: that is the question.",
    "What is the capital of France? Paris is the capital of France.",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
] * 10
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chatml_bpe() -> Tokenizer:
    """A byte-level BPE trained on `TEXTS`, with ChatML's special tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXTS, trainer)
    return backend


def save_chat_model(path):
    """A tiny random GPT whose byte-level BPE has ChatML's special tokens, saved with the
    Qwen2.5 chat template in tokenizer_config.json."""
    tok = BPETokenizer(chatml_bpe(), eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = lmgen.GPTConfig(
        vocab_size=tok.vocab_size,
        n_positions=1024,
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
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = QWEN25
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path
