"""Tokenizers: one protocol, four kinds, all stored as a Hugging Face `tokenizer.json`.

Each kind wraps a `tokenizers.Tokenizer`, so saving, loading and `transformers.AutoTokenizer`
work the same for all of them; the wrappers add what the protocol promises on top
(strict unknown-word handling, display strings, special token ids).

Three kinds are lmgen's own (word, char, byte-level BPE: no special tokens added on encode).
The fourth, `PretrainedTokenizer`, is a released model's: a Hugging Face directory's
`tokenizer.json` + `tokenizer_config.json`, or one rebuilt from a GGUF file's metadata as
transformers rebuilds it; `encode` adds BOS/EOS where transformers would
(`AutoTokenizer(...)(text)["input_ids"]`).
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. lmgen's own kinds add no special tokens either way; a released
        model's (PretrainedTokenizer) adds BOS/EOS unless `add_special_tokens=False`."""
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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
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


def sentencepiece_backend(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    style: str = "llama",
    prepend_scheme: str = "first",
) -> HFTokenizer:
    """SentencePiece-style BPE with byte fallback, built as transformers' LlamaTokenizer
    (`style="llama"`: Metaspace, "▁" prepended per `prepend_scheme`) or GemmaTokenizer
    (`style="gemma"`: spaces replaced by "▁", nothing prepended) builds it."""
    if style == "gemma":
        backend = HFTokenizer(
            models.BPE(
                vocab=vocab,
                merges=merges,
                fuse_unk=True,
                unk_token="<unk>",
                dropout=None,
                byte_fallback=True,
            )
        )
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        return backend
    backend = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None)
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme=prepend_scheme, split=False
    )
    strip = [decoders.Strip(content=" ", left=1)] if prepend_scheme != "never" else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    return backend


