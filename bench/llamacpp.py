"""The benchmark's optional reference point: llama.cpp decoding the same weights.

The weights go to llama.cpp as GGUF (`lmgen.gguf_export.write_gguf`, the code behind
`lmgen export-gguf`); `llama_bench` runs a `llama-bench` binary on the file and returns its
decode rate. Nothing here downloads anything: the binary comes from $LLAMA_BENCH or PATH, and
without one the comparison is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path


def find_llama_bench() -> str | None:
    explicit = os.environ.get("LLAMA_BENCH")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("llama-bench")


def llama_bench(
    binary: str,
    gguf_path: str | os.PathLike,
    new_tokens: int,
    threads: int,
    repeats: int = 1,
    timeout: float = 600,
) -> float:
    """Decode tokens/s (`llama-bench -p 0 -n new_tokens`, the mean over `repeats`)."""
    cmd = [
        binary,
        "-m",
        str(gguf_path),
        "-p",
        "0",
        "-n",
        str(new_tokens),
        "-t",
        str(threads),
        "-r",
        str(repeats),
        "-o",
        "json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-500:]}")
    results = json.loads(p.stdout)
    return float(results[0]["avg_ts"])


# -- llama-server (the serving benchmark's reference, bench/serving.py) -------------------------

LLAMA_SRC_ENV = "LLAMACPP_SRC"  # a llama.cpp source tree, e.g. the llama-cpp-python sdist's
# vendor/llama.cpp, whose build/ the server is built into


def find_llama_server(source: str | os.PathLike | None = None) -> str | None:
    """$LLAMA_SERVER, else `build/bin/llama-server` of the source tree (`source` or
    $LLAMACPP_SRC) when it is built, else llama-server on PATH; None without one."""
    explicit = os.environ.get("LLAMA_SERVER")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    src = source or os.environ.get(LLAMA_SRC_ENV)
    if src:
        built = Path(src) / "build" / "bin" / "llama-server"
        if built.is_file():
            return str(built)
    return shutil.which("llama-server")


def build_llama_server(source: str | os.PathLike, jobs: int = 2, timeout: float = 3600) -> str:
    """Builds the llama-server target in `source`/build (configured with the server on; the
    other targets and settings already there are kept) and returns the binary's path."""
    src = Path(source)
    if not (src / "CMakeLists.txt").is_file():
        raise RuntimeError(f"{src} is not a llama.cpp source tree (no CMakeLists.txt)")
    build = src / "build"
    steps = [
        ["cmake", "-S", str(src), "-B", str(build), "-DLLAMA_BUILD_SERVER=ON"],
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
    ]  # fmt: skip
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-500:]}")
    binary = build / "bin" / "llama-server"
    if not binary.is_file():
        raise RuntimeError(f"the build finished without {binary}")
    return str(binary)
