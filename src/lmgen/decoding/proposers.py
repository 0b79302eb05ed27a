"""Where speculative decoding's proposals come from: a draft model sharing the tokenizer, the
text itself (prompt lookup), or a draft model with a tokenizer of its own (universal assisted
decoding).

A proposer's `propose(n, k)` writes up to `k` tokens into the sequence from column `n` on and
returns them with the draft's distribution of each (`q`, for the rejection rule of
Leviathan et al.) or None when there is no such distribution: then the model checks the
proposals by drawing its own token at each place and keeping the proposals up to the first
that differs, so the tokens are exactly those of plain decoding, seed for seed
(speculative.py). `rewind(column)` forgets what the proposer saw from `column` on.
"""

from __future__ import annotations

import logging

import torch

from lmgen.errors import LmgenError

from .sampling import draw
from .state import DecodeState, Tokens

log = logging.getLogger(__name__)


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().softmax(dim=-1)


class DraftModel:
    """A smaller model over the same tokens: it sees the same processor chain and, when
    sampling, draws its proposals from its processed distribution."""

    def __init__(self, draft, tokens: Tokens, capacity: int, policy: str, process, sample, gen):
        self.state = DecodeState(draft.model, tokens, capacity, policy)
        self.capacity = self.state.capacity
        self.tokens, self.process, self.sample, self.gen = tokens, process, sample, gen

    def prefill(self) -> None:
        self.state.feed()

    def propose(self, n: int, k: int) -> tuple[list[int], list[torch.Tensor] | None]:
        d_tokens, d_probs = [], []
        for j in range(k):
            logits = self.state.feed()[:, -1].float()
            q_scores = self.process(n + j, logits)[0]
            if self.sample:
                q = _probs(q_scores)
                t = int(draw(q[None], [self.gen])[0])
                d_probs.append(q)
            else:
                t = int(q_scores.argmax())
            d_tokens.append(t)
            self.tokens.write(n + j, [t])
            self.tokens.length = n + j + 1
        return d_tokens, (d_probs if self.sample else None)

    def rewind(self, column: int) -> None:
        self.state.rewind(column)


def prompt_lookup(seq: torch.Tensor, max_ngram: int, k: int) -> list[int]:
    """transformers' prompt-lookup candidates: for n from `max_ngram` down to 1, the first
    earlier place where the last n tokens of `seq` occur, and the up-to-`k` tokens that
    followed it there; [] when no n-gram recurs."""
    length = seq.shape[0]
    for n in range(min(max_ngram, length - 1), 0, -1):
        hits = (seq.unfold(0, n, 1) == seq[length - n :]).all(dim=-1).nonzero().flatten()
        for start in (hits + n).tolist():
            end = min(start + k, length)
            if start < end:
                return seq[start:end].tolist()
    return []


class PromptLookup:
    """Prompt-lookup decoding (transformers' `prompt_lookup_num_tokens`, vLLM's n-gram
    speculation): proposals copied from the text so far. Pays where the output repeats the
    prompt (summaries, code edits, quoting); on free text few proposals are kept and each
    round costs a wider model pass."""

    def __init__(self, tokens: Tokens, max_ngram: int):
        self.tokens, self.max_ngram = tokens, max_ngram
        self.capacity = None

    def prefill(self) -> None:
        pass

    def propose(self, n: int, k: int) -> tuple[list[int], None]:
        found = prompt_lookup(self.tokens.seq[0, :n], self.max_ngram, k)
        if found:
            self.tokens.write(n, found)
        return found, None

    def rewind(self, column: int) -> None:
        pass


class CrossTokenizerDraft:
    """Universal assisted decoding (transformers' `assistant_tokenizer`): a draft model with a
    tokenizer of its own. Each round the text so far is encoded with the draft's tokenizer
    (its cache kept over the longest prefix that did not change), the draft continues it
    greedily by k of its tokens, and that continuation, as text, is encoded with the model's
    tokenizer; the model's tokens past the current ones are the proposals. Where the new text
    re-encodes the current text differently (a merge across the boundary), or either
    tokenizer cannot encode the text, the round proposes nothing and the model makes one
    token alone.

    The current text is compared as the model's tokenizer encodes it, not as the ids it came
    from: a tokenizer that adds BOS decodes it as text ("<bos>") which encodes back as two, and
    the draft is given the text without the model's leading BOS (it adds its own, if any)."""

    def __init__(self, lm, draft, tokens: Tokens, capacity: int):
        self.tok, self.draft_tok = lm.tokenizer, draft.tokenizer
        self.bos = getattr(lm.tokenizer, "bos_token_id", None)
        self.tokens = tokens
        n_pos = draft.model.config.n_positions
        self.draft_tokens = Tokens([[0]], n_pos, 0, tokens.seq.device)
        self.state = DecodeState(draft.model, self.draft_tokens, n_pos, "error")
        self.capacity = None
        self.seen: list[int] = []  # the draft tokens its cache holds (the first `fed`)

    def prefill(self) -> None:
        pass

    def _encode(self, tok, text: str) -> list[int] | None:
        try:
            return list(tok.encode(text))
        except (LmgenError, ValueError, KeyError):
            return None

    def propose(self, n: int, k: int) -> tuple[list[int], None]:
        current = self.tokens.seq[0, :n].tolist()
        text = self.tok.decode(current)
        own = current[1:] if current and current[0] == self.bos else current
        ids = self._encode(self.draft_tok, self.tok.decode(own)) if own else None
        if not ids or len(ids) + k >= self.state.capacity:
            return [], None
        same = 0
        for a, b in zip(ids, self.seen[: self.state.fed], strict=False):
            if a != b:
                break
            same += 1
        self.state.rewind(min(same, len(ids) - 1))
        self.draft_tokens.seq[0, : len(ids)] = torch.tensor(ids)
        self.draft_tokens.length = len(ids)
        made = []
        for _ in range(k):
            t = int(self.state.feed()[0, -1].argmax())
            self.draft_tokens.seq[0, self.draft_tokens.length] = t
            self.draft_tokens.length += 1
            made.append(t)
        self.seen = ids + made
        before = self.draft_tok.decode(ids)
        after = self.draft_tok.decode(ids + made)
        if not after.startswith(before):
            return [], None
        base = self._encode(self.tok, text)  # `current`, unless the text reads otherwise
        full = self._encode(self.tok, text + after[len(before) :])
        if base is None or full is None or full[: len(base)] != base:
            return [], None
        found = full[len(base) : len(base) + k]
        if found:
            self.tokens.write(n, found)
        return found, None

    def rewind(self, column: int) -> None:
        pass  # the next round finds the draft's common prefix itself