class PretrainedTokenizer(_Wrapped):
    """A released model's tokenizer: whatever `tokenizer.json` describes (byte-level BPE,
    SentencePiece-style BPE with byte fallback, ...), with its special tokens, and BOS/EOS added
    on `encode` where transformers adds them: by the post-processor, rebuilt as transformers
    rebuilds it (`TokenizersBackend.update_post_processor`) when `add_bos_token` or
    `add_eos_token` is stated or there is none.

    `encode(text)` equals `transformers.AutoTokenizer(...)(text)["input_ids"]`;
    `encode(text, add_special_tokens=False)` leaves BOS/EOS out (chat templates write them)."""

    kind = "pretrained"

    def __init__(
        self,
        backend: HFTokenizer,
        eos_token: str | None = None,
        bos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        chat_template: str | None = None,
    ):
        super().__init__(backend, eos_token=eos_token, bos_token=bos_token)
        self.unk_token, self.pad_token = unk_token, pad_token
        self.unk_token_id = backend.token_to_id(unk_token) if unk_token else None
        self.pad_token_id = backend.token_to_id(pad_token) if pad_token else None
        self.chat_template = chat_template
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        if add_bos_token is not None or add_eos_token is not None or not backend.post_processor:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        """transformers' template: `[bos] $A [eos]`, each where asked and the token exists."""
        bos = self.bos_token if add_bos and self.bos_token_id is not None else None
        eos = self.eos_token if add_eos and self.eos_token_id is not None else None
        single = " ".join([f"{bos}:0"] * bool(bos) + ["$A:0"] + [f"{eos}:0"] * bool(eos))
        pair = " ".join([single] + [f"{bos}:1"] * bool(bos) + ["$B:1"] + [f"{eos}:1"] * bool(eos))
        specials = [(t, self.backend.token_to_id(t)) for t in (bos, eos) if t]
        self.backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=list(dict.fromkeys(specials))
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        check_text(text)
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def save(self, directory: str | Path) -> None:
        """tokenizer.json (post-processor included) and a tokenizer_config.json naming the
        special tokens; transformers loads them back to the same ids."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        special = {
            key: value
            for key, value in (
                ("bos_token", self.bos_token),
                ("eos_token", self.eos_token),
                ("unk_token", self.unk_token),
                ("pad_token", self.pad_token),
            )
            if value
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
            **special,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


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
        if kind == "bpe":
            return BPETokenizer(backend, eos_token=eos or EOS, bos_token=bos)
    except ConfigError as e:
        raise ModelLoadError(f"{cfg_path}: {e}") from e
    return _pretrained(backend, cfg, cfg_path, directory)


def _pretrained(backend: HFTokenizer, cfg: dict, cfg_path: Path, directory: Path):
    """A Hugging Face directory's tokenizer (no lmgen_tokenizer key): special tokens from
    tokenizer_config.json, else special_tokens_map.json; a directory naming none (GPT-2's
    tokenizer_config.json holds only model_max_length) gets GPT-2's <|endoftext|>, as before."""
    map_path = directory / "special_tokens_map.json"
    smap = read_json_file(map_path, 64 << 20) if map_path.is_file() else {}
    if not isinstance(smap, dict):
        raise ModelLoadError(f"{map_path}: expected a JSON object, found {json_type(smap)}")
    tokens = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        source, where = (cfg, cfg_path) if key in cfg else (smap, map_path)
        tokens[key] = _token_text(source, key, where)
    if not any(key in cfg or key in smap for key in ("bos_token", "eos_token")):
        if backend.token_to_id(EOS) is not None:
            tokens["bos_token"] = tokens["eos_token"] = EOS
    flags = {}
    for key in ("add_bos_token", "add_eos_token"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, bool):
            raise ModelLoadError(f"{cfg_path}: {key} must be true or false, got {show(value)}")
        flags[key] = value
    backend = _rebuilt_for_class(backend, cfg, cfg_path)
    template = cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise ModelLoadError(f"{cfg_path}: chat_template must be a string, got {show(template)}")
    # transformers 5 keeps tokenizer.json's post-processor and does not rebuild it from
    # add_bos_token/add_eos_token when it loads a directory: neither does lmgen
    tok = PretrainedTokenizer(backend, **tokens, chat_template=template)
    tok.add_bos_token, tok.add_eos_token = flags["add_bos_token"], flags["add_eos_token"]
    return tok


# tokenizer classes whose transformers 5 constructor rebuilds the backend from tokenizer.json's
# vocabulary and merges with its own normalizer, pre-tokenizer and decoder (keeping the
# post-processor and added tokens); the byte-level classes (GPT2Tokenizer, Qwen2Tokenizer,
# GPTNeoXTokenizer) rebuild what their tokenizer.json already says
_SENTENCEPIECE_CLASSES = {
    "LlamaTokenizer": "llama",
    "LlamaTokenizerFast": "llama",
    "CodeLlamaTokenizer": "llama",
    "CodeLlamaTokenizerFast": "llama",
    "GemmaTokenizer": "gemma",
    "GemmaTokenizerFast": "gemma",
}


def _rebuilt_for_class(backend: HFTokenizer, cfg: dict, cfg_path: Path) -> HFTokenizer:
    style = _SENTENCEPIECE_CLASSES.get(cfg.get("tokenizer_class"))
    if style is None or type(backend.model).__name__ != "BPE":
        return backend
    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]
    ]
    add_prefix_space = cfg.get("add_prefix_space")
    legacy = cfg.get("legacy", False)
    if add_prefix_space is False:
        scheme = "never"
    else:
        scheme = "always" if legacy else "first"
    try:
        rebuilt = sentencepiece_backend(vocab, merges, style, scheme)
    except BaseException as e:  # tokenizers' Rust panics derive from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ModelLoadError(f"{cfg_path}: cannot rebuild its tokenizer ({first_line(e)})") from e
    rebuilt.post_processor = backend.post_processor
    added = sorted(backend.get_added_tokens_decoder().items())
    for _, token in added:
        if token.special:
            rebuilt.add_special_tokens([token])
        else:
            rebuilt.add_tokens([token])
    return rebuilt


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


