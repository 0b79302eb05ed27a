"""What the commands of the command line share: argument types that refuse bad values with a
one-line message, command-line text as valid Unicode, and the model options (which model, on
which device, in which dtype)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
from pathlib import Path

from .errors import ConfigError

# -- argument types -----------------------------------------------------------------------------


def early_stopping_arg(value: str):
    """true and false as booleans; any other word as it is, for GenerationConfig's check
    (settings.check_early_stopping: one message from Python, the command line and HTTP)."""
    v = value.lower()
    return v == "true" if v in ("true", "false") else value


def finite_float(value: str) -> float:
    """A number; `inf` and `nan` are refused here, with a message that says so."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return v


def model_name(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "is empty; give a model directory, a bundled model name (shakespeare) or hf:NAME"
        )
    return value


def token_bias(value: str) -> tuple[int, float]:
    token, sep, bias = value.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), finite_float(bias)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected TOKEN_ID=BIAS, e.g. 198=-100, got {value!r}"
        ) from None


def sequence_bias_arg(value: str) -> tuple[list[int], float]:
    """IDS=BIAS, the ids comma-separated: "464,3290=-5"."""
    ids, sep, bias = value.rpartition("=")
    try:
        if not sep or not ids:
            raise ValueError
        return [int(t) for t in ids.split(",")], finite_float(bias)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected TOKEN_IDS=BIAS with the ids comma-separated, e.g. 464,3290=-5, got {value!r}"
        ) from None


def sampler_list(value: str) -> list[str]:
    """llama.cpp's --samplers: names separated by ';' (or ',')."""
    names = [n.strip() for n in value.replace(",", ";").split(";") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected sampler names separated by ';', got {value!r}")
    return names


def dola_layers_arg(value: str) -> str | list[int]:
    """low, high, or layer numbers separated by commas."""
    if value in ("low", "high"):
        return value
    try:
        return [int(i) for i in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected low, high or layer numbers separated by ',', got {value!r}"
        ) from None


def text_arg(value: str) -> str:
    try:
        return arg_text(value, "it")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def escaped_text(value: str) -> str:
    try:
        return unescape(arg_text(value, "it"))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def unescape(value: str) -> str:
    r"""`--stop "\n\n"` means two newlines, as in llama.cpp; other backslashes stay."""
    return re.sub(r"\\[nt\\]", lambda m: _ESCAPES[m.group()], value)


# -- text from the command line: UTF-8 or a one-line error ---------------------------------------


BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors write first


def utf8(data: bytes, what: str) -> str:
    """`data` decoded as UTF-8 without a leading byte order mark (as the server reads a
    body), or ConfigError naming the first byte that is not UTF-8."""
    try:
        return data.removeprefix(BOM).decode("utf-8")
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
    """`-` reads stdin (Windows line ends as newlines, as text mode reads them), without the
    one newline that `echo` and editors add at the end."""
    if prompt == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        text = utf8(buffer.read(), "stdin") if buffer is not None else sys.stdin.read()
        text = text.replace("\r\n", "\n")
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
    data = data.removeprefix(BOM)
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


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        type=model_name,
        default=None,
        help="model directory, .gguf file, bundled model name, or hf:NAME (default: shakespeare)",
    )


DTYPES = ("float32", "bfloat16", "float16")
# lmgen.load(quantize=...): declared here, where the command lines read it without torch
QUANTIZE_METHODS = ("int8", "int4", "none")
QUANTIZE_HELP = (
    "int8: int8 weight-only linear layers; int4: Q4_0 blocks (llama.cpp's format); none: float "
    "weights, also from a .gguf, which otherwise keeps its Q8_0/Q4_0/Q4_1/Q5_0/Q4_K weights "
    "(default: none, or the .gguf's own)"
)


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
    g.add_argument("--quantize", choices=QUANTIZE_METHODS, default=None, help=QUANTIZE_HELP)


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


def non_empty(value: str) -> str:
    """Command-line text (`text_arg`'s checks), never empty."""
    text = text_arg(value)
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def text_file(value: str) -> str:
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


def add_command(sub, func, name: str, help: str, description: str | None = None, **kw):
    """The subcommand `name`, which runs `func`: `help` is its line in the list of commands,
    `func`'s docstring its --help description (unless `description` is given)."""
    description = description or inspect.cleandoc(func.__doc__ or "")
    p = sub.add_parser(name, help=help, description=description, **kw)
    p.set_defaults(func=func)
    return p


def add_json_option(p, what: str = "one JSON object") -> None:
    """`--json`: print `what` instead of the readable output."""
    p.add_argument("--json", action="store_true", help=f"print {what}")


def add_int_option(g, flag: str, default: int, help: str, note: str = "") -> None:
    """An int option whose help ends with its default (and `note`)."""
    g.add_argument(flag, type=int, default=default, help=f"{help} (default {default}{note})")
