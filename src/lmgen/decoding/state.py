"""The decode state every stepper shares: the token rows and the model's KV cache over them.

`Tokens` holds every token so far, prompt (left-padded) and generated; `DecodeState` runs one
model over them. The model sees at most its context (`n_positions`) of a row: `ensure_room`
is the one place that applies `context_overflow` — "error" raises `ContextLengthError`,
"slide" rebuilds the cache over the newest tokens (learned absolute positions mean a cache
cannot be shifted, so the window is run again). Processors always see the whole sequence.
"""

from __future__ import annotations

import torch

from lmgen.errors import ContextLengthError


class Tokens:
    """Token rows `seq[:, :length]` with `mask` marking real tokens (0 for left padding)."""

    def __init__(self, rows: list[list[int]], room: int, pad_id: int, device):
        width = max(len(r) for r in rows)
        self.prompt_width = width
        self.seq = torch.full((len(rows), width + room), pad_id, dtype=torch.long)
        self.mask = torch.ones((len(rows), width + room), dtype=torch.long)
        for i, r in enumerate(rows):
            self.seq[i, width - len(r) : width] = torch.tensor(r, dtype=torch.long)
            self.mask[i, : width - len(r)] = 0
        self.seq, self.mask = self.seq.to(device), self.mask.to(device)
        self.length = width

    @property
    def rows(self) -> int:
        return self.seq.shape[0]

    @property
    def padded(self) -> bool:
        return not bool(self.mask[:, : self.prompt_width].all())

    def append(self, tokens: torch.Tensor) -> None:
        """Writes one token per row (`tokens` [rows]) at the next column."""
        self.seq[:, self.length] = tokens
        self.length += 1

    def write(self, column: int, tokens: list[int]) -> None:
        """Writes tokens into row 0 from `column` on (speculative proposals); `length` is
        unchanged."""
        self.seq[0, column : column + len(tokens)] = torch.tensor(tokens, device=self.seq.device)

    def repeat_rows(self, n: int) -> None:
        self.seq = self.seq.repeat_interleave(n, 0)
        self.mask = self.mask.repeat_interleave(n, 0)

    def reorder(self, index: torch.Tensor) -> None:
        self.seq = self.seq.index_select(0, index)
        self.mask = self.mask.index_select(0, index)


class DecodeState:
    """One model's KV cache over `tokens`: the cache holds columns `start .. fed` of the rows.

    `feed(keep)` runs the model over the columns not yet fed and returns the logits of the
    last `keep` of them; `step_fn` replaces the model for one-token steps (a compiled step).
    """

    def __init__(self, model, tokens: Tokens, capacity: int, policy: str, step_fn=None):
        self.model = model
        self.tokens = tokens
        self.n_positions = model.config.n_positions
        self.capacity = min(capacity, self.n_positions)
        self.policy = policy
        self.cache = model.new_cache(tokens.rows, self.capacity)
        self.start = 0  # the column at cache position 0
        self.fed = 0  # columns seen by the cache end here
        self.step_fn = step_fn or model

    def ensure_room(self, n: int) -> bool:
        """Checks that `n` more positions fit in the cache. Under "error" a sequence that
        outgrows the model's context raises ContextLengthError; under "slide" the cache is
        emptied and True returned: the caller refeeds the newest tokens."""
        if self.cache.length + n <= self.capacity:
            return False
        if self.policy != "slide":
            total = self.tokens.length
            raise ContextLengthError(
                f"sequence of {total} tokens exceeds the model's context of "
                f"{self.n_positions} positions (n_positions); shorten the prompt, lower "
                "max_new_tokens, or set context_overflow='slide' to keep only the last tokens"
            )
        self.cache = self.model.new_cache(self.tokens.rows, self.capacity)
        return True

    def feed(self, keep: int = 1) -> torch.Tensor:
        """Logits (rows, keep, vocab) of the newest `keep` columns, after feeding every column
        not yet fed."""
        end = self.tokens.length
        n = end - self.fed
        if self.ensure_room(n):
            # A first window fills the cache; later ones leave one position free, so every
            # other step of a long generation is an ordinary cached step.
            width = self.capacity if self.fed == 0 else self.capacity - 1
            self.start = max(0, end - width)
            return self._run(self.start, end, keep, mask=True)
        if n == 1 and self.fed > 0:
            x = self.tokens.seq[:, end - 1 : end]
            logits = self.step_fn(x, cache=self.cache)  # generated tokens are never padding
            self.fed = end
            return logits[:, -keep:]
        return self._run(self.fed, end, keep, mask=self.fed == 0 or self.start > 0)

    def _run(self, begin: int, end: int, keep: int, mask: bool) -> torch.Tensor:
        x = self.tokens.seq[:, begin:end]
        m = self.tokens.mask[:, begin:end] if mask and self.tokens.padded else None
        logits = self.model(x, attention_mask=m, cache=self.cache, logits_to_keep=keep)
        self.fed = end
        return logits

    def rewind(self, column: int) -> None:
        """Forgets the cache from `column` on (speculative decoding's rollback)."""
        if column < self.fed:
            self.cache.truncate(max(0, column - self.start))
            self.fed = column

    def repeat_rows(self, n: int, capacity: int | None = None) -> None:
        """Each row becomes `n` rows (beam search after its prefill); tokens repeated by the
        caller once for all states."""
        if capacity is not None:
            self.capacity = min(capacity, self.n_positions)
        self.cache = self.cache.repeat_rows(n, self.capacity)

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