# --- tokenizers rebuilt from GGUF metadata -----------------------------------------------------
#
# A GGUF file carries its vocabulary as `tokenizer.ggml.*` keys. transformers rebuilds a
# tokenizer from them (integrations/gguf/gguf_tokenizer_mapping.py); this does the same, with
# the same normalizer, pre-tokenizer, decoder, special tokens and BOS rule, so the ids agree.

# `tokenizer.ggml.pre` -> the regex that splits text before the byte-level merges (the
# pre-tokenizers of the models llama.cpp names); other names keep GPT-2's split.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_SPLITS = {
    **dict.fromkeys(
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
        ),
        _LLAMA3_SPLIT,
    ),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}
GGUF_TOKENIZER_MODELS = ("gpt2", "llama")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map (bytes_to_unicode)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


@functools.lru_cache(maxsize=1)
def _byte_of() -> dict[str, int]:
    return {ch: b for b, ch in _byte_alphabet().items()}


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes a byte-level token stands for: a byte-level BPE piece (GPT-2's alphabet, in
    lmgen's own BPE or a released model's), or a SentencePiece byte-fallback piece such as
    `<0xE6>`; None for other tokens and tokenizers."""
    backend = getattr(tokenizer, "backend", None)
    if getattr(tokenizer, "kind", None) not in ("bpe", "pretrained") or backend is None:
        return None
    piece = backend.id_to_token(int(token_id))
    if piece is None:
        return None
    fallback = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    byte_of = _byte_of()
    if not all(ch in byte_of for ch in piece):
        return None  # a special token such as <|endoftext|>, or a SentencePiece word
    return bytes(byte_of[ch] for ch in piece)


def token_utf8(tokenizer, token_id: int) -> bytes:
    """The bytes of one token's text: its raw bytes where the token alone is not whole UTF-8
    (part of a multi-byte character, shown as U+FFFD by `token_to_str`), else its text's UTF-8.
    What OpenAI's logprobs `bytes` carry, so that a client can join a split character."""
    text = tokenizer.token_to_str(int(token_id))
    if "\ufffd" in text:
        raw = token_bytes(tokenizer, token_id)
        if raw is not None:
            return raw
    return text.encode()


def text_offsets(tokenizer, ids: Iterable[int]) -> list[int]:
    """The character offset in the decoded text at which each token starts: a token that
    continues a multi-byte character gets the offset of that character (OpenAI's
    `text_offset`)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, done = [], 0
    for t in ids:
        offsets.append(done)
        done += len(decoder.decode(token_utf8(tokenizer, t)))
    return offsets


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two
    tokens, best score first (ties: shorter left, then shorter right piece; within a token, by
    the pieces' ids), as transformers' `generate_merges` orders them."""
    get = vocab.get
    merges = []
    for piece, score in scores.items():
        local = []
        for i in range(1, len(piece)):
            left = get(piece[:i])
            if left is not None and (right := get(piece[i:])) is not None:
                local.append((left, right, i))
        if len(local) > 1:
            local.sort()
        merges.extend((score, i, len(piece) - i, piece) for _, _, i in local)
    merges.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
    return [(piece[:i], piece[i:]) for _, i, _, piece in merges]


