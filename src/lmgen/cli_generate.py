"""`lmgen generate` and `lmgen next`: thin wrappers over `LM.generate`, `LM.stream`,
`LM.next_token`; the flags they share with `lmgen plot` and `lmgen tokenize`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

from .errors import ConfigError

# -- argument types -----------------------------------------------------------------------------


def early_stopping_arg(value: str):
    v = value.lower()
    if v in ("true", "false"):
        return v == "true"
    if v == "never":
        return "never"
    raise argparse.ArgumentTypeError(f"must be true, false or never, got {value!r}")


def finite_float(value: str) -> float:
    """A number; `inf` and `nan` are refused here, with a message that says so."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return v


def _model_name(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "is empty; give a model directory, a bundled model name (shakespeare) or hf:NAME"
        )
    return value


def _logit_bias(value: str) -> tuple[int, float]:
    token, sep, bias = value.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), finite_float(bias)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected TOKEN_ID=BIAS, e.g. 198=-100, got {value!r}"
        ) from None


def _text_arg(value: str) -> str:
    try:
        return arg_text(value, "it")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _stop(value: str) -> str:
    try:
        return unescape(arg_text(value, "it"))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def unescape(value: str) -> str:
    r"""`--stop "\n\n"` means two newlines, as in llama.cpp; other backslashes stay."""
    return re.sub(r"\\[nt\\]", lambda m: _ESCAPES[m.group()], value)


# -- text from the command line: UTF-8 or a one-line error ---------------------------------------


def utf8(data: bytes, what: str) -> str:
    """`data` decoded as UTF-8, or ConfigError naming the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} is not valid UTF-8 at byte {e.start}", "prompt") from None


def arg_text(value: str, what: str = "the prompt") -> str:
    """A command-line argument as valid Unicode: bytes that were not UTF-8 reach Python as
    lone surrogates (surrogateescape); they are refused with the position of the first one."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:  # not from the OS's decoding: say where, in characters
        from .tokenizers import check_text

        check_text(value)
        raise
    return utf8(raw, what)


def read_prompt(prompt: str) -> str:
    """`-` reads stdin, without the one newline that `echo` and editors add at the end."""
    if prompt == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        text = utf8(buffer.read(), "stdin") if buffer is not None else sys.stdin.read()
        return text[:-1] if text.endswith("\n") else text
    return arg_text(prompt)


def read_prompts_file(path: str) -> list[str]:
    """One prompt per line (blank lines skipped), or with a `.jsonl` name one JSON value per
    line: a string or an object with a "prompt" string. `-` reads stdin."""
    if path == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        data = buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8")
        name = "stdin"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"--prompts-file {path}: {e.strerror or e}", "prompts_file") from None
        name = path
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{name} is not valid UTF-8 at byte {e.start} (line {line})", "prompts_file"
        ) from None
    prompts = []
    jsonl = path.endswith(".jsonl")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(line)
            continue
        try:
            item = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{name} line {n}: not JSON ({e})", "prompts_file") from None
        if isinstance(item, dict):
            item = item.get("prompt")
        if not isinstance(item, str):
            raise ConfigError(
                f'{name} line {n}: expected a JSON string or {{"prompt": "..."}}',
                "prompts_file",
            )
        prompts.append(item)
    if not prompts:
        raise ConfigError(f"{name} holds no prompts", "prompts_file")
    return prompts


# -- flags --------------------------------------------------------------------------------------


def _default(name: str):
    from .generation_config import GenerationConfig

    return {f.name: f.default for f in dataclasses.fields(GenerationConfig)}[name]


STRATEGY_RULE = (
    "default: inferred: beam when --num-beams > 1; contrastive when --penalty-alpha > 0; "
    "sample when any of --temperature (other than 0), --top-k, --top-p, --min-p, --typical-p "
    "or --seed is given; else greedy"
)


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        type=_model_name,
        default=None,
        help="model directory, bundled model name, or hf:NAME (default: shakespeare)",
    )


