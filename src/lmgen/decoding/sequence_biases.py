"""Sequence bias (transformers' `SequenceBiasLogitsProcessor`): a bias on whole token
sequences, not only single tokens.

A one-token sequence biases its token at every step; a longer one biases its last token
whenever the text ends with the rest of it, so `[[" Donald", " Duck"], -10]` makes " Duck"
unlikely only right after " Donald". Biases of sequences that end in the same token at the
same step add up, as in transformers.
"""

from __future__ import annotations

import torch

from .processor_base import LogitsProcessor, check_bias_pairs, check_in_vocab


class SequenceBias(LogitsProcessor):
    def __init__(self, sequence_bias: object):
        self.pairs = check_bias_pairs("sequence_bias", sequence_bias)
        single = [(ids[0], b) for ids, b in self.pairs if len(ids) == 1]
        self._single_ids = torch.tensor([t for t, _ in single], dtype=torch.long)
        self._single_bias = torch.tensor([b for _, b in single], dtype=torch.float32)
        by_prefix: dict[int, list[tuple[tuple[int, ...], float]]] = {}
        for ids, b in self.pairs:
            if len(ids) > 1:
                by_prefix.setdefault(len(ids) - 1, []).append((ids, b))
        # per prefix length: (prefixes [g, p], last tokens [g], biases [g])
        self._groups = [
            (torch.tensor([ids[:-1] for ids, _ in group]),
             torch.tensor([ids[-1] for ids, _ in group]),
             torch.tensor([b for _, b in group], dtype=torch.float32))
            for group in by_prefix.values()
        ]  # fmt: skip

    def _fields(self) -> dict[str, object]:
        return {"sequence_bias": [[list(ids), b] for ids, b in self.pairs]}

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        check_in_vocab("sequence_bias", (t for ids, _ in self.pairs for t in ids), logits.shape[-1])
        device = logits.device
        bias = torch.zeros_like(logits)
        # a repeated one-token sequence: the last bias given wins (a dict would keep one)
        bias[:, self._single_ids.to(device)] = self._single_bias.to(device, logits.dtype)
        length = input_ids.shape[1]
        for prefixes, last, values in self._groups:
            p = prefixes.shape[1]
            if p > length:
                continue
            hit = (input_ids[:, None, length - p :] == prefixes.to(device)).all(dim=-1)
            add = torch.where(hit, values.to(device), 0.0).to(logits.dtype)
            bias.index_add_(1, last.to(device), add)
        return logits + bias
