"""What the data functions share: getting an LM, checking a prompt, entropy."""

from __future__ import annotations

import os

import numpy as np
import torch

from lmgen.errors import ConfigError


def as_lm(lm):
    """An `LM` as given, or one loaded from a model name/directory (None: the bundled one)."""
    if lm is None or isinstance(lm, str | os.PathLike):
        import lmgen

        return lmgen.load(lm)
    if not hasattr(lm, "model") or not hasattr(lm, "tokenizer"):
        raise ConfigError(
            f"expected an LM (lmgen.load(...)) or a model name, got {type(lm).__name__}", "lm"
        )
    return lm


def require_prompt(prompt, what: str) -> str:
    """A non-empty prompt string, or ConfigError saying why `what` needs one."""
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}", "prompt")
    if not prompt:
        raise ConfigError(f"the prompt is empty: {what} needs some text to work on", "prompt")
    return prompt


def prompt_ids(lm, prompt: str, new_tokens: int = 1) -> list[int]:
    """The prompt's token ids, checked against the model's context like `generate` does."""
    from lmgen.decoding.session import check_context, encode_prompt
    from lmgen.generation_config import GenerationConfig

    ids = encode_prompt(lm, prompt)
    check_context(lm, len(ids), GenerationConfig(max_new_tokens=new_tokens))
    return ids


def entropy(logits: torch.Tensor) -> np.ndarray:
    """Entropy in nats of softmax(logits) along the last axis; -inf logits contribute 0."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    h = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)
    return h.cpu().numpy()


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
