"""Bits per byte of a text under a model, with a sliding window over the whole text.

bits per byte = (total negative log-likelihood of the text's tokens, in nats) / ln 2
                / (number of UTF-8 bytes of the text)

The text is encoded once and preceded by the end-of-text token (documents start after one in
training), so every token of the text is scored. Windows of `window` tokens advance by
`stride`; each scores only the tokens the previous window did not, so every token but those of
the first window sees at least `window - stride` tokens of context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass
class Evaluation:
    nll: float  # total negative log-likelihood, nats
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text
    window: int
    stride: int

    @property
    def loss(self) -> float:
        """Mean loss per token, nats."""
        return self.nll / max(1, self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(1, self.bytes)

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "window": self.window,
            "stride": self.stride,
        }


@torch.no_grad()
def evaluate_text(
    lm,
    text: str,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> Evaluation:
    """Sliding-window evaluation of `text` (see the module docstring)."""
    model, tokenizer = lm.model, lm.tokenizer
    # None means the default; 0 is no default but out of range (an error, not silently None)
    if window is None:
        window = model.config.n_positions
    if not 1 <= window <= model.config.n_positions:
        raise ConfigError(
            f"window must be in [1, {model.config.n_positions}] (the model's "
            f"context), got {window}",
            "window",
        )
    if stride is None:
        stride = max(1, window // 2)
    if not 1 <= stride <= window:
        raise ConfigError(f"stride must be in [1, window={window}], got {stride}", "stride")
    if not text:
        raise ConfigError("cannot evaluate an empty text")
    ids = tokenizer.encode(text)
    if tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id] + ids
    # else: without a start token the text's first token has no context and is not scored
    seq = np.asarray(ids, dtype=np.int64)
    n = len(seq)
    # Jobs (begin, end, first): inputs seq[begin:end-1], targets seq[begin+1:end]; this window
    # scores target positions first..end-1 (the ones no earlier window scored).
    jobs = []
    begin, scored_to = 0, 1
    while scored_to < n:
        end = min(begin + window + 1, n)
        jobs.append((begin, end, scored_to))
        scored_to = end
        begin += stride
    was_training = model.training
    model.eval()
    device = lm.device
    total, count = 0.0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="window", desc="evaluating", leave=False)
    try:
        for i in range(0, len(jobs), batch_size):
            group = jobs[i : i + batch_size]
            for length in sorted({e - b for b, e, _ in group}):
                rows = [(b, e, s) for b, e, s in group if e - b == length]
                x = torch.from_numpy(np.stack([seq[b:e] for b, e, _ in rows])).to(device)
                logits = model(x[:, :-1]).float()
                logp = F.log_softmax(logits, dim=-1)
                nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)  # (rows, length - 1)
                for r, (b, _, s) in enumerate(rows):
                    # target at sequence position p sits at column p - b - 1
                    part = nll[r, s - b - 1 :]
                    total += float(part.double().sum())
                    count += part.numel()
            if bar is not None:
                bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return Evaluation(total, count, len(text.encode("utf-8")), window, stride)


def evaluate_bits_per_byte(
    lm, text: str, window: int | None = None, stride: int | None = None, batch_size: int = 8
) -> float:
    """Bits per UTF-8 byte of `text` under `lm` (an `lmgen.LM`), sliding window."""
    return evaluate_text(lm, text, window, stride, batch_size).bits_per_byte
