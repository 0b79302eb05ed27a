"""Every continuation scored by the model it came from, conditioned on its prompt.

One forward pass over prompt + continuation (the way `lmgen eval` scores a text: log-softmax
of the logits, the negative log-probability of each next token), giving per continuation
token: its loss in nats, the entropy of the model's distribution there, and — for MAUVE —
the final hidden state after the last token. Rows of a batch are right-padded; padding after
a row's end cannot change its earlier positions under causal attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import entropy


@dataclass
class Scored:
    nll: np.ndarray  # (len,) nats: -log p(token | prompt, earlier tokens)
    entropy: np.ndarray  # (len,) nats: of the model's distribution before each token
    feature: np.ndarray | None = None  # (n_embd,) final hidden state at the last token


@torch.inference_mode()
def score(
    lm, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16, features: bool = False
) -> list[Scored]:
    """One `Scored` per (prompt ids, continuation ids); an empty continuation scores empty."""
    model = lm.model
    was_training = model.training
    model.eval()
    pad = lm.eos_token_ids[0] if lm.eos_token_ids else 0
    out: list[Scored | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    try:
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in rows]
            width = max(len(s) for s in seqs)
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            for r, s in enumerate(seqs):
                x[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            x = x.to(lm.device)
            if features:
                logits, hidden = model(x, output_hidden_states=True)
            else:
                logits, hidden = model(x), None
            logp = F.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(rows):
                p_len, c_len = len(pairs[i][0]), len(pairs[i][1])
                if c_len == 0:
                    out[i] = Scored(np.zeros(0), np.zeros(0), None)
                    continue
                # logits at position t predict token t + 1
                pos = torch.arange(p_len - 1, p_len + c_len - 1, device=x.device)
                targets = x[r, p_len : p_len + c_len]
                nll = -logp[r, pos].gather(-1, targets[:, None])[:, 0]
                ent = entropy(logits[r, pos].float())
                feat = None
                if hidden is not None:
                    feat = hidden[r, p_len + c_len - 1].float().cpu().numpy()
                out[i] = Scored(nll.double().cpu().numpy(), ent.cpu().numpy(), feat)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]
