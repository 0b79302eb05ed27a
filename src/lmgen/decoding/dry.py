"""DRY ("don't repeat yourself"): the repetition penalty llama.cpp added, by the length of the
repeat a token would extend, with text sequence breakers.

Its semantics are llama.cpp's `src/llama-sampling.cpp` (the expected values of its
`tests/test-sampling.cpp` are ported in tests/test_processors_llama.py); the code is our own.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from lmgen.errors import ConfigError
from lmgen.settings import from_

from .processor_base import LogitsProcessor, check_int, check_number

# llama.cpp's defaults for DRY: its sequence breakers, and how much of a breaker it tokenises.
DRY_DEFAULT_BREAKERS = ("\n", ":", '"', "*")
DRY_MAX_BREAKER_CHARS = 40
DRY_MAX_BREAKER_TOKENS = 20
_FLOAT_MAX_LOG = 88.7228391  # log(float32 max): DRY's exponent is capped below overflow


class DRY(LogitsProcessor):
    """DRY ("don't repeat yourself", by pi6am; as in llama.cpp): a token that would extend a
    repeat of at least `allowed_length` tokens — the end of the sequence already occurring
    earlier, followed by that token — is penalised by `multiplier * base ** (n -
    allowed_length)`, n the longest such repeat. The last `penalty_last_n` tokens are looked
    at (-1: the whole sequence, prompt included; 0: off). A sequence breaker (a token
    sequence) cuts the repeats that can be matched: none reaches back past the most recent
    breaker, and a token that is a breaker on its own is never penalised."""

    def __init__(self, multiplier: float, base: float = 1.75, allowed_length: int = 2,
                 penalty_last_n: int = -1,
                 breakers: Sequence[Sequence[int]] = ()):  # fmt: skip
        self.multiplier = check_number("dry_multiplier", multiplier, from_(0))
        self.base = check_number("dry_base", base, from_(1))
        self.allowed_length = check_int("dry_allowed_length", allowed_length)
        if (
            not isinstance(penalty_last_n, int)
            or isinstance(penalty_last_n, bool)
            or (penalty_last_n < -1)
        ):
            raise ConfigError(
                f"dry_penalty_last_n must be -1 (the whole sequence), 0 (off) or an int > 0, "
                f"got {penalty_last_n!r}",
                param="dry_penalty_last_n",
            )
        self.penalty_last_n = penalty_last_n
        # head token -> the tails (the breaker's later tokens) of the breakers it starts
        self.breakers: dict[int, list[tuple[int, ...]]] = {}
        for seq in breakers:
            seq = tuple(seq)
            if seq and seq[1:] not in self.breakers.setdefault(seq[0], []):
                self.breakers[seq[0]].append(seq[1:])
        self.max_exponent = max_exponent(self.base)

    @classmethod
    def from_strings(cls, multiplier: float, base: float, allowed_length: int,
                     penalty_last_n: int, breakers: Sequence[str], tokenizer) -> DRY:  # fmt: skip
        """Breakers given as text, turned into token sequences as llama.cpp does: every token
        whose text contains the breaker is a breaker on its own; a token whose text ends
        with the start of the breaker begins one, followed by the tokens of the rest (at most
        20 of them). Breakers are cut to 40 characters."""
        return cls(multiplier, base, allowed_length, penalty_last_n,
                   breaker_token_sequences(breakers, tokenizer))  # fmt: skip

    def _fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "multiplier": self.multiplier,
            "base": self.base,
            "allowed_length": self.allowed_length,
        }
        if self.penalty_last_n != -1:
            fields["penalty_last_n"] = self.penalty_last_n
        return fields

    @property
    def active(self) -> bool:
        return self.multiplier > 0 and self.penalty_last_n != 0

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return logits
        n = self.penalty_last_n
        window = input_ids if n == -1 else input_ids[:, -n:]
        rows, cols, values = [], [], []
        vocab = logits.shape[-1]
        for b, row in enumerate(window.tolist()):
            for token, penalty in self.penalties(row).items():
                if 0 <= token < vocab:
                    rows.append(b)
                    cols.append(token)
                    values.append(penalty)
        if not rows:
            return logits
        out = logits.clone()
        out[rows, cols] -= torch.tensor(values, dtype=logits.dtype, device=logits.device)
        return out

    def penalties(self, window: list[int]) -> dict[int, float]:
        """token -> the penalty subtracted from its logit, for one row's last tokens."""
        n = len(window)
        allowed = self.allowed_length
        if n <= allowed:
            return {}
        rev = window[::-1]  # rev[0] is the newest token
        # A breaker whose last token is i tokens back limits the repeats to the i - len + 1
        # tokens after it; the most recent breaker decides.
        limit = n
        for i, token in enumerate(rev):
            tails = self.breakers.get(token)
            if tails is None:
                continue
            longest = -1
            for tail in tails:
                t = len(tail)
                if longest < t <= i and all(tail[o] == rev[i - o - 1] for o in range(t)):
                    longest = t
            if longest >= 0:
                limit = i - longest
                break
        if limit < allowed:
            return {}
        # z[k]: how many of the newest tokens are repeated ending k tokens back; the token
        # that followed there would extend that repeat.
        z = _z_function(rev)
        longest_after: dict[int, int] = {}
        for k in range(1, n):
            length = min(z[k], limit)
            if length >= allowed:
                token = window[n - k]
                if longest_after.get(token, -1) < length:
                    longest_after[token] = length
        out = {}
        for token, length in longest_after.items():
            if () in self.breakers.get(token, ()):
                continue  # a breaker on its own is never penalised
            exponent = length - allowed
            if self.max_exponent > 0:
                exponent = min(exponent, self.max_exponent)
            out[token] = self.multiplier * self.base**exponent
        return out


