"""`lmgen compare`: parses, checks the output folder, calls `compare`, prints or writes."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from .defaults import DEFAULT_BATCH_ROWS, DEFAULT_MAX_NEW_TOKENS, DEFAULT_RESAMPLES
from .passages import DEFAULT_PASSAGES, DEFAULT_PROMPT_TOKENS
from .strategies import DEFAULT_STRATEGIES


def _defaults_help() -> str:
    return "; ".join(f"{s.name}: {s.describe()}" for s in DEFAULT_STRATEGIES)


def add_parsers(sub) -> None:
    from lmgen.cli_args import add_command, add_int_option, add_json_option, add_model_arg

    p = add_command(
        sub,
        cmd_compare,
        "compare",
        "measure each decoding strategy against human text (Holtzman et al.'s Table 1)",
        description=f"{inspect.cleandoc(cmd_compare.__doc__)} Default: the bundled model, 50 "
        f"passages of held-out Hamlet, and these strategies: {_defaults_help()}. Needs the "
        "compare extra (nltk, for Self-BLEU): pip install 'lmgen[compare]'.",
    )
    add_model_arg(p)
    g = p.add_argument_group("prompts (default: passages of held-out hamlet_gut.txt)")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--prompts",
        metavar="FILE",
        help='a .jsonl file of {"prompt": ..., "continuation": ...} (continuation optional: '
        "without it there is no human row), or a text file with one prompt per line",
    )
    src.add_argument(
        "--text", metavar="FILE", help="cut the passages from this UTF-8 text instead of Hamlet"
    )
    g.add_argument(
        "-n",
        "--n",
        type=int,
        default=None,
        help=f"number of passages (default {DEFAULT_PASSAGES}; with --prompts: all of them)",
    )
    add_int_option(
        g, "--prompt-tokens", DEFAULT_PROMPT_TOKENS, "tokens of each cut passage's prompt"
    )
    g = p.add_argument_group("decoding")
    g.add_argument(
        "--strategy",
        "-s",
        action="append",
        default=[],
        metavar='"NAME: KEY=VALUE ..."',
        help='a strategy to compare, e.g. "top-k=40: top_k=40" or "beam: num_beams=4" '
        "(keys: the GenerationConfig fields, as in lmgen generate); repeatable; replaces the "
        "defaults. A default's name alone (e.g. greedy) picks it.",
    )
    g.add_argument(
        "--strategies", metavar="FILE", help="strategies from a TOML or JSON file: name -> table"
    )
    max_new = "continuation length, also of the human text"
    add_int_option(g, "--max-new-tokens", DEFAULT_MAX_NEW_TOKENS, max_new)
    add_int_option(g, "--samples", 1, "continuations per prompt for sampling strategies")
    add_int_option(g, "--seed", 0, "seed of the whole run")
    rows = "rows decoded together: prompts x samples or x beams"
    add_int_option(g, "--batch-rows", DEFAULT_BATCH_ROWS, rows)
    g = p.add_argument_group("measures and output")
    resamples = "bootstrap resamples for the intervals"
    add_int_option(g, "--resamples", DEFAULT_RESAMPLES, resamples, "; 0: none")
    g.add_argument(
        "--mauve",
        action="store_true",
        help="also MAUVE against the human text, on this model's final hidden states "
        "(needs pip install 'lmgen[mauve]')",
    )
    add_json_option(g, "every number as JSON instead")
    g.add_argument(
        "--out",
        "-o",
        metavar="DIR",
        help="write DIR/compare.json and the texts, DIR/samples/*.jsonl (see lmgen plot compare)",
    )
    g.add_argument("--force", action="store_true", help="replace an earlier comparison in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_compare(args: argparse.Namespace) -> int:
    """Generate from the same prompts with each decoding strategy and measure every
    continuation, and the human one, the same way: perplexity under the model, Self-BLEU-4,
    the Zipf coefficient, the share that ends in a repeating loop, rep-n and distinct-n,
    entropy, EOS rate, length and speed, with 95% bootstrap intervals over prompts."""
    from lmgen.errors import ConfigError

    from .output import check_out, write_outputs
    from .passages import read_prompts_file
    from .report import print_table
    from .runner import compare
    from .strategies import load_strategies_file, parse_strategy

    if args.out:
        check_out(args.out, args.force)  # before loading or generating anything
    strategies = [parse_strategy(s) for s in args.strategy]
    if args.strategies:
        strategies += load_strategies_file(args.strategies)
    for s in strategies:  # as `lmgen generate` prints them, before the long run
        try:
            said = s.warnings(args.max_new_tokens, args.samples)
        except ConfigError:
            continue  # compare() checks every argument first and says what is wrong
        for w in said:
            print(f"warning: {w}", file=sys.stderr)
    prompts = read_prompts_file(args.prompts) if args.prompts else None
    text = None
    if args.text:
        try:
            text = Path(args.text).read_bytes().decode("utf-8")
        except OSError as e:
            raise ConfigError(f"--text {args.text}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"--text {args.text}: not UTF-8 (byte {e.start})") from None
        if not text.strip():
            raise ConfigError(f"--text {args.text}: the file is empty")
    result = compare(
        args.model,
        prompts,
        text=text,
        n=args.n,
        prompt_tokens=args.prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        strategies=strategies or None,
        samples=args.samples,
        seed=args.seed,
        batch_rows=args.batch_rows,
        resamples=args.resamples,
        mauve=args.mauve,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    data = result.to_dict()
    if args.out:
        path = write_outputs(result, args.out, args.force)
        print(f"wrote {path}/compare.json and {path}/samples/", file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print_table(data)
    return 0
