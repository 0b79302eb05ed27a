"""`lmgen plot …`: one subcommand per picture; each parses, calls `lmgen.plots`, writes a file.

No drawing or decoding logic here: the commands only turn flags into the API's arguments.
"""

from __future__ import annotations

import argparse
import sys

from lmgen.cli_generate import (
    add_generation_args,
    add_model_arg,
    config_kwargs,
    early_stopping_arg,
    finite_float,
    read_prompt,
)

from . import DEFAULT_MAX_NEW_TOKENS, DPI, FORMATS, MAX_TREE_BEAMS, MAX_TREE_STEPS


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def _common(p: argparse.ArgumentParser, prompt: str = "required") -> None:
    if prompt == "optional":
        p.add_argument(
            "prompt",
            nargs="?",
            default=None,
            help="the text to embed (default: a line of Hamlet); - reads stdin",
        )
    else:
        p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    add_model_arg(p)
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="FILE",
        help="the image file to write (its suffix picks the format)",
    )
    g.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="png (default), svg or pdf; default: from --out's suffix",
    )
    g.add_argument("--dpi", type=int, default=DPI, help=f"resolution of a png (default {DPI})")


def _out(args):
    from .style import check_output

    return check_output(args.out, args.format, args.dpi)  # fail before loading anything


def _write(fig, args) -> int:
    from .style import save_figure

    path = save_figure(fig, args.out, args.format, dpi=args.dpi)
    print(path)
    return 0


def _load(args):
    import lmgen

    return lmgen.load(args.model)


def _prompt(args) -> str | None:
    return None if args.prompt is None else read_prompt(args.prompt)


def cmd_next(args) -> int:
    from .distributions import plot_next

    _out(args)
    extra = {}
    if args.repetition_penalty is not None:
        extra["repetition_penalty"] = args.repetition_penalty
    fig = plot_next(
        _load(args),
        _prompt(args),
        top=args.top,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        seed=args.seed,
        **extra,
    )
    return _write(fig, args)


def cmd_temperature(args) -> int:
    from .distributions import plot_temperature

    _out(args)
    fig = plot_temperature(_load(args), _prompt(args), temperatures=args.temperatures, top=args.top)
    return _write(fig, args)


def cmd_embeddings(args) -> int:
    from .embeddings import plot_embeddings

    _out(args)
    return _write(plot_embeddings(_load(args), _prompt(args)), args)


def cmd_attention(args) -> int:
    from .attention import plot_attention

    _out(args)
    fig = plot_attention(_load(args), _prompt(args), layer=args.layer, head=args.head)
    return _write(fig, args)


def cmd_beam(args) -> int:
    from .beam_tree import plot_beam

    _out(args)
    kw = {
        k: getattr(args, k)
        for k in ("length_penalty", "early_stopping", "repetition_penalty", "no_repeat_ngram_size")
        if getattr(args, k) is not None
    }
    fig = plot_beam(
        _load(args),
        _prompt(args),
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        **kw,
    )
    return _write(fig, args)


def cmd_generation(args) -> int:
    from lmgen.generation_config import GenerationConfig

    from .generation import plot_generation

    _out(args)
    kw = config_kwargs(args)
    kw.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    config = GenerationConfig.from_kwargs(**kw)
    for w in config.validate():
        print(f"warning: {w}", file=sys.stderr)
    fig = plot_generation(_load(args), _prompt(args), config, choice=args.draw_choice)
    return _write(fig, args)