def max_exponent(base: float) -> int:
    """The cap on DRY's exponent, so that base ** exponent stays below float32's largest
    value: log(float32 max) / log(base), computed in float32 as llama.cpp and vLLM compute it
    (128 for base 2, where float64 gives 127); 0 (no cap) for a base of about 1."""
    if base <= 1.000001:
        return 0
    log_base = torch.tensor(base, dtype=torch.float32).log()
    return int(torch.tensor(_FLOAT_MAX_LOG, dtype=torch.float32) / log_base)


def _z_function(s: list[int]) -> list[int]:
    """z[k] = the length of the longest common prefix of s and s[k:] (z[0] = len(s))."""
    n = len(s)
    z = [0] * n
    if n:
        z[0] = n
    left = right = 0  # s[left:right] is the rightmost segment found that matches a prefix
    for k in range(1, n):
        if k < right:
            z[k] = min(right - k, z[k - left])
        while k + z[k] < n and s[z[k]] == s[k + z[k]]:
            z[k] += 1
        if k + z[k] > right:
            left, right = k, k + z[k]
    return z


_BREAKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {...}


def breaker_token_sequences(breakers: Sequence[str], tokenizer) -> list[tuple[int, ...]]:
    """DRY's text breakers as token sequences for `tokenizer` (see `DRY.from_strings`)."""
    per_tokenizer = _BREAKERS.setdefault(tokenizer, {})
    key = tuple(breakers)
    if key not in per_tokenizer:
        per_tokenizer[key] = _breaker_sequences(key, tokenizer)
    return per_tokenizer[key]


def _breaker_sequences(breakers: tuple[str, ...], tokenizer) -> list[tuple[int, ...]]:
    texts = _token_texts(tokenizer)
    out: list[tuple[int, ...]] = []
    for breaker in breakers:
        breaker = breaker[:DRY_MAX_BREAKER_CHARS]
        if not breaker:
            continue
        for token, word in enumerate(texts):
            if breaker in word:
                out.append((token,))
                continue
            # every place where the token's text ends with the start of the breaker
            pos = word.find(breaker[0])
            while pos != -1:
                overlap = len(word) - pos
                if breaker.startswith(word[pos:]) and overlap < len(breaker):
                    tail = tokenizer.encode(breaker[overlap:], add_special_tokens=False)
                    tail = tail[:DRY_MAX_BREAKER_TOKENS]
                    out.append((token, *tail))
                pos = word.find(breaker[0], pos + 1)
    return list(dict.fromkeys(out))


def _token_texts(tokenizer) -> list[str]:
    backend = getattr(tokenizer, "backend", None)
    ids = [[i] for i in range(tokenizer.vocab_size)]
    if backend is not None:
        return backend.decode_batch(ids, skip_special_tokens=False)
    return [tokenizer.decode(i) for i in ids]
