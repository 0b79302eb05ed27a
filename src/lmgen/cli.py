"""The command line: parses arguments, calls the Python API, prints. No logic of its own.

Each family of commands registers itself with `add_parser(subparsers)` and sets `func`;
every `LmgenError` becomes a one-line `error: …` and exit code 2, Ctrl-C a one-line
`interrupted` and exit code 130, at any moment: this module imports nothing heavy, and the
command modules import torch only inside the commands that use it, so `lmgen --help` starts
at once and an interrupt during start-up reaches `main`'s handler.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from .cli_parser import Parser
from .errors import ContextLengthError, LmgenError

VERBOSE_HELP = "log progress details"


def build_parser() -> Parser:
    from . import __version__

    parser = Parser(
        prog="lmgen",
        description="GPT text generation with every decoding strategy, and pictures of each step.",
    )
    parser.add_argument("--version", action="version", version=f"lmgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _registrars():
        register(sub)
    _verbose_everywhere(sub)
    return parser


def _verbose_everywhere(sub) -> None:
    """`-v` after any command too (`lmgen generate ... -v`), not only before it: each command's
    parser (and each of `lmgen plot`'s) takes it, absent meaning the top-level flag's value."""
    for p in dict.fromkeys(sub.choices.values()):  # aliases share a parser
        takes_flags = "-" in p.prefix_chars  # not the `bench` pointer's, which takes all words
        taken = "-v" in p._option_string_actions or "--verbose" in p._option_string_actions
        if takes_flags and not taken:
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help=VERBOSE_HELP)  # fmt: skip
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_everywhere(action)


def _registrars():
    from .cli_generate import add_parsers as generate_parsers
    from .cli_tools import add_parsers as tool_parsers

    yield generate_parsers
    yield tool_parsers
    for module, attr in (
        ("lmgen.cli_chat", "add_parsers"),
        ("lmgen.training.cli", "add_parsers"),
        ("lmgen.plots.cli", "add_parsers"),
        ("lmgen.compare.cli", "add_parsers"),
        ("lmgen.server.cli", "add_parsers"),
    ):
        try:
            mod = __import__(module, fromlist=[attr])
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that family is not part of this build
            raise
        yield getattr(mod, attr)
    yield _bench_pointer


def _bench_pointer(sub) -> None:
    """`lmgen bench` moved out of the package (it needs transformers): a one-line pointer,
    unlisted in --help and so in the list of commands an unknown command's error shows."""
    p = sub.add_parser("bench", add_help=False, prefix_chars="\0")  # every word is "rest"
    p.add_argument("rest", nargs="*")
    p.set_defaults(func=_moved)


def _moved(args) -> int:
    print(
        "error: the benchmark moved out of the package: run `python -m bench` in a checkout of "
        "the repository (it needs the dev extras: pip install -e '.[dev]')",
        file=sys.stderr,
    )
    return 2


# The API's errors name its keywords; on the command line the flag is what to type.
_FLAG_HINTS = [
    # "set context_overflow='slide' (CLI: --context-overflow slide)": keep the CLI's half
    (re.compile(r"\bset \w+=\S+ \(CLI: ([^)]+)\)"), r"pass \1"),
    (re.compile(r"\bset context_overflow='slide'"), "pass --context-overflow slide"),
]


def cli_wording(error: str | LmgenError, args=None) -> str:
    """An error as the command line says it: the flags to type, not the API's keywords; a
    prompt that does not fit, for a command without --max-new-tokens and --context-overflow
    (`next`, the plots), in terms of the prompt alone."""
    if (
        isinstance(error, ContextLengthError)
        and error.prompt_tokens is not None
        and args is not None
        and not hasattr(args, "context_overflow")
    ):
        what = "and the next token do" if error.new_tokens else "does"
        return (
            f"the prompt ({error.prompt_tokens} tokens) {what} not fit the model's context of "
            f"{error.context} tokens; shorten the prompt"
        )
    message = str(error)
    for pattern, replacement in _FLAG_HINTS:
        message = pattern.sub(replacement, message)
    return message


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:  # also while a command still imports torch
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # the CLI prints the config warnings itself, as "warning: ..."
        logging.getLogger("lmgen.generation_config").setLevel(logging.ERROR)
    try:
        return args.func(args) or 0
    except LmgenError as e:
        print(f"error: {cli_wording(e, args)}", file=sys.stderr)
        return 2
