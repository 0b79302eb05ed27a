"""The small JSON files of a model directory (config.json, tokenizer_config.json) read with
one clear error each, and the helpers that quote a bad value or a library's exception in a
one-line message. A leaf module: checkpoint.py and tokenizers.py both use it."""

from __future__ import annotations

import errno
import json
import os
import reprlib
import stat
from pathlib import Path

from .errors import ModelLoadError

MAX_JSON_BYTES = 1 << 20  # config.json; tokenizer_config.json may hold more (added tokens)
# config.json's `torch_dtype` (transformers 5 writes `dtype`): what transformers' from_pretrained
# accepts (a floating-point torch dtype, by name); it refuses "float128", "int8", 12345, "auto"
TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64", "float", "half", "double")

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


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_json_file(path: Path, max_bytes: int = MAX_JSON_BYTES):
    """The parsed contents of a small JSON file, or a ModelLoadError that says what is wrong."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"{path}: {_file_kind(st.st_mode)}, not a file")
        size = st.st_size
        if size > max_bytes:
            raise ModelLoadError(f"{path}: {size:,} bytes, more than the {max_bytes:,} expected")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ModelLoadError(f"{path}: a symbolic link loop (it never reaches a file)") from e
        if e.errno == errno.ENOENT and path.is_symlink():
            raise ModelLoadError(
                f"{path}: a symbolic link to {os.readlink(path)!r}, which does not exist"
            ) from e
        raise ModelLoadError(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{path}: not UTF-8 (invalid byte at offset {e.start})") from e
    except RecursionError as e:
        raise ModelLoadError(f"{path}: invalid JSON (nested too deeply)") from e
    except ValueError as e:
        raise ModelLoadError(f"{path}: invalid JSON ({e})") from e


def check_torch_dtype(config: dict, source: str) -> None:
    """Refuses a `torch_dtype` / `dtype` in a model's config.json that is not a floating-point
    torch dtype's name (transformers refuses them too); null means "not said". The weights'
    own dtype is what lmgen reads: this only stops a config that cannot be right."""
    for key in ("torch_dtype", "dtype"):
        value = config.get(key)
        if value is not None and not (isinstance(value, str) and value in TORCH_DTYPES):
            raise ModelLoadError(
                f"{source}: {key} must be one of {', '.join(TORCH_DTYPES[:4])} (or null), "
                f"got {show(value)}"
            )
