"""Structured output: generation constrained to a regular expression, a JSON schema, a list of
choices or a context-free grammar, as one more processor in the chain (a mask).

The matching is llguidance's (Microsoft's guidance-ai/llguidance, the engine behind vLLM's,
SGLang's and llama.cpp's llguidance backends): it reads our `tokenizer.json` as it is, knows
what bytes each token of a byte-level BPE vocabulary stands for, and computes the set of tokens
that keep the text a prefix of something the constraint accepts — a few microseconds per step
on the bundled model's 4096 tokens. docs/decoding.md says why this library and not xgrammar
or outlines-core.

The processor derives each row's parser state from the row's generated tokens (kept per prefix,
prefix_state.py), so it works unchanged for greedy, sampling, beam search (beams share and
reorder prefixes) and speculative decoding (proposals and rollbacks), with no hook in the
steppers. When the constraint is complete only end-of-sequence is allowed; a row that reaches
`max_new_tokens` first ends with finish_reason "length", and its text is then only a prefix of
something the constraint accepts.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from lmgen.errors import ConfigError

from .prefix_state import PrefixStates
from .processor_base import NEG_INF, LogitsProcessor, check_int, check_token_ids

log = logging.getLogger(__name__)

# The GenerationConfig fields that name a constraint; at most one is set.
CONSTRAINTS = ("regex", "json_schema", "choice", "grammar")
# JSON is written as Python's json.dumps writes it: ", " and ": ", no other whitespace (a small
# model offered free whitespace tends to fill max_new_tokens with newlines).
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_UNCONSTRAINED = object()  # the state of a row that has ended (its EOS or padding consumed)


def _llguidance():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError(
            "structured output needs the llguidance package: pip install llguidance",
            param="regex",
        ) from None
    return llguidance


def constraint_of(config) -> tuple[str, Any] | None:
    """(field name, value) of the config's constraint, or None."""
    for name in CONSTRAINTS:
        value = getattr(config, name, None)
        if value is not None:
            return name, value
    return None


def schema_text(value: Any) -> str:
    """A JSON schema given as a dict or as JSON text, as canonical JSON text; ConfigError if it
    is neither."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"json_schema is not valid JSON: {e}", param="json_schema") from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"json_schema must be a JSON object (a dict), got {type(value).__name__}",
            param="json_schema",
        )
    return json.dumps(value)


def _grammar_text(kind: str, value: Any) -> str:
    """llguidance's grammar for a constraint (not yet checked)."""
    llg = _llguidance()
    if kind == "regex":
        return llg.LLMatcher.grammar_from_regex(value)
    if kind == "json_schema":
        return llg.LLMatcher.grammar_from_json_schema(schema_text(value), defaults=JSON_LAYOUT)
    if kind == "choice":
        return llg.grammar_from("choice", list(value))
    return llg.grammar_from("grammar", value)  # Lark, or llama.cpp's GBNF (ValueError if bad)


def _one_line(message: str) -> str:
    """llguidance's multi-line error (with the grammar echoed under a caret) as one line."""
    keep = []
    for line in message.splitlines():
        line = line.strip()
        if not line or set(line) <= {"^", " "} or re.match(r"^\d+ \|", line):
            continue
        keep.append(line)
    text = " ".join(keep)
    return re.sub(r"^at \d+\(\d+\): ", "", text)


@lru_cache(maxsize=128)
def _check(kind: str, text: str) -> str:
    """llguidance's complaint about a constraint ("" when it compiles)."""
    llg = _llguidance()
    try:
        grammar = _grammar_text(kind, json.loads(text) if kind == "choice" else text)
        return llg.LLMatcher.validate_grammar(grammar, None)
    except Exception as e:  # whatever the library says of input it cannot take: a 400, not a 500
        return str(e) or type(e).__name__


def check_constraint(kind: str, value: Any) -> None:
    """Raises ConfigError (naming the field) for a constraint that is malformed: a regex that
    does not parse, a JSON schema llguidance cannot compile or that nothing satisfies, a
    grammar with an error. Needs no tokenizer; whether a token can start it is checked when
    the chain is built."""
    if kind in ("regex", "grammar") and (not isinstance(value, str) or not value):
        raise ConfigError(f"{kind} must be a non-empty string, got {value!r}", param=kind)
    if kind == "choice":
        if (
            isinstance(value, str)
            or not isinstance(value, Sequence)
            or not value
            or not all(isinstance(c, str) and c for c in value)
        ):
            raise ConfigError(
                f"choice must be a list of one or more non-empty strings, got {value!r}",
                param="choice",
            )
        text = json.dumps(list(value))
    elif kind == "json_schema":
        text = schema_text(value)
    else:
        text = value
    error = _check(kind, text)
    if error and not error.startswith("WARNING"):
        what = {"regex": "regex", "json_schema": "JSON schema", "choice": "choice list",
                "grammar": "grammar"}[kind]  # fmt: skip
        found = re.findall(r"^error: (.*)$", error, flags=re.M)  # the regex parser's own words
        reason = found[-1] if found else _one_line(error)
        shown = f" {value!r}" if kind == "regex" else ""
        raise ConfigError(f"{kind}{shown} is not a valid {what}: {reason}", param=kind)


