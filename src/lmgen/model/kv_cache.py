"""The KV cache: keys and values of every layer, preallocated, written at explicit positions."""

from __future__ import annotations

import torch

from ..errors import GenerationError
from .config import GPTConfig


class KVCache:
    """Keys and values for every layer, preallocated to `max_length` positions: k and v are
    (layer, batch, key/value head, position, head_dim), so a grouped-query model stores only
    its key/value heads.

    Written only through its methods: `update(layer, start, k, v)` stores one layer's keys and
    values at explicit positions and returns the filled prefix (gpt-fast's `KVCache.update`);
    `mark(start, attention_mask)` records which of the new positions are real tokens;
    `advance(n)` moves `length` on once every layer is written; `truncate(n)` rolls back
    (speculative decoding); `reorder` and `repeat_rows` move rows (beam search). `mask`
    (batch, max_length) marks real tokens, so left-padded rows never attend to their padding.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (config.n_layer, batch_size, config.kv_heads, max_length, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.mask = torch.ones(batch_size, max_length, dtype=torch.bool, device=device)
        self.has_padding = False
        self._length = 0
        self.max_length = max_length
        # Per-layer views, made once: the decode step indexes no 5-d tensor per token.
        self.layers = [(self.k[i], self.v[i]) for i in range(config.n_layer)]
        self._spare = None  # see reorder

    @property
    def length(self) -> int:
        """Positions filled."""
        return self._length

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes `k`, `v` (batch, head, T, dim) at positions start..start+T of `layer`;
        returns that layer's keys and values for positions 0..start+T."""
        end = start + k.shape[2]
        ck, cv = self.layers[layer]
        ck[:, :, start:end] = k
        cv[:, :, start:end] = v
        return ck[:, :, :end], cv[:, :, :end]

    def mark(self, start: int, attention_mask: torch.Tensor | None, T: int = 1) -> None:
        """Records positions start..start+T as real tokens (no mask) or as `attention_mask`
        (batch, T) says."""
        if attention_mask is None:
            self.mask[:, start : start + T] = True
        else:
            self.mask[:, start : start + T] = attention_mask.bool()
            self.has_padding = self.has_padding or not bool(attention_mask.all())

    def advance(self, n: int) -> None:
        if self._length + n > self.max_length:
            raise GenerationError(f"KV cache holds {self.max_length} positions, needs more")
        self._length += n

    def truncate(self, n: int) -> None:
        """Forgets every position from `n` on (the keys stay, to be overwritten)."""
        if not 0 <= n <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} positions to {n}")
        self._length = n

    def repeat_rows(self, n: int, max_length: int | None = None) -> KVCache:
        """A new cache (of `max_length` positions, default this one's) in which each row is
        repeated `n` times in place (row i -> rows i*n .. i*n+n-1), filled as far as this one."""
        L = self._length
        new = KVCache.__new__(KVCache)
        m = max_length or self.max_length
        nl, B, H, _, D = self.k.shape
        new.k = self.k.new_zeros((nl, B * n, H, m, D))
        new.v = self.v.new_zeros((nl, B * n, H, m, D))
        new.mask = self.mask.new_ones((B * n, m))
        new.k[:, :, :, :L] = self.k[:, :, :, :L].repeat_interleave(n, 1)
        new.v[:, :, :, :L] = self.v[:, :, :, :L].repeat_interleave(n, 1)
        new.mask[:, :L] = self.mask[:, :L].repeat_interleave(n, 0)
        new.has_padding = self.has_padding
        new._length = L
        new.max_length = m
        new.layers = [(new.k[i], new.v[i]) for i in range(nl)]
        new._spare = None
        return new

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i].

        The filled positions are gathered into a second set of buffers, which then become the
        cache (one `index_select` per tensor: 4-6x faster than copying rows in place, which
        needs a temporary anyway since rows can be both source and destination). The spare set,
        made on the first reorder, doubles the cache's memory for beam search only."""
        n = self._length
        if self._spare is None:
            self._spare = (
                torch.empty_like(self.k),
                torch.empty_like(self.v),
                torch.empty_like(self.mask),
            )
        k, v, mask = self._spare
        torch.index_select(self.k[:, :, :, :n], 1, index, out=k[:, :, :, :n])
        torch.index_select(self.v[:, :, :, :n], 1, index, out=v[:, :, :, :n])
        torch.index_select(self.mask, 0, index, out=mask)
        self._spare = (self.k, self.v, self.mask)
        self.k, self.v, self.mask = k, v, mask
        self.layers = [(k[i], v[i]) for i in range(len(self.layers))]