def add_parsers(sub) -> None:
    plot = sub.add_parser(
        "plot",
        help="draw a step of generation as a picture",
        description="Draw one step from token input to word prediction as "
        "a picture (png, svg or pdf), computed by the same code that "
        "generates.",
    )
    psub = plot.add_subparsers(dest="plot", metavar="PICTURE")
    psub.required = True

    p = psub.add_parser(
        "next",
        help="next-token probabilities per decoding method",
        description="The next-token probability heatmap as greedy, "
        "temperature, top-k, top-p and the first beam step see it, on the "
        "same candidates: removed ones greyed, the chosen one boxed.",
    )
    _common(p)
    g = p.add_argument_group("methods")
    g.add_argument("--top", type=int, default=10, help="candidates shown (default 10)")
    g.add_argument(
        "--temperature",
        "-t",
        type=finite_float,
        default=0.8,
        help="the temperature panel's T (default 0.8)",
    )
    g.add_argument("--top-k", type=int, default=5, help="the top-k panel's k (default 5)")
    g.add_argument(
        "--top-p", type=finite_float, default=0.9, help="the top-p panel's p (default 0.9)"
    )
    g.add_argument("--num-beams", type=int, default=3, help="the beam panel's beams (default 3)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling panels (default 0)")
    g.add_argument(
        "--repetition-penalty",
        type=finite_float,
        help="applied in every panel (default 1.0 = off)",
    )
    p.set_defaults(func=cmd_next)

    p = psub.add_parser(
        "temperature",
        help="the distribution across temperatures",
        description="How the top-N next-token distribution changes with the "
        "temperature, with each distribution's entropy.",
    )
    _common(p)
    p.add_argument(
        "--temperatures",
        type=_floats,
        default=[0.1, 0.5, 1.0, 1.5, 2.0],
        metavar="T1,T2,…",
        help="default 0.1,0.5,1,1.5,2",
    )
    p.add_argument("--top", type=int, default=10, help="candidates shown (default 10)")
    p.set_defaults(func=cmd_temperature)

    p = psub.add_parser(
        "embeddings",
        help="token, positional and summed embeddings",
        description="Token embedding, positional embedding and their sum for "
        "the prompt's tokens, and the cosine similarity of the positional "
        "embeddings.",
    )
    _common(p, prompt="optional")
    p.set_defaults(func=cmd_embeddings)

    p = psub.add_parser(
        "attention",
        help="attention weights per head",
        description="Attention weights as heatmaps with the tokens on both "
        "axes: every head of a layer, or one head.",
    )
    _common(p)
    p.add_argument("--layer", type=int, default=0, help="layer index (default 0)")
    p.add_argument("--head", type=int, default=None, help="one head (default: all of them)")
    p.set_defaults(func=cmd_attention)

    p = psub.add_parser(
        "beam",
        help="the beam-search tree",
        description="The beam-search tree: every step's candidates with "
        "cumulative log-probabilities, kept, finished or pruned, and the "
        "finished hypotheses, from beam search's own trace.",
    )
    _common(p)
    g = p.add_argument_group("search")
    g.add_argument(
        "--num-beams",
        type=int,
        default=3,
        help=f"beams, at most {MAX_TREE_BEAMS} in a picture (default 3)",
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=6,
        help=f"steps of the search; the first {MAX_TREE_STEPS} are drawn (default 6)",
    )
    g.add_argument(
        "--length-penalty",
        type=finite_float,
        help="hypotheses ranked by log-prob sum / length**X (default 1.0)",
    )
    g.add_argument(
        "--early-stopping",
        type=early_stopping_arg,
        metavar="true|false|never",
        help="when the search stops, as in lmgen generate (default false)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=finite_float,
        help="tokens already in the text R times less likely (default 1.0 = off)",
    )
    g.add_argument(
        "--no-repeat-ngram-size", type=int, help="never repeat an N-gram (default 0 = off)"
    )
    p.set_defaults(func=cmd_beam)

    p = psub.add_parser(
        "generation",
        help="generated text coloured by probability",
        description="Generate, then draw the text with each token coloured by "
        "its probability, and each step's chosen-token probability and "
        f"entropy. max_new_tokens defaults to {DEFAULT_MAX_NEW_TOKENS} here.",
    )
    _common(p)
    add_generation_args(p, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument(
        "--choice",
        type=int,
        default=0,
        dest="draw_choice",  # not GenerationConfig's `choice` (constrained choices)
        help="which returned sequence to draw (default 0)",
    )
    p.set_defaults(func=cmd_generation)

    from .compare import add_parser as add_compare_parser  # lmgen plot compare (lmgen compare)

    add_compare_parser(psub)