_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer, eos_token_ids: Sequence[int]):
    """llguidance's view of our tokenizer, built from its `tokenizer.json` (cached: ~40 ms)."""
    llg = _llguidance()
    per_tokenizer = _TOKENIZERS.setdefault(tokenizer, {})
    key = tuple(eos_token_ids)
    if key not in per_tokenizer:
        backend = getattr(tokenizer, "backend", None)
        if backend is None or not hasattr(backend, "to_str"):
            raise ConfigError(
                "structured output needs a tokenizer stored as a Hugging Face tokenizer.json "
                f"(lmgen's BPE, char or word tokenizers); got {type(tokenizer).__name__}",
                param="regex",
            )
        try:
            per_tokenizer[key] = llg.LLTokenizer(backend.to_str(), eos_token=list(key))
        except Exception as e:
            raise ConfigError(
                f"structured output cannot use this tokenizer: {_one_line(str(e))}",
                param="regex",
            ) from None
    return per_tokenizer[key]


class StructuredOutput(LogitsProcessor):
    """Masks every token that cannot continue the text towards something `kind` accepts:
    `regex` (Rust regex syntax, matched against the whole generated text), `json_schema`, a
    `choice` list (the text is exactly one of the strings) or a context-free `grammar`
    (Lark, or llama.cpp's GBNF). End-of-sequence is allowed exactly when the text so far is
    complete."""

    def __init__(self, kind: str, value: Any, tokenizer, eos_token_ids: Sequence[int], *,
                 prompt_length: int):  # fmt: skip
        if kind not in CONSTRAINTS:
            raise ConfigError(f"constraint must be one of {', '.join(CONSTRAINTS)}, got {kind!r}")
        self.kind, self.value = kind, value
        self.prompt_length = check_int("prompt_length", prompt_length, 0)
        eos = check_token_ids("eos_token_ids", eos_token_ids)
        if not eos:
            raise ConfigError(
                f"{kind} needs an end-of-sequence token to end the constrained text, and this "
                "tokenizer has none",
                param=kind,
            )
        check_constraint(kind, value)
        llg = _llguidance()
        self._tokenizer = ll_tokenizer(tokenizer, eos)
        self.vocab_size = self._tokenizer.vocab_size
        self._words = (self.vocab_size + 31) // 32
        self._root = llg.LLMatcher(self._tokenizer, _grammar_text(kind, value), log_level=0)
        if self._root.is_error():
            raise ConfigError(f"{kind}: {_one_line(self._root.get_error())}", param=kind)
        start = self._allowed([self._root])[0]
        if self._root.is_error() or not bool(start.any()):
            raise ConfigError(
                f"{kind}: no token of this vocabulary can start a text it accepts", param=kind
            )
        self._states: PrefixStates = PrefixStates()

    def _fields(self) -> dict[str, object]:
        value = self.value if isinstance(self.value, str) else json.dumps(self.value)
        if len(value) > 60:
            value = value[:57] + "..."
        return {self.kind: value}

    def _allowed(self, matchers: list) -> torch.Tensor:
        """[len(matchers), vocab_size] bool: the tokens each matcher allows next."""
        bits = np.empty((len(matchers), self._words), dtype=np.int32)
        row_bytes = self._words * 4
        for j, m in enumerate(matchers):
            m.unsafe_compute_mask_ptr(bits.ctypes.data + j * row_bytes, row_bytes)
        # llguidance's bitmask: token 32 * w + i is bit i of 32-bit word w (little-endian)
        flags = np.unpackbits(
            bits.astype("<i4", copy=False).view(np.uint8), axis=-1, bitorder="little"
        )
        return torch.from_numpy(flags.view(np.bool_))[:, : self.vocab_size]

    def _state(self, generated: tuple[int, ...]):
        """The matcher after `generated` (or _UNCONSTRAINED once the row has ended)."""
        if not generated:
            return self._root
        state = self._states.get(generated)
        if state is not None:
            return state
        parent = self._states.get(generated[:-1]) if len(generated) > 1 else self._root
        if parent is None:
            parent = self._replay(generated[:-1])
        if parent is _UNCONSTRAINED or parent.is_stopped() or parent.is_error():
            state = _UNCONSTRAINED
        else:
            state = parent.deep_copy()
            if not state.consume_token(generated[-1]):
                log.debug("%s: token %d ends the row's constraint", self.kind, generated[-1])
                state = _UNCONSTRAINED
        self._states.put(generated, state)
        return state

    def _replay(self, generated: tuple[int, ...]):
        state = self._root.deep_copy()
        if not state.consume_tokens(list(generated)):
            state = _UNCONSTRAINED
        self._states.put(generated, state)
        return state

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        rows = [tuple(r) for r in input_ids[:, self.prompt_length :].tolist()]
        self._states.grow(len(rows))
        unique: dict[tuple[int, ...], int] = {}
        where = [unique.setdefault(r, len(unique)) for r in rows]
        states = [self._state(r) for r in unique]
        live = [j for j, s in enumerate(states) if s is not _UNCONSTRAINED]
        vocab = logits.shape[-1]
        if len(live) == len(states) and vocab == self.vocab_size:
            allowed = self._allowed(states)  # the usual step: every row still constrained
        else:
            allowed = torch.ones((len(states), vocab), dtype=torch.bool)
            if live:
                n = min(vocab, self.vocab_size)
                allowed[live] = False
                allowed[live, :n] = self._allowed([states[j] for j in live])[:, :n]
        if len(unique) != len(rows):
            allowed = allowed[where]
        return torch.where(allowed.to(logits.device), logits, NEG_INF)
