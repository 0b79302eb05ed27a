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