def _gguf_backend(meta: dict, source: str) -> HFTokenizer:
    arch = meta.get("general.architecture")
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    merges_text = meta.get("tokenizer.ggml.merges")
    if model == "gpt2":  # byte-level BPE
        alphabet = _byte_alphabet()
        spelled = set(alphabet.values())
        vocab = {
            t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i
            for i, t in enumerate(tokens)
        }
        if merges_text is None:
            raise ModelLoadError(f"{source}: a gpt2 tokenizer without tokenizer.ggml.merges")
        merges = [tuple(m.split(" ")) for m in merges_text]
        backend = HFTokenizer(
            models.BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    elif arch in ("gemma", "gemma2", "gemma3"):  # SentencePiece; spaces as "▁", merges by rank
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
        vocab = {t: i for i, t in enumerate(tokens)}
        if merges_text is not None:
            merges = [tuple(m.split(" ")) for m in merges_text]
        else:
            merges = merges_from_scores(vocab, {t: -i for i, t in enumerate(tokens)})
        backend = sentencepiece_backend(vocab, merges, "gemma")
    else:  # llama: SentencePiece-style BPE with byte fallback
        vocab = {t: i for i, t in enumerate(tokens)}
        if merges_text is not None:
            merges = [tuple(m.split(" ")) for m in merges_text]
        else:
            scores = meta.get("tokenizer.ggml.scores")
            if scores is None:
                raise ModelLoadError(f"{source}: a llama tokenizer with neither merges nor scores")
            merges = merges_from_scores(vocab, dict(zip(tokens, scores, strict=False)))
        backend = sentencepiece_backend(vocab, merges, "llama")
    types = meta.get("tokenizer.ggml.token_type") or []
    original = meta.get("tokenizer.ggml.tokens") or []
    spelled = set(_byte_alphabet().values()) if model == "gpt2" else None
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, k in zip(original, types, strict=False)
        if k == _CONTROL and (spelled is None or set(t) <= spelled)
    ]
    if control:
        backend.add_special_tokens(control)
    known = backend.get_vocab()
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, k in zip(original, types, strict=False)
        if k == _USER_DEFINED and t in known
    ]
    if user:
        backend.add_tokens(user)
    split = GGUF_PRE_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return backend


def tokenizer_from_gguf(meta: dict, source: str = "GGUF file") -> PretrainedTokenizer:
    """The tokenizer a GGUF file's `tokenizer.ggml.*` keys describe (`meta`: key -> value, as
    lmgen.model.gguf reads them), rebuilt as transformers rebuilds it for
    `AutoTokenizer.from_pretrained(dir, gguf_file=...)`."""
    model = meta.get("tokenizer.ggml.model")
    if model not in GGUF_TOKENIZER_MODELS:
        raise ModelLoadError(
            f"{source}: GGUF tokenizer model {model!r} is not supported; supported: "
            f"{', '.join(GGUF_TOKENIZER_MODELS)}"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError(f"{source}: the GGUF file has no tokenizer.ggml.tokens")
    try:
        backend = _gguf_backend(meta, source)
    except ModelLoadError:
        raise
    except BaseException as e:  # tokenizers' Rust panics derive from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ModelLoadError(f"{source}: cannot build its tokenizer ({first_line(e)})") from e

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is None:
            return None
        if not 0 <= i < len(tokens):
            raise ModelLoadError(f"{source}: tokenizer.ggml.{key} {i} is not a token id")
        return tokens[i]

    specials = {
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
    }
    # GemmaTokenizer also names "<mask>"; the others name only these four
    gemma = meta.get("general.architecture") in ("gemma", "gemma2", "gemma3")
    specials_extra = ["<mask>"] if gemma else []
    # transformers adds its named special tokens as special added tokens when they are not yet
    known = {t.content for t in backend.get_added_tokens_decoder().values()}
    named = [t for t in [*specials.values(), *specials_extra] if t and t not in known]
    if named:
        backend.add_special_tokens([AddedToken(t, special=True) for t in dict.fromkeys(named)])
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is None and model == "llama":
        add_bos = True  # llama.cpp adds BOS to a SentencePiece vocabulary that does not say
    return PretrainedTokenizer(
        backend,
        **specials,
        add_bos_token=add_bos,
        add_eos_token=meta.get("tokenizer.ggml.add_eos_token"),
        chat_template=meta.get("tokenizer.chat_template"),
    )
