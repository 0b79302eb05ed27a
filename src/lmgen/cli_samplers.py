"""Command-line flags for the samplers llama.cpp and transformers added (epsilon, eta, top-nσ,
XTC, DRY, dynamic temperature, Mirostat v2) and for structured output (--regex, --json-schema,
--choice, --grammar). Each flag's dest is the GenerationConfig field, so `config_kwargs` passes
it on and GenerationConfig validates it; the defaults shown are GenerationConfig's."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def _default(name: str):
    from .generation_config import GenerationConfig

    return {f.name: f.default for f in dataclasses.fields(GenerationConfig)}[name]


def _text_file(value: str) -> str:
    """The text of a file named on the command line (a JSON schema, a grammar)."""
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"no such file: {value}") from None
    except IsADirectoryError:
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{value} is not UTF-8 text") from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {e.strerror}") from None


def non_empty(text_type):
    """An argument type: `text_type`'s text (cli_generate.arg_text's checks), never empty."""

    def parse(value: str) -> str:
        text = text_type(value)
        if not text:
            raise argparse.ArgumentTypeError("must not be empty")
        return text

    return parse


def add_sampler_args(p: argparse.ArgumentParser, number, text) -> None:
    """`number`, `text`: the CLI's argument types for a finite float and for text."""
    d = _default
    _number, _non_empty = number, non_empty(text)
    g = p.add_argument_group(
        "more samplers (sampling only, except DRY; llama.cpp's and transformers' semantics)"
    )
    g.add_argument(
        "--epsilon-cutoff",
        type=_number,
        metavar="E",
        help="epsilon sampling: drop tokens with probability below E, in [0, 1) "
        f"(default {d('epsilon_cutoff')} = off)",
    )
    g.add_argument(
        "--eta-cutoff",
        type=_number,
        metavar="E",
        help="eta sampling: drop tokens below min(E, sqrt(E) * exp(-entropy)), in [0, 1) "
        f"(default {d('eta_cutoff')} = off)",
    )
    g.add_argument(
        "--top-n-sigma",
        type=_number,
        metavar="N",
        help="keep tokens whose logit is within N standard deviations of the best "
        f"(default {d('top_n_sigma')} = off)",
    )
    g.add_argument(
        "--xtc-probability",
        type=_number,
        metavar="P",
        help="XTC: with probability P a step removes every token above --xtc-threshold but "
        f"the least likely of them (default {d('xtc_probability')} = off)",
    )
    g.add_argument(
        "--xtc-threshold",
        type=_number,
        metavar="T",
        help=f"XTC's probability threshold, in (0, 0.5] (default {d('xtc_threshold')})",
    )
    g.add_argument(
        "--dry-multiplier",
        type=_number,
        metavar="M",
        help="DRY: penalise a token that would extend a repeat of the text's end by "
        f"M * base ** (length - allowed length) (default {d('dry_multiplier')} = off)",
    )
    g.add_argument(
        "--dry-base",
        type=_number,
        metavar="B",
        help=f"DRY's growth per repeated token, >= 1 (default {d('dry_base')})",
    )
    g.add_argument(
        "--dry-allowed-length",
        type=int,
        metavar="N",
        help=f"DRY: repeats up to N tokens go unpenalised (default {d('dry_allowed_length')})",
    )
    g.add_argument(
        "--dry-penalty-last-n",
        type=int,
        metavar="N",
        help="DRY looks at the last N tokens; -1 = the whole text, 0 = off "
        f"(default {d('dry_penalty_last_n')})",
    )
    g.add_argument(
        "--dry-sequence-breaker",
        dest="dry_sequence_breakers",
        action="append",
        type=_non_empty,
        metavar="S",
        help="a string no repeat reaches back across; repeatable, replaces the defaults "
        r'(default: \n, :, ", *)',
    )
    g.add_argument(
        "--dynatemp-range",
        type=_number,
        metavar="R",
        help="dynamic temperature: from temperature - R (confident steps) to temperature + R "
        f"(uncertain ones) by the step's entropy (default {d('dynatemp_range')} = off)",
    )
    g.add_argument(
        "--dynatemp-exponent",
        type=_number,
        metavar="X",
        help=f"dynamic temperature's exponent on the entropy (default {d('dynatemp_exponent')})",
    )
    g.add_argument(
        "--mirostat",
        type=int,
        metavar="0|2",
        help="2: Mirostat v2, which steers each token's surprise towards --mirostat-tau bits "
        f"(default {d('mirostat')} = off)",
    )
    g.add_argument(
        "--mirostat-tau",
        type=_number,
        metavar="TAU",
        help=f"Mirostat's target surprise in bits (default {d('mirostat_tau')})",
    )
    g.add_argument(
        "--mirostat-eta",
        type=_number,
        metavar="ETA",
        help=f"Mirostat's learning rate (default {d('mirostat_eta')})",
    )


def add_constraint_args(p: argparse.ArgumentParser, text) -> None:
    _non_empty = non_empty(text)
    g = p.add_argument_group("structured output (one of; the text ends when the constraint is met)")
    g.add_argument(
        "--regex",
        type=_non_empty,
        metavar="RE",
        help="the generated text matches RE (Rust regex syntax, whole text; default: none)",
    )
    g.add_argument(
        "--json-schema",
        type=_text_file,
        metavar="FILE",
        help="the generated text is JSON valid under the JSON schema in FILE (default: none)",
    )
    g.add_argument(
        "--json-object",
        dest="json_schema",
        action="store_const",
        const='{"type": "object"}',
        help="the generated text is a JSON object (OpenAI's JSON mode)",
    )
    g.add_argument(
        "--choice",
        action="append",
        type=_non_empty,
        metavar="TEXT",
        help="the generated text is one of these; repeatable (default: none)",
    )
    g.add_argument(
        "--grammar",
        type=_text_file,
        metavar="FILE",
        help="the generated text follows the context-free grammar in FILE: Lark syntax, or "
        "llama.cpp's GBNF (default: none)",
    )
