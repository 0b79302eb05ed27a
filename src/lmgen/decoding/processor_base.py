"""What every logits processor shares: the base class and the checks that refuse bad values
where they enter (a ConfigError naming the parameter)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lmgen.errors import ConfigError
from lmgen.settings import Range, at_least

NEG_INF = float("-inf")
FINITE = Range()  # any finite number


class LogitsProcessor:
    """Base class: subclasses validate in `__init__` and implement `__call__`."""

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _fields(self) -> dict[str, object]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._fields().items())
        return f"{type(self).__name__}({args})"


def check_int(name: str, value: object, low: int = 1) -> int:
    return at_least(low).check(name, value)


def check_number(name: str, value: object, allowed: Range = FINITE) -> float:
    """`value` as a float, or the ConfigError of lmgen.settings' one number check."""
    return float(allowed.check(name, value))


# The largest token id a setting may name (18 digits, as the HTTP API's logit_bias keys): within
# torch.long, so that a tensor of ids can hold it; the model's vocabulary is checked at use.
MAX_TOKEN_ID = 10**18 - 1


def check_token_ids(name: str, ids: Iterable[object]) -> list[int]:
    out = list(ids)
    for t in out:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= MAX_TOKEN_ID:
            raise ConfigError(
                f"{name} must hold token ids (ints from 0 to {MAX_TOKEN_ID}), got {t!r}",
                param=name,
            )
    return out


def check_bias_pairs(
    name: str, value: object, allowed: Range = FINITE
) -> list[tuple[tuple[int, ...], float]]:
    """`value` as (token ids, bias) pairs, from transformers' two forms of a sequence bias,
    `{(ids...): bias}` and `[[ids, bias], ...]`; a ConfigError naming `name` otherwise."""
    if not isinstance(value, dict | list | tuple) or not value:
        raise ConfigError(
            f"{name} must be a non-empty list of [token ids, bias] pairs, or a dict "
            f"{{(token ids...): bias}}, got {value!r}",
            param=name,
        )
    pairs = []
    for item in value.items() if isinstance(value, dict) else value:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ConfigError(f"{name} entries must be [token ids, bias] pairs, got {item!r}",
                              param=name)  # fmt: skip
        ids, bias = item
        if isinstance(ids, str | bytes) or not isinstance(ids, list | tuple) or not ids:
            raise ConfigError(
                f"{name} token ids must be a non-empty list of ints, got {ids!r}", param=name
            )
        pairs.append((tuple(check_token_ids(name, ids)), check_number(name, bias, allowed)))
    return pairs


def check_in_vocab(name: str, ids: Iterable[int], vocab_size: int) -> None:
    too_big = sorted({t for t in ids if t >= vocab_size})
    if too_big:
        raise ConfigError(
            f"{name} has token ids outside the vocabulary (size {vocab_size}): {too_big}",
            param=name,
        )


def seen_mask(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[batch, vocab] bool: which tokens occur in each row of `ids`.

    Ids outside [0, vocab) (padding the model can't produce) land in a spare column and are
    dropped.
    """
    ids = torch.where((ids < 0) | (ids >= vocab_size), vocab_size, ids)
    seen = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    seen.scatter_(1, ids, True)
    return seen[:, :vocab_size]


def keep_top(logits: torch.Tensor, remove: torch.Tensor, min_tokens_to_keep: int) -> torch.Tensor:
    """`remove` with the `min_tokens_to_keep` highest logits of each row (and any tie with the
    last of them) kept, as transformers' epsilon/eta warpers keep them."""
    k = min(min_tokens_to_keep, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return remove & (logits < kth)
