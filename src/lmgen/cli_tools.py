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
    from .plots.tokens import token_bytes

    for i, t in zip(ids, tokens, strict=True):
        raw = token_bytes(tok, i) if "\ufffd" in t else None  # part of a UTF-8 character
        print(f"{i:>7}  {raw!r}" if raw is not None else f"{i:>7}  {t!r}")
    print(f"{len(ids)} token{'s' if len(ids) != 1 else ''}")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    """Write MODEL as a GGUF file for llama.cpp, as its converter writes the model's family (gpt2,
    llama, qwen2, qwen3, gemma3, gptneox). A byte-level BPE or SentencePiece tokenizer goes
    into the file too, so llama.cpp tokenizes text as lmgen does."""
    import lmgen

    from .gguf_export import HF_ARCHITECTURES, tokenizer_metadata, write_gguf

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a folder; give a file name", "out")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: the folder {out.parent} does not exist", "out")
    lm = lmgen.load(args.model)
    write_gguf(lm.model, out, dtype=args.dtype, tokenizer=lm.tokenizer, name=lm.name)
    meta = tokenizer_metadata(lm.tokenizer, lm.config.vocab_size)
    vocab = (
        f"with its {'SentencePiece' if meta['model'] == 'llama' else 'BPE'} vocabulary"
        if meta is not None
        else "with a placeholder vocabulary (this tokenizer has no GGUF form: token ids only)"
    )
    arch = HF_ARCHITECTURES.get(getattr(lm.config, "model_type", "gpt2"), "gpt2")
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, llama.cpp {arch}, {args.dtype} weights, {vocab})")
    return 0


def add_parsers(sub) -> None:
    p = add_command(sub, cmd_tokenize, "tokenize", "show the token ids of a text")
    p.add_argument("text", help="the text, or - to read it from stdin")
    add_model_arg(p)
    add_json_option(p, '{"text", "token_ids", "tokens", "pieces"} as one JSON object')

    p = add_command(sub, cmd_export_gguf, "export-gguf", "write a model as GGUF for llama.cpp")
    p.add_argument("model", help="model directory, bundled model name, or hf:NAME")
    p.add_argument("out", metavar="OUT.gguf", help="the file to write")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "q8_0"],
        default="float32",
        help="type of the weight matrices (q8_0: llama.cpp's 8-bit blocks); norms, biases "
        "and the position table stay float32 (default float32)",
    )
