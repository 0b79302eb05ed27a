"""State that is a function of the tokens so far, kept per prefix.

A stateful processor (Mirostat's target surprise, a grammar's parser state) is told nothing by
the steppers: it reads the state of a row from the row's own tokens. The state after a
sequence is derived from the state after the sequence minus its last token and that token, so
it is kept per prefix: asking twice for the same step (a `next_logits()` and then a `step()`),
beams that share a prefix, beams reordered every step, and speculative decoding's proposals
and rollbacks all find the right state, and the steppers need no hooks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

S = TypeVar("S")


class PrefixStates(Generic[S]):
    """A bounded map from a prefix key (a tuple ending with the prefix's tokens) to a state;
    the least recently used entries go first. A run asks for the newest prefixes (and their
    parents) every step, so a few entries per row suffice; a miss is the caller's to rebuild
    from an earlier state."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._states: OrderedDict[Hashable, S] = OrderedDict()

    def get(self, key: Hashable) -> S | None:
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def put(self, key: Hashable, state: S) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def grow(self, rows: int) -> None:
        """Room for at least a few prefixes per row of a batch of `rows`."""
        self.capacity = max(self.capacity, 8 * rows)

    def __len__(self) -> int:
        return len(self._states)
