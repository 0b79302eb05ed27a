"""`lmgen generate` and `lmgen next`: thin wrappers over `LM.generate`, `LM.stream`,
`LM.next_token`."""

from __future__ import annotations

import argparse
import json
import re
import sys

from .errors import ConfigError


def _early_stopping(value: str):
    v = value.lower()
    if v in ("true", "false"):
        return v == "true"
    if v == "never":
        return "never"
    raise argparse.ArgumentTypeError(f"must be true, false or never, got {value!r}")


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="model directory, bundled model name, or hf:NAME (default: shakespeare)",
    )


def add_processor_args(p: argparse.ArgumentParser) -> None:
    """The flags that build the processor chain (shared by generate, next and plots)."""
    g = p.add_argument_group("decoding")
    g.add_argument("--strategy", choices=["greedy", "sample", "beam"], default=None)
    g.add_argument("--temperature", "-t", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--typical-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--presence-penalty", type=float)
    g.add_argument("--frequency-penalty", type=float)
    g.add_argument("--no-repeat-ngram-size", type=int)
    g.add_argument("--min-tokens-to-keep", type=int)
    g.add_argument(
        "--temperature-last",
        action="store_true",
        default=None,
        help="apply temperature after the filters (llama.cpp's order)",
    )


def add_generation_args(p: argparse.ArgumentParser) -> None:
    add_processor_args(p)
    g = p.add_argument_group("search and stopping")
    g.add_argument("--num-beams", type=int)
    g.add_argument("--length-penalty", type=float)
    g.add_argument("--early-stopping", type=_early_stopping, metavar="true|false|never")
    g.add_argument("--num-return-sequences", "-n", type=int)
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--min-new-tokens", type=int)
    g.add_argument("--ignore-eos", action="store_true", default=None)
    g.add_argument(
        "--stop",
        action="append",
        metavar="S",
        type=unescape,
        help=r"stop string (repeatable); \n, \t and \\ are understood",
    )
    g.add_argument("--seed", type=int)
    g.add_argument(
        "--context-overflow",
        choices=["error", "slide"],
        help="beyond the context: fail (default) or keep the last tokens",
    )


def config_kwargs(args: argparse.Namespace) -> dict:
    """Only the flags the user gave: the API's defaults stay the single source of truth."""
    from .generation_config import GenerationConfig

    names = set(GenerationConfig.field_names())
    kw = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if kw.get("num_beams", 1) > 1 and "strategy" not in kw:
        kw["strategy"] = "beam"
    if "strategy" not in kw and any(
        k in kw for k in ("temperature", "top_k", "top_p", "min_p", "typical_p", "seed")
    ):
        kw["strategy"] = "sample"
    return kw


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def unescape(value: str) -> str:
    r"""`--stop "\n\n"` means two newlines, as in llama.cpp; other backslashes stay."""
    return re.sub(r"\\[nt\\]", lambda m: _ESCAPES[m.group()], value)


def read_prompt(prompt: str) -> str:
    """`-` reads stdin, without the one newline that `echo` and editors add at the end."""
    if prompt == "-":
        text = sys.stdin.read()
        return text[:-1] if text.endswith("\n") else text
    return prompt


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _validated(kw: dict):
    from .generation_config import GenerationConfig

    config = GenerationConfig.from_kwargs(**kw)
    _warn(config.validate())
    return config


def cmd_generate(args: argparse.Namespace) -> int:
    import lmgen

    config = _validated(config_kwargs(args))
    if args.stream:
        if args.json:
            raise ConfigError("--stream and --json cannot be combined", "stream")
        if config.effective_strategy() == "beam" or config.num_return_sequences != 1:
            raise ConfigError(
                "--stream needs strategy greedy or sample and one sequence (no --num-beams, no -n)",
                "stream",
            )
    prompt = read_prompt(args.prompt)
    lm = lmgen.load(args.model)
    if args.stream:
        if not args.no_echo:
            sys.stdout.write(prompt)
        for delta in lm.stream(prompt, config):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    res = lm.generate(prompt, config)
    if args.json:
        print(json.dumps(res.to_dict(), ensure_ascii=False))
        return 0
    for c in res.choices:
        if len(res.choices) > 1:
            extra = f", score {c.score:.3f}" if c.score is not None else ""
            print(f"--- choice {c.index} ({c.finish_reason}{extra}) ---")
        print(c.text if args.no_echo else prompt + c.text)
    return 0


def cmd_next(args: argparse.Namespace) -> int:
    import lmgen

    kw = config_kwargs(args)
    kw.setdefault("strategy", "sample")
    config = _validated(kw)
    prompt = read_prompt(args.prompt)
    lm = lmgen.load(args.model)
    dist = lm.next_token(prompt, top=args.top, config=config)
    if args.json:
        print(json.dumps(dist.to_dict(), ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"next token after {prompt!r}",
        caption="chain: " + (" -> ".join(dist.chain) or "(none)"),
    )
    for col in ("rank", "token", "id", "logit", "prob", "after chain", "kept"):
        table.add_column(col, justify="left" if col == "token" else "right")
    for rank, c in enumerate(dist.candidates, 1):
        mark = " <- greedy" if c.token_id == dist.greedy_token_id else ""
        style = None if c.kept else "dim"
        table.add_row(
            str(rank),
            repr(c.token) + mark,
            str(c.token_id),
            f"{c.logit:.3f}",
            f"{c.prob:.4f}",
            f"{c.processed_prob:.4f}",
            "yes" if c.kept else "no",
            style=style,
        )
    Console().print(table)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a prompt",
        description="Continue PROMPT with the chosen decoding strategy.",
    )
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    add_model_arg(p)
    add_generation_args(p)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-echo", action="store_true", help="print only the continuation")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "next",
        help="show the next-token distribution",
        description="Show the most likely next tokens, raw and after the processor chain.",
    )
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    add_model_arg(p)
    add_processor_args(p)
    p.add_argument("--top", type=int, default=10, help="how many candidates (0 = all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_next)
