"""Finding a model: a directory, a .gguf file, a bundled model's name or `hf:NAME`, and its
tokenizer alone. No torch here: `lmgen tokenize` and `lmgen --help` load none of it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import ModelLoadError
from .json_files import clip, first_line

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "shakespeare"


def read_tokenizer(path: str | Path):
    """The tokenizer alone (no weights read) of a model directory or a .gguf file."""
    path = Path(path)
    if path.is_file():
        from .model.gguf import read_gguf

        return read_gguf(path, tensors=False).tokenizer
    from .tokenizers import load_tokenizer

    return load_tokenizer(path)


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_dir: str | os.PathLike | None) -> Path:
    """A directory path, a bundled model's name, or `hf:owner/name` (downloaded and cached)."""
    name = str(name_or_dir) if name_or_dir is not None else DEFAULT_MODEL
    if name.startswith("hf:"):
        return download_from_hub(name[3:])
    try:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(
                    f"{clip(str(path))}: a file that is not .gguf; give a model directory "
                    "(config.json, model.safetensors, tokenizer.json) or a .gguf file"
                )
            return path
    except (OSError, RuntimeError, ValueError) as e:  # a name too long, ~nosuchuser, a NUL
        reason = getattr(e, "strerror", None) or first_line(e)
        raise ModelLoadError(f"{clip(repr(name))}: not a usable model path ({reason})") from e
    if os.sep in name or (os.altsep and os.altsep in name) or name.endswith(".gguf"):
        raise ModelLoadError(f"{clip(str(path))}: no such model directory or .gguf file")
    if name in bundled_models():
        return BUNDLED_DIR / name
    known = ", ".join(bundled_models()) or "none installed"
    raise ModelLoadError(
        f"{clip(repr(name))} is neither a model directory nor a bundled model (bundled: {known}); "
        "use a directory with config.json, model.safetensors and tokenizer.json, or hf:NAME"
    )


HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
]


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """Fetches a model directory from the Hugging Face Hub (or its local cache when offline)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelLoadError("hf: models need the huggingface_hub package") from e
    if not repo_id:
        raise ModelLoadError("hf: needs a repository name, e.g. hf:gpt2")
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except Exception as e:
        raise ModelLoadError(
            f"hf:{repo_id}: could not download or find it in the cache ({first_line(e)})"
        ) from e
    log.info("hf:%s -> %s", repo_id, path)
    return Path(path)