DTYPES = ("float32", "bfloat16", "float16")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Where and how the model runs: lmgen.load(name, device=, dtype=, quantize=)."""
    g = p.add_argument_group("model runtime")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, ... (default: cpu)")
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights in this type (default: float32); CPU decode steps keep activations in "
        "float32 where lmgen's kernel builds",
    )
    g.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8 weight-only linear layers, for decoding (default: none)",
    )


def load_lm(args, name: str | None = None):
    """`lmgen.load` with the runtime flags; a device this machine lacks is a one-line error."""
    import torch

    import lmgen

    device = getattr(args, "device", None)
    if device is not None:
        check_device(device)
    dtype = getattr(args, "dtype", None)
    return lmgen.load(
        args.model if name is None else name,
        device=device,
        dtype=getattr(torch, dtype) if dtype else None,
        quantize=getattr(args, "quantize", None),
    )


def check_device(device: str) -> None:
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"--device {device!r}: not a device name (cpu, cuda, cuda:1, mps, ...)", "device"
        ) from None
    if d.type == "cpu":
        return
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available here", "device")
        if d.index is not None and d.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ConfigError(f"--device {device}: this machine has {n} CUDA device(s)", "device")
        return
    backend = getattr(torch.backends if d.type == "mps" else torch, d.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise ConfigError(f"--device {device}: not available here", "device")


def add_processor_args(p: argparse.ArgumentParser, strategy_help: str = STRATEGY_RULE) -> None:
    """The flags that build the processor chain (shared by generate, next and plots)."""
    d = _default
    g = p.add_argument_group("decoding")
    g.add_argument(
        "--strategy",
        choices=["greedy", "sample", "beam", "contrastive"],
        default=None,
        help=f"how the next token is chosen ({strategy_help})",
    )
    g.add_argument(
        "--penalty-alpha",
        type=finite_float,
        metavar="A",
        help="contrastive search: weight of the degeneration penalty in [0, 1]; > 0 implies "
        f"--strategy contrastive, with --top-k candidates (default {d('penalty_alpha')})",
    )
    g.add_argument(
        "--temperature",
        "-t",
        type=finite_float,
        metavar="T",
        help=f"divide the logits by T before sampling; 0 means greedy (default {d('temperature')})",
    )
    g.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help=f"keep the K most likely tokens (default {d('top_k')} = off)",
    )
    g.add_argument(
        "--top-p",
        type=finite_float,
        metavar="P",
        help="nucleus: keep the smallest set of top tokens whose probability reaches P "
        f"(default {d('top_p')} = off)",
    )
    g.add_argument(
        "--min-p",
        type=finite_float,
        metavar="P",
        help=f"drop tokens below P x the top token's probability (default {d('min_p')} = off)",
    )
    g.add_argument(
        "--typical-p",
        type=finite_float,
        metavar="P",
        help=f"locally typical sampling: keep this much mass (default {d('typical_p')} = off)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=finite_float,
        metavar="R",
        help="make tokens already in the text R times less likely "
        f"(default {d('repetition_penalty')} = off)",
    )
    g.add_argument(
        "--presence-penalty",
        type=finite_float,
        metavar="X",
        help="subtract X, in [-2, 2], from the logit of every token generated so far "
        f"(default {d('presence_penalty')})",
    )
    g.add_argument(
        "--frequency-penalty",
        type=finite_float,
        metavar="X",
        help="subtract X, in [-2, 2], times each generated token's count from its logit "
        f"(default {d('frequency_penalty')})",
    )
    g.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        metavar="N",
        help=f"never repeat an N-gram (default {d('no_repeat_ngram_size')} = off)",
    )
    g.add_argument(
        "--min-tokens-to-keep",
        type=int,
        metavar="N",
        help=f"the filters keep at least N tokens (default {d('min_tokens_to_keep')})",
    )
    g.add_argument(
        "--logit-bias",
        type=_logit_bias,
        action="append",
        metavar="ID=BIAS",
        help="add BIAS, in [-100, 100], to token ID's logit; repeatable; -100 bans a token "
        "(ids: lmgen tokenize; default: none)",
    )
    g.add_argument(
        "--temperature-last",
        action="store_true",
        default=None,
        help="apply temperature after the filters (llama.cpp's order; default: first, "
        "as transformers)",
    )
    from .cli_samplers import add_sampler_args

    add_sampler_args(p, finite_float, _text_arg)


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int | None = None) -> None:
    d = _default
    add_processor_args(p)
    g = p.add_argument_group("search and stopping")
    g.add_argument(
        "--num-beams",
        type=int,
        metavar="N",
        help=f"beams of beam search; > 1 implies --strategy beam (default {d('num_beams')})",
    )
    g.add_argument(
        "--num-beam-groups",
        type=int,
        metavar="G",
        help="diverse beam search: split the beams into G groups searched in turn "
        f"(default {d('num_beam_groups')})",
    )
    g.add_argument(
        "--diversity-penalty",
        type=finite_float,
        metavar="X",
        help="diverse beam search: subtracted from a token's log-prob per earlier group that "
        f"chose it this step (default {d('diversity_penalty')})",
    )
    g.add_argument(
        "--length-penalty",
        type=finite_float,
        metavar="X",
        help="beam search ranks by log-prob sum / length**X; > 0 favours longer "
        f"(default {d('length_penalty')})",
    )
    g.add_argument(
        "--early-stopping",
        type=early_stopping_arg,
        metavar="true|false|never",
        help="beam search stops when num_beams hypotheses are finished (true), when no beam "
        "can beat them (false), or only at the length limit (never); default false",
    )
    g.add_argument(
        "--num-return-sequences",
        "-n",
        type=int,
        metavar="N",
        help=f"sequences per prompt (sample or beam; default {d('num_return_sequences')})",
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help=f"tokens to generate at most (default {max_new_tokens or d('max_new_tokens')})",
    )
    g.add_argument(
        "--min-new-tokens",
        type=int,
        metavar="N",
        help=f"no end of text before N new tokens (default {d('min_new_tokens')})",
    )
    g.add_argument(
        "--ignore-eos",
        action="store_true",
        default=None,
        help="keep going past the end-of-text token (default: stop there)",
    )
    g.add_argument(
        "--stop",
        action="append",
        metavar="S",
        type=_stop,
        help=r"stop before this string, which is cut; repeatable; \n, \t and \\ are understood "
        "(default: none)",
    )
    g.add_argument(
        "--seed",
        type=int,
        help="seed of the sampler: the same seed gives the same text (default: random); "
        "implies --strategy sample",
    )
    g.add_argument(
        "--context-overflow",
        choices=["error", "slide"],
        help="past the model's context: fail (default) or keep only the last tokens",
    )


def config_kwargs(args: argparse.Namespace) -> dict:
    """Only the flags the user gave: the API's defaults and its strategy rule
    (`GenerationConfig.from_kwargs`) stay the single source of truth."""
    from .generation_config import GenerationConfig

    names = set(GenerationConfig.field_names())
    kw = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "logit_bias" in kw:
        kw["logit_bias"] = dict(kw["logit_bias"])
    return kw


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _validated(kw: dict):
    from .generation_config import GenerationConfig

    config = GenerationConfig.from_kwargs(**kw)
    _warn(config.validate())
    return config


# -- generate -----------------------------------------------------------------------------------


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
    config = _validated(config_kwargs(args))
    _check_combinations(args, config)
    prompts = read_prompts_file(args.prompts_file) if args.prompts_file else None
    prompt = read_prompt(args.prompt) if prompts is None else None
    lm = load_lm(args)
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
    kw = config_kwargs(args)
    kw.setdefault("strategy", "sample")
    config = _validated(kw)
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
    from .cli_samplers import add_constraint_args

    p = sub.add_parser(
        "generate",
        help="continue a prompt",
        description="Continue PROMPT with the chosen decoding strategy. Without --strategy, "
        "the strategy is inferred from the flags given: beam search when --num-beams > 1, "
        "contrastive search when --penalty-alpha > 0, sampling when any of --temperature "
        "(other than 0), --top-k, --top-p, --min-p, --typical-p or --seed is given, greedy "
        "otherwise (the same rule as lm.generate).",
    )
    p.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="the prompt text, or - to read it from stdin",
    )
    add_model_arg(p)
    add_runtime_args(p)
    add_generation_args(p)
    add_constraint_args(p, _text_arg)
    g = p.add_argument_group("output")
    g.add_argument("--stream", action="store_true", help="print text as it is generated")
    g.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (with --prompts-file: one line per prompt)",
    )
    g.add_argument("--no-echo", action="store_true", help="print only the continuation")
    g.add_argument(
        "--logprobs",
        type=int,
        metavar="N",
        help="also show each token's top-N alternatives with their log-probabilities, "
        "N <= 20 (in --json: `top_logprobs`; default 0 = off)",
    )
    g = p.add_argument_group("batches and speed")
    g.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="generate for every prompt in FILE, as one batch: one prompt per line, or JSON "
        'Lines (a name ending in .jsonl: a string or {"prompt": ...} per line); - reads stdin',
    )
    g.add_argument(
        "--draft",
        metavar="DIR",
        help="a small model with the same tokenizer for speculative decoding (same output "
        "distribution; greedy gives the same tokens)",
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
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "next",
        help="show the next-token distribution",
        description="Show the most likely next tokens, raw and after the processor chain.",
    )
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    add_model_arg(p)
    add_runtime_args(p)
    add_processor_args(p, strategy_help="default: sample, so the chain shown is the sampling one")
    add_constraint_args(p, _text_arg)
    p.add_argument("--top", type=int, default=10, help="how many candidates (0 = all; default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_next)
