"""The small JSON files of a model directory (config.json, tokenizer_config.json) read with
one clear error each, and the helpers that quote a bad value or a library's exception in a
one-line message. A leaf module: checkpoint.py and tokenizers.py both use it."""

from __future__ import annotations

import json
import reprlib
from pathlib import Path

from .errors import ModelLoadError

MAX_JSON_BYTES = 1 << 20  # config.json; tokenizer_config.json may hold more (added tokens)

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlevel = 3


def show(value) -> str:
    """A value for an error message: short, and safe on deeply nested JSON."""
    return _short.repr(value)


def clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[: limit - 40]}...{text[-30:]}"


def first_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message for a one-line error: its first line, clipped."""
    lines = str(e).strip().splitlines()
    return clip(lines[0], limit) if lines else type(e).__name__


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in ((dict, "an object"), (list, "a list"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return "a number"


def read_json_file(path: Path, max_bytes: int = MAX_JSON_BYTES):
    """The parsed contents of a small JSON file, or a ModelLoadError that says what is wrong."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelLoadError(f"{path}: {size:,} bytes, more than the {max_bytes:,} expected")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{path}: not UTF-8 (invalid byte at offset {e.start})") from e
    except RecursionError as e:
        raise ModelLoadError(f"{path}: invalid JSON (nested too deeply)") from e
    except ValueError as e:
        raise ModelLoadError(f"{path}: invalid JSON ({e})") from e
