"""Tokenizers: one protocol, three kinds, all stored as a Hugging Face `tokenizer.json`.

Each kind wraps a `tokenizers.Tokenizer`, so saving, loading and `transformers.AutoTokenizer`
work the same for all of them; the wrappers add what the protocol promises on top
(strict unknown-word handling, display strings, special token ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .errors import ConfigError, ModelLoadError
from .json_files import first_line, json_type, read_json_file, show

EOS = "<|endoftext|>"
UNK = "<unk>"


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_to_str(self, token_id: int) -> str: ...
    def save(self, directory: str | Path) -> None: ...


def check_text(text: str) -> None:
    """Refuses text that is not valid Unicode: a lone surrogate, which is what a byte that is
    not UTF-8 becomes in Python (surrogateescape) and which no tokenizer can encode. Every
    entry point (generate, next_token, the server, the CLI) encodes through here."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(
                f"the text contains a lone surrogate at position {e.start} ({text[e.start]!r}), "
                "which is not valid Unicode; decode bytes as UTF-8 before passing them",
                "prompt",
            ) from None


class _Wrapped:
    """What the three kinds share: a `tokenizers.Tokenizer` and its special tokens."""

    kind = "base"

    def __init__(
        self, backend: HFTokenizer, eos_token: str | None = None, bos_token: str | None = None
    ):
        self.backend = backend
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.eos_token_id = backend.token_to_id(eos_token) if eos_token else None
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        check_text(text)
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_to_str(self, token_id: int) -> str:
        return self.decode([token_id])

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def save(self, directory: str | Path) -> None:
        """Writes tokenizer.json plus the small files `transformers.AutoTokenizer` reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        special = {
            k: v for k, v in (("eos_token", self.eos_token), ("bos_token", self.bos_token)) if v
        }
        if self.kind == "word" and UNK in self.backend.get_vocab():
            special["unk_token"] = UNK
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            "lmgen_tokenizer": self.kind,
            **special,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class WordTokenizer(_Wrapped):
    """The tutorial's whitespace vocabulary.

    >>> tok = WordTokenizer(["hello", "world", "this", "is", "a", "test", "model", "GPT",
    ...                      "language", "AI"])
    >>> tok.encode("hello world this is")
    [0, 1, 2, 3]
    >>> tok.decode([7, 6])
    'GPT model'

    Unknown words raise by default; `unknown="unk"` maps them to `<unk>` instead — never a
    silent drop.
    """

    kind = "word"

    def __init__(self, vocabulary: list[str] | HFTokenizer, unknown: str = "error"):
        if unknown not in ("error", "unk"):
            raise ConfigError(f"unknown must be 'error' or 'unk', got {unknown!r}", "unknown")
        self.unknown = unknown
        if isinstance(vocabulary, HFTokenizer):
            backend = vocabulary
        else:
            words = list(dict.fromkeys(vocabulary))
            if not words:
                raise ConfigError("a word vocabulary needs at least one word", "vocabulary")
            if any(not w or w.split() != [w] for w in words):
                raise ConfigError("vocabulary words must be non-empty and contain no whitespace")
            if unknown == "unk" and UNK not in words:
                words.append(UNK)
            vocab = {w: i for i, w in enumerate(words)}
            backend = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
            backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        if unknown == "unk" and backend.token_to_id(UNK) is None:
            raise ConfigError("unknown='unk' needs '<unk>' in the vocabulary", "unknown")
        super().__init__(backend)

    def encode(self, text: str) -> list[int]:
        check_text(text)
        vocab = self.backend.get_vocab()
        missing = [w for w in text.split() if w not in vocab]
        if missing and self.unknown == "error":
            raise ConfigError(
                f"words not in the vocabulary: {', '.join(map(repr, missing[:10]))}; "
                "use unknown='unk' to map them to <unk>",
                "prompt",
            )
        return super().encode(text)


class CharTokenizer(_Wrapped):
    """One token per Unicode character of the training text."""

    kind = "char"

    @classmethod
    def from_text(cls, text: str, unknown: str = "error") -> CharTokenizer:
        chars = sorted(set(text))
        if not chars:
            raise ConfigError("cannot build a character vocabulary from empty text", "text")
        vocab = {c: i for i, c in enumerate(chars)}
        vocab.setdefault(UNK, len(vocab))
        backend = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        # One piece per code point, newlines included (Oniguruma has no "(?s)" flag).
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        return cls(backend, unknown)

    def __init__(self, backend: HFTokenizer, unknown: str = "error"):
        super().__init__(backend)
        self.unknown = unknown

    def encode(self, text: str) -> list[int]:
        ids = super().encode(text)
        unk = self.backend.token_to_id(UNK)
        if self.unknown == "error" and unk in ids:
            bad = sorted({c for c in text if self.backend.token_to_id(c) is None})
            raise ConfigError(f"characters not in the vocabulary: {bad[:10]}", "prompt")
        return ids


class BPETokenizer(_Wrapped):
    """Byte-level BPE (GPT-2's scheme): every string round-trips, no unknown tokens."""

    kind = "bpe"

    def __init__(
        self, backend: HFTokenizer, eos_token: str | None = EOS, bos_token: str | None = None
    ):
        if eos_token and backend.token_to_id(eos_token) is None:
            eos_token = None
        if bos_token and backend.token_to_id(bos_token) is None:
            bos_token = None
        super().__init__(backend, eos_token=eos_token, bos_token=bos_token or eos_token)

    @classmethod
    def train(
        cls,
        files: Iterable[str | Path] | None = None,
        vocab_size: int = 8192,
        texts: Iterable[str] | None = None,
        show_progress: bool = False,
    ) -> BPETokenizer:
        if vocab_size < 257:
            raise ConfigError(
                f"vocab_size must be at least 257 (256 bytes + {EOS}), got {vocab_size}",
                "vocab_size",
            )
        backend = HFTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        if texts is not None:
            backend.train_from_iterator(texts, trainer=trainer)
        else:
            backend.train([str(f) for f in files or []], trainer=trainer)
        return cls(backend)

    @classmethod
    def from_vocab_merges(cls, vocab_file: str | Path, merges_file: str | Path) -> BPETokenizer:
        backend = HFTokenizer(models.BPE.from_file(str(vocab_file), str(merges_file)))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        if backend.token_to_id(EOS) is not None:
            backend.add_special_tokens([EOS])  # one token, as in GPT-2's tokenizer.json
        return cls(backend)


def load_tokenizer(directory: str | Path) -> _Wrapped:
    """Loads `tokenizer.json` (ours or GPT-2's), or GPT-2's `vocab.json` + `merges.txt`.

    tokenizer_config.json is checked field by field: a malformed file is a ModelLoadError
    naming it, never a traceback."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if vocab.is_file() and merges.is_file():
            try:
                return BPETokenizer.from_vocab_merges(vocab, merges)
            except BaseException as e:  # tokenizers' Rust panics derive from BaseException
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                raise ModelLoadError(
                    f"{vocab} / {merges}: not a BPE vocabulary ({first_line(e)})"
                ) from e
        raise ModelLoadError(
            f"{directory}: no tokenizer found (expected tokenizer.json, or vocab.json + merges.txt)"
        )
    try:
        backend = HFTokenizer.from_file(str(path))
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ModelLoadError(f"{path}: not a valid tokenizer.json ({first_line(e)})") from e
    cfg_path = directory / "tokenizer_config.json"
    cfg = read_json_file(cfg_path, 64 << 20) if cfg_path.is_file() else {}
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{cfg_path}: expected a JSON object, found {json_type(cfg)}")
    kind = cfg.get("lmgen_tokenizer")
    if kind not in (None, "word", "char", "bpe"):
        raise ModelLoadError(
            f"{cfg_path}: lmgen_tokenizer must be one of 'word', 'char', 'bpe', got {show(kind)}"
        )
    eos, bos, unk = (
        _token_text(cfg, key, cfg_path) for key in ("eos_token", "bos_token", "unk_token")
    )
    model_type = type(backend.model).__name__
    try:
        if kind == "word" or (kind is None and model_type == "WordLevel"):
            return WordTokenizer(backend, unknown="unk" if unk else "error")
        if kind == "char":
            return CharTokenizer(backend)
        return BPETokenizer(backend, eos_token=eos or EOS, bos_token=bos)
    except ConfigError as e:
        raise ModelLoadError(f"{cfg_path}: {e}") from e


def _token_text(cfg: dict, key: str, source: Path) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken object
    (`{"content": "...", ...}`), or absent/null."""
    value = cfg.get(key)
    if isinstance(value, dict):
        value = value.get("content", _MISSING)
    if value is None or isinstance(value, str):
        return value
    raise ModelLoadError(
        f"{source}: {key} must be a string or an object with a 'content' string, got "
        f"{show(cfg.get(key))}"
    )


_MISSING = object()


def check_token_ids(tokenizer, vocab_size: int, source: str) -> None:
    """Every id the tokenizer can produce must index the model's embedding: ids are checked
    (not the count: a vocabulary may have gaps), added tokens included."""
    ids = tokenizer.backend.get_vocab(with_added_tokens=True).values()
    if not ids:
        raise ModelLoadError(f"{source}: the tokenizer has no tokens")
    top = max(ids)
    if top >= vocab_size:
        raise ModelLoadError(
            f"{source}: the tokenizer has {len(ids)} tokens with ids up to {top}, but the "
            f"model's vocab_size is {vocab_size}"
        )
