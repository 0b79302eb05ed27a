"""Shared display helpers: readable token labels, one house style, and writing figures.

Figures are built with `matplotlib.figure.Figure` directly, never through pyplot: no display
or GUI backend is needed, nothing global is left behind, and a notebook still shows the
returned figure.
"""

from __future__ import annotations

import contextlib
import functools
import os
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from lmgen.errors import ConfigError
from lmgen.tokenizers import token_bytes

from . import DPI, FORMATS
from .tokens import token_text  # noqa: F401 (part of style's API)

FONT = "DejaVu Sans"  # ships with matplotlib, so every machine draws the same glyphs
MONO = "DejaVu Sans Mono"

STYLE = {
    "font.family": [FONT],
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
}

# Colours used with the same meaning in every picture.
SELECTED = "#d62728"  # the token a method chooses
REMOVED = "#d9d9d9"  # a candidate a processor removed
REMOVED_TEXT = "#8c8c8c"
KEPT = "#1f77b4"
FINISHED = "#2ca02c"
CUTOFF = "#222222"
SEQ_CMAP = "Blues"  # probabilities
DIV_CMAP = "coolwarm"  # embeddings (signed)


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """The house style while a figure is built (font families are resolved at creation)."""
    with matplotlib.rc_context(STYLE):
        yield


def styled(fn):
    """Decorator: build the figure under `house_style()`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with house_style():
            return fn(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches with constrained layout, no pyplot involved."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# -- readable token text ----------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _charmap() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    codes: set[int] = set()
    for family in (FONT, MONO):
        path = font_manager.findfont(family, fallback_to_default=True)
        codes |= set(FT2Font(path).get_charmap())
    return frozenset(codes)


def has_glyph(ch: str) -> bool:
    """Whether the house fonts can draw `ch` (otherwise it would show as an empty box)."""
    return ord(ch) in _charmap()


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def readable(text: str, *, spaces: bool = True, math: bool = True) -> str:
    """`text` as something a picture can show: spaces as ␣ (when `spaces`), line breaks as ↵,
    other control characters and characters the font cannot draw as escapes (\\x07, \\u65e5),
    and (when `math`, for text matplotlib parses) `$` escaped so it is not read as math."""
    out = []
    for ch in text:
        if ch in _VISIBLE and (spaces or ch != " "):
            out.append(_VISIBLE[ch])
        elif ch == "$" and math:
            out.append(r"\$")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(_escape(ch))
        elif not has_glyph(ch):
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out) or "∅"


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def token_label(tokenizer, token_id: int, *, spaces: bool = True) -> str:
    """A readable label for one token: `␣the`, `↵`, `\\xe6\\x97`, `\\u65e5`."""
    return readable(token_text(tokenizer, token_id), spaces=spaces)


def decoded_text(tokenizer, token_ids) -> str:
    """The text of a token sequence; bytes that do not form whole UTF-8 characters (a
    sequence cut inside one) are written as escapes, e.g. `\\xe6`, instead of `�`."""
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids)
    if "\ufffd" in text:
        parts = [token_bytes(tokenizer, t) for t in ids]
        if all(p is not None for p in parts):
            text = b"".join(parts).decode("utf-8", errors="backslashreplace")
    return text


def token_labels(tokenizer, token_ids) -> list[str]:
    return [token_label(tokenizer, t) for t in token_ids]


def esc(text: str) -> str:
    """Plain text (a title, a prompt) with `$` escaped for matplotlib."""
    return text.replace("$", r"\$")


def quoted(text: str, limit: int = 60, *, keep: str = "end") -> str:
    """A prompt for a title, line breaks as ↵, `$` escaped: its end (what the model continues),
    or with `keep="both"` its start and end around a `…` (for pictures that show every token
    of the prompt from the first, such as attention)."""
    return readable(shorten(text, limit) if keep == "end" else elide(text, limit), spaces=False)


def elide(text: str, limit: int = 60) -> str:
    """A long text's start and end, with `…` for the middle."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[-(limit - 1 - head) :]


def shorten(text: str, limit: int = 60) -> str:
    """The end of a long text, `…`-prefixed: the end of a prompt is what the model continues."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


# -- writing files ----------------------------------------------------------------------------


# suffixes that name image formats the plots do not write
OTHER_IMAGE_SUFFIXES = {"jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "eps", "ps", "svgz"}


def output_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The format to write: `fmt` if given, else the file's suffix (png, svg or pdf; another
    suffix is refused rather than filled with png bytes), else png. `fmt` writes its format
    under any name that is not another of the three; the refusal suggests it only for names
    that are not another image format's (.jpg, .gif, ...), where it would mislead."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", "format")
        if suffix in FORMATS and suffix != fmt:
            raise ConfigError(
                f"{path}: the name ends in .{suffix} but the format is {fmt}; make them agree",
                "format",
            )
        return fmt
    if suffix and suffix not in FORMATS:
        hint = " (or give --format to write one of those under this name)"
        if suffix in OTHER_IMAGE_SUFFIXES:  # png bytes under a .jpg name: not suggested
            hint = ""
        raise ConfigError(
            f"{path}: cannot write .{suffix} files; name it .png, .svg or .pdf{hint}", "format"
        )
    return suffix or "png"


def check_output(
    path: str | os.PathLike, fmt: str | None = None, dpi: int = DPI
) -> tuple[Path, str]:
    """(path, format) for a figure file, or ConfigError naming the path when it cannot be
    written; called before any work so a bad `--out` fails at once."""
    fmt = output_format(path, fmt)
    if not isinstance(dpi, int) or isinstance(dpi, bool) or not 10 <= dpi <= 1000:
        raise ConfigError(f"dpi must be an int in [10, 1000], got {dpi!r}", "dpi")
    path = Path(path).expanduser()
    if str(path) in ("", "."):
        raise ConfigError("give an output file name", "out")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory; give a file name", "out")
    parent = path.parent
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"cannot write {path}: the folder {parent} {why}", "out")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {path}: permission denied", "out")
    return path, fmt


def save_figure(
    fig: Figure, path: str | os.PathLike, fmt: str | None = None, dpi: int = DPI
) -> Path:
    """Writes `fig` to `path` (png, svg or pdf; from `fmt`, else the suffix, else png)
    through a temporary file in the same folder renamed into place, so a reader never sees
    half an image. Returns the path written; one that cannot be written raises ConfigError
    naming it."""
    path, fmt = check_output(path, fmt, dpi)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:  # honours the umask, unlike mkstemp's 0o600
            fig.savefig(fh, format=fmt, dpi=dpi, facecolor="white")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}", "out") from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
