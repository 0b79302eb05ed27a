"""`lmgen plot …`: one subcommand per picture; each parses, calls `lmgen.plots`, writes a file.

No drawing or decoding logic here: the commands only turn flags into the API's arguments.
"""

from __future__ import annotations

import argparse

from lmgen.cli_args import add_model_arg, finite_float, read_prompt
from lmgen.cli_decoding import add_decoding_arguments, config_kwargs, decoding_config
from lmgen.settings import COMMAND_GROUPS

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


def _load(args):
    import lmgen

    return lmgen.load(args.model)


def _prompt(args) -> str | None:
    return None if args.prompt is None else read_prompt(args.prompt)


def _picture(function: str, *options: str, settings: str = ""):
    """The command that draws `lmgen.plots.<function>(lm, prompt, ...)` and writes the file.
    `options` are the command's own flags, passed by name ("choice=draw_choice": keyword
    `choice` from the flag whose dest is `draw_choice`); `settings` passes the decoding flags
    given: "kwargs" as GenerationConfig keywords, "config" as one validated config."""

    def run(args) -> int:
        from lmgen import plots

        from .style import check_output, save_figure

        check_output(args.out, args.format, args.dpi)  # fail before loading anything
        kw = {}
        for option in options:
            name, _, dest = option.partition("=")
            kw[name] = getattr(args, dest or name)
        if settings == "kwargs":
            kw.update(config_kwargs(args))
        elif settings == "config":
            kw["config"] = decoding_config(args)
        fig = getattr(plots, function)(_load(args), _prompt(args), **kw)
        print(save_figure(fig, args.out, args.format, dpi=args.dpi))
        return 0

    return run


# plot next's panels: flags, type, default, help
PANEL_OPTIONS = (
    (("--top",), int, 10, "candidates shown"),
    (("--temperature", "-t"), finite_float, 0.8, "the temperature panel's T"),
    (("--top-k",), int, 5, "the top-k panel's k"),
    (("--top-p",), finite_float, 0.9, "the top-p panel's p"),
    (("--num-beams",), int, 3, "the beam panel's beams"),
    (("--seed",), int, 0, "seed of the sampling panels"),
)


def _next_options(p) -> None:
    g = p.add_argument_group("methods")
    for flags, type_, default, help_ in PANEL_OPTIONS:
        g.add_argument(*flags, type=type_, default=default, help=f"{help_} (default {default})")
    add_decoding_arguments(p, flags=("--repetition-penalty",))  # applied in every panel


def _temperature_options(p) -> None:
    p.add_argument(
        "--temperatures",
        type=_floats,
        default=[0.1, 0.5, 1.0, 1.5, 2.0],
        metavar="T1,T2,…",
        help="default 0.1,0.5,1,1.5,2",
    )
    p.add_argument("--top", type=int, default=10, help="candidates shown (default 10)")


def _attention_options(p) -> None:
    p.add_argument("--layer", type=int, default=0, help="layer index (default 0)")
    p.add_argument("--head", type=int, default=None, help="one head (default: all of them)")


def _beam_options(p) -> None:
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
    add_decoding_arguments(
        p,
        flags=(
            "--length-penalty",
            "--early-stopping",
            "--repetition-penalty",
            "--no-repeat-ngram-size",
        ),  # fmt: skip
        argument_groups={"search": g},
    )


def _generation_options(p) -> None:
    add_decoding_arguments(
        p,
        COMMAND_GROUPS["plot generation"],
        defaults={"--max-new-tokens": DEFAULT_MAX_NEW_TOKENS},
    )
    p.add_argument(
        "--choice",
        type=int,
        default=0,
        dest="draw_choice",  # not GenerationConfig's `choice` (constrained choices)
        help="which returned sequence to draw (default 0)",
    )


PLOT = (
    "Draw one step from token input to word prediction as a picture (png, svg or pdf), "
    "computed by the same code that generates."
)
# name, help, description, its own options, the command
PICTURES = (
    ("next", "next-token probabilities per decoding method",
     "The next-token probability heatmap as greedy, temperature, top-k, top-p and the first "
     "beam step see it, on the same candidates: removed ones greyed, the chosen one boxed.",
     _next_options, _picture("plot_next", "top", settings="kwargs")),
    ("temperature", "the distribution across temperatures",
     "How the top-N next-token distribution changes with the temperature, with each "
     "distribution's entropy.",
     _temperature_options, _picture("plot_temperature", "temperatures", "top")),
    ("embeddings", "token, positional and summed embeddings",
     "Token embedding, positional embedding and their sum for the prompt's tokens, and the "
     "cosine similarity of the positional embeddings.",
     None, _picture("plot_embeddings")),
    ("attention", "attention weights per head",
     "Attention weights as heatmaps with the tokens on both axes: every head of a layer, or "
     "one head.",
     _attention_options, _picture("plot_attention", "layer", "head")),
    ("beam", "the beam-search tree",
     "The beam-search tree: every step's candidates with cumulative log-probabilities, kept, "
     "finished or pruned, and the finished hypotheses, from beam search's own trace.",
     _beam_options, _picture("plot_beam", settings="kwargs")),
    ("generation", "generated text coloured by probability",
     "Generate, then draw the text with each token coloured by its probability, and each "
     "step's chosen-token probability and entropy. max_new_tokens defaults to "
     f"{DEFAULT_MAX_NEW_TOKENS} here.",
     _generation_options, _picture("plot_generation", "choice=draw_choice", settings="config")),
)  # fmt: skip


def add_parsers(sub) -> None:
    plot = sub.add_parser("plot", help="draw a step of generation as a picture", description=PLOT)
    psub = plot.add_subparsers(dest="plot", metavar="PICTURE")
    psub.required = True
    for name, help_, description, options, run in PICTURES:
        p = psub.add_parser(name, help=help_, description=description)
        _common(p, prompt="optional" if name == "embeddings" else "required")
        if options is not None:
            options(p)
        p.set_defaults(func=run)

    from .compare import add_parser as add_compare_parser  # lmgen plot compare (lmgen compare)

    add_compare_parser(psub)
