"""`lmgen tokenize` and `lmgen export-gguf`: a look at the tokenizer, and the model for
llama.cpp."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_args import add_command, add_json_option, add_model_arg, read_prompt
from .errors import ConfigError


def cmd_tokenize(args: argparse.Namespace) -> int:
    """Encode TEXT with a model's tokenizer: each token's id and text."""
    from .model_files import read_tokenizer, resolve_model

    text = read_prompt(args.text)
    tok = read_tokenizer(resolve_model(args.model))  # the tokenizer alone: no weights read
    ids = tok.encode(text)
    tokens = [tok.token_to_str(i) for i in ids]
    if args.json:
        backend = getattr(tok, "backend", None)
        d = {"text": text, "token_ids": ids, "tokens": tokens}
        if backend is not None:  # the vocabulary entries, e.g. "Ġthe" for " the"
            d["pieces"] = [backend.id_to_token(i) for i in ids]
        print(json.dumps(d, ensure_ascii=False))
        return 0
    from .tokenizers import token_bytes

    for i, t in zip(ids, tokens, strict=True):
        raw = token_bytes(tok, i) if "\ufffd" in t else None  # part of a UTF-8 character
        print(f"{i:>7}  {raw!r}" if raw is not None else f"{i:>7}  {t!r}")
    print(f"{len(ids)} token{'s' if len(ids) != 1 else ''}")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    """Write MODEL as a GGUF file for llama.cpp, as its converter writes the model's family (gpt2,
    llama, qwen2, qwen3, gemma3, gptneox). A byte-level BPE or SentencePiece tokenizer goes
    into the file too, so llama.cpp tokenizes text as lmgen does.

    Without --dtype a GGUF's kept blocks (Q8_0, Q4_1, ...) are written back as they are and the
    other weights in float32; an explicit --dtype loads float weights (quantize="none") so
    that every weight matrix is written in that type, as asked."""
    import lmgen

    from .gguf_export import HF_ARCHITECTURES, tokenizer_metadata, write_gguf

    out = check_gguf_out(args.out, args.force)
    if args.dtype is None:
        lm = lmgen.load(args.model)
    else:
        lm = lmgen.load(args.model, quantize="none")
    write_gguf(lm.model, out, dtype=args.dtype or "float32", tokenizer=lm.tokenizer, name=lm.name)
    meta = tokenizer_metadata(lm.tokenizer, lm.config.vocab_size)
    vocab = (
        f"with its {'SentencePiece' if meta['model'] == 'llama' else 'BPE'} vocabulary"
        if meta is not None
        else "with a placeholder vocabulary (this tokenizer has no GGUF form: token ids only)"
    )
    arch = HF_ARCHITECTURES.get(getattr(lm.config, "model_type", "gpt2"), "gpt2")
    size = out.stat().st_size / 2**20
    weights = written_weight_types(out, args.dtype)
    print(f"wrote {out} ({size:.1f} MiB, llama.cpp {arch}, {weights}, {vocab})")
    return 0


def check_gguf_out(out: str, force: bool) -> Path:
    """Refuses, before loading anything, an OUT that lmgen could not load back (not .gguf), a
    folder, a missing folder, or an existing file (replaced only with --force, as `data` and
    `compare` replace their outputs)."""
    path = Path(out).expanduser()
    if path.suffix.lower() != ".gguf":
        raise ConfigError(f"cannot write {path}: OUT must end in .gguf", "out")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; give a file name", "out")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: the folder {path.parent} does not exist", "out")
    if path.exists() and not force:
        raise ConfigError(f"{path}: already exists; pass --force to replace it", "out")
    return path


def written_weight_types(path: Path, dtype: str | None) -> str:
    """The summary of the weight matrices' types as the written file holds them (read back by
    the gguf package's reader, so the line cannot claim a type that was not written)."""
    from gguf import GGUFReader

    kinds: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        if len(t.shape) == 2:
            kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
    blocks = sorted(k for k in kinds if k not in ("F32", "F16", "BF16"))
    if dtype is not None:
        others = [k for k in blocks if k != dtype.upper()]
        return f"{dtype} weights" + (f" ({', '.join(others)} blocks too)" if others else "")
    floats = sorted(k.lower().replace("f", "float") for k in kinds if k not in blocks)
    kept = f"{', '.join(blocks)} blocks kept" if blocks else ""
    rest = f"{', '.join(floats)} weights" if floats else ""
    return ", other weights ".join(filter(None, [kept, rest])) if kept else rest


def add_parsers(sub) -> None:
    p = add_command(sub, cmd_tokenize, "tokenize", "show the token ids of a text")
    p.add_argument("text", help="the text, or - to read it from stdin")
    add_model_arg(p)
    add_json_option(p, '{"text", "token_ids", "tokens", "pieces"} as one JSON object')

    p = add_command(sub, cmd_export_gguf, "export-gguf", "write a model as GGUF for llama.cpp")
    p.add_argument("model", help="a model directory, a .gguf file, a bundled name, or hf:NAME")
    p.add_argument("out", metavar="OUT.gguf", help="the file to write")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "q8_0"],
        default=None,
        help="type of the weight matrices (q8_0: llama.cpp's 8-bit blocks); norms, biases "
        "and the position table stay float32 (default: a GGUF's quantized blocks are kept as "
        "they are, other weights float32)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it already exists")
