"""`lmgen generate` and `lmgen next`: thin wrappers over `LM.generate`, `LM.stream`,
`LM.next_token`."""

from __future__ import annotations

import argparse
import json
import sys

from .cli_args import (
    add_command,
    add_json_option,
    add_model_arg,
    add_runtime_args,
    load_lm,
    read_prompt,
    read_prompts_file,
)
from .cli_decoding import add_decoding_arguments, decoding_config
from .errors import ConfigError
from .settings import COMMAND_GROUPS


def _check_combinations(args, config) -> None:
    """Refusals that need no model, so they come before loading one."""
    if (args.prompt is None) == (args.prompts_file is None):
        raise ConfigError("give a PROMPT or --prompts-file FILE (one of the two)", "prompt")
    if args.draft is None and args.speculative_k is not None:
        raise ConfigError("--speculative-k needs --draft DIR", "speculative_k")
    if not args.stream:
        return
    clash = [
        flag
        for flag, on in (
            ("--json", args.json),
            ("--prompts-file", args.prompts_file),
            ("--draft", args.draft),
            ("--compile", args.compile),
            ("--logprobs", config.logprobs),
        )
        if on
    ]
    if clash:
        raise ConfigError(f"--stream cannot be combined with {clash[0]}", "stream")
    if config.effective_strategy() == "beam" or config.num_return_sequences != 1:
        raise ConfigError(
            "--stream needs strategy greedy or sample and one sequence (no --num-beams, no -n)",
            "stream",
        )


def _generate_options(args, lm) -> dict:
    options = {}
    if args.draft is not None:
        options["draft"] = load_lm(args, args.draft)  # the API checks it shares the tokenizer
        if args.speculative_k is not None:
            options["speculative_k"] = args.speculative_k
    if args.compile:
        options["compile"] = True
    return options


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue PROMPT with the chosen decoding strategy. Without --strategy, the strategy is
    inferred from the flags given: beam search when --num-beams > 1, contrastive search when
    --penalty-alpha > 0, sampling when any of --temperature (other than 0), --top-k, --top-p,
    --min-p, --typical-p or --seed is given, greedy otherwise (the same rule as lm.generate)."""
    config = decoding_config(args)
    _check_combinations(args, config)
    prompts = read_prompts_file(args.prompts_file) if args.prompts_file else None
    prompt = read_prompt(args.prompt) if prompts is None else None
    lm = load_lm(args)
    if args.show_chain:
        print_chain(lm, config, prompts[0] if prompts else prompt)
    if args.stream:
        if not args.no_echo:
            sys.stdout.write(prompt)
        for delta in lm.stream(prompt, config):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    options = _generate_options(args, lm)
    results = lm.generate(prompts if prompts is not None else prompt, config, **options)
    if prompts is None:
        results = [results]
    for i, res in enumerate(results):
        if args.json:  # one object; with --prompts-file one line per prompt (JSON Lines)
            print(json.dumps(result_json(res, config), ensure_ascii=False))
            continue
        for c in res.choices:
            if len(results) > 1 or len(res.choices) > 1:
                where = [f"prompt {i}"] if len(results) > 1 else []
                if len(res.choices) > 1:
                    where.append(f"choice {c.index}")
                extra = f", score {c.score:.3f}" if c.score is not None else ""
                print(f"--- {', '.join(where)} ({c.finish_reason}{extra}) ---")
            print(c.text if args.no_echo else res.prompt + c.text)
            if config.logprobs:
                print_logprobs(lm, c)
    return 0


def print_chain(lm, config, prompt: str) -> None:
    """`chain: A -> B -> ...` on stderr: the processors in the order they run (a Session's
    own chain, so the order the user's `--samplers` gave, adaptive-p last)."""
    from .decoding.session import Session

    session = Session(lm, prompt, config, record=())
    chain = session.chain
    session.close()
    print(f"chain: {chain!r}", file=sys.stderr)


def result_json(res, config) -> dict:
    """`GenerationResult.to_dict()`, plus `top_logprobs` per choice when --logprobs asks."""
    d = res.to_dict()
    if config.logprobs:
        for out, c in zip(d["choices"], res.choices, strict=True):
            out["top_logprobs"] = (
                None
                if c.top_logprobs is None
                else [
                    [{"token_id": t.token_id, "token": t.token, "logprob": t.logprob} for t in step]
                    for step in c.top_logprobs
                ]
            )
    return d


def print_logprobs(lm, choice) -> None:
    """Each chosen token with its log-probability under the model and the top alternatives."""
    tops = choice.top_logprobs
    print("  token                 logprob   top alternatives (raw model)")
    for k, (t, lp) in enumerate(zip(choice.token_ids, choice.logprobs, strict=False)):
        alts = ""
        if tops is not None and k < len(tops):
            alts = "  ".join(f"{a.token!r} {a.logprob:.3f}" for a in tops[k])
        print(f"  {lm.tokenizer.token_to_str(t)!r:20} {lp:8.3f}   {alts}")


# -- next ---------------------------------------------------------------------------------------


def cmd_next(args: argparse.Namespace) -> int:
    """Show the most likely next tokens, raw and after the processor chain."""
    config = decoding_config(args, strategy="sample")
    prompt = read_prompt(args.prompt)
    lm = load_lm(args)
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
    # beam search scores log-probabilities, and its chain works on them (next_token's doc)
    score = "log-prob" if config.effective_strategy() == "beam" else "logit"
    for col in ("rank", "token", "id", score, "prob", "after chain", "kept"):
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
    p = add_command(sub, cmd_generate, "generate", "continue a prompt")
    p.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="the prompt text, or - to read it from stdin",
    )
    add_model_arg(p)
    add_runtime_args(p)
    add_decoding_arguments(p, COMMAND_GROUPS["generate"][:-1])  # "output" goes in its own group
    g = p.add_argument_group("output")
    g.add_argument("--stream", action="store_true", help="print text as it is generated")
    add_json_option(g, "one JSON object (with --prompts-file: one line per prompt)")
    g.add_argument("--no-echo", action="store_true", help="print only the continuation")
    g.add_argument(
        "--show-chain",
        action="store_true",
        help="first print the processor chain in the order it runs (to stderr)",
    )
    add_decoding_arguments(p, COMMAND_GROUPS["generate"][-1:], argument_groups={"output": g})
    g = p.add_argument_group("batches and speed")
    g.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="generate for every prompt in FILE, as one batch: one prompt per line (blank lines "
        'skipped), or JSON Lines (a name ending in .jsonl: a string or {"prompt": ...} per '
        "line); - reads stdin",
    )
    g.add_argument(
        "--draft",
        metavar="DIR",
        help="a small model for speculative decoding (same output distribution; greedy gives "
        "the same tokens); one with a tokenizer of its own is universal assisted decoding (the "
        "same tokens, greedy or seeded)",
    )
    g.add_argument(
        "--speculative-k",
        type=int,
        metavar="K",
        help="tokens the draft proposes per step (default 4)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="run the decode step through torch.compile (the first call compiles)",
    )

    p = add_command(sub, cmd_next, "next", "show the next-token distribution")
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    add_model_arg(p)
    add_runtime_args(p)
    add_decoding_arguments(
        p,
        COMMAND_GROUPS["next"],
        strategy_help="default: sample, so the chain shown is the sampling one",
    )
    p.add_argument("--top", type=int, default=10, help="how many candidates (0 = all; default 10)")
    add_json_option(p)
