"""Text from tokens, for every decoding path: detokenisation as tokens arrive, stop strings,
and what is safe to emit (the vLLM v1 split: the engine makes token ids, this turns them
into text)."""

from __future__ import annotations


def stop_cut(tok, token_ids: list[int], text: str, stop: list[str]) -> tuple[str, int] | None:
    """Where `text` (the decoding of `token_ids`) meets its first stop string: the text before
    it and how many tokens produced that text (the last may straddle the stop string); None
    when no stop string occurs."""
    first = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if first < 0:
        return None
    kept = text[:first]
    k = 0
    while k < len(token_ids) and len(tok.decode(token_ids[:k])) < len(kept):
        k += 1
    return kept, k


class TextTracker:
    """One choice's text as its tokens arrive.

    `update(token_ids)` decodes the tokens so far and, when stop strings are set, returns the
    number of tokens to keep if one has appeared (the text is cut before it). `delta()` is the
    text not yet emitted that is safe to emit now: an unfinished UTF-8 sequence (decoded as
    U+FFFD) and a tail that could still become a stop string are held back until the next
    token decides them; `delta(final=True)` releases everything."""

    def __init__(self, tok, stop: list[str] | None):
        self.tok = tok
        self.stop = list(stop or [])
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.emitted = 0
        self.cut = False

    def update(self, token_ids: list[int]) -> int | None:
        if self.cut:
            return None
        self.text = self.tok.decode(token_ids)
        if not self.stop:
            return None
        found = stop_cut(self.tok, token_ids, self.text, self.stop)
        if found is None:
            return None
        self.text, k = found
        self.cut = True
        return k

    def delta(self, final: bool = False) -> str:
        safe = len(self.text) if final or self.cut else len(self.text.rstrip("\ufffd"))
        if not (final or self.cut):
            safe -= self.holdback
        if safe <= self.emitted:
            return ""
        out = self.text[self.emitted : safe]
        self.emitted = safe
        return out
