"""bench/llamacpp.py: the llama-bench runner (the GGUF export is tested in test_gguf_export)."""

from __future__ import annotations

import stat
import sys

import pytest

from bench.llamacpp import find_llama_bench, llama_bench


def test_llama_bench_runner_reads_the_json(tmp_path, monkeypatch):
    fake = tmp_path / "llama-bench"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        "assert sys.argv[sys.argv.index('-n') + 1] == '16'\n"
        "print(json.dumps([{'n_gen': 16, 'avg_ts': 123.5}]))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LLAMA_BENCH", str(fake))
    assert find_llama_bench() == str(fake)
    assert llama_bench(str(fake), tmp_path / "m.gguf", 16, 2) == 123.5
    fake.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    with pytest.raises(RuntimeError, match="failed \\(3\\): broken"):
        llama_bench(str(fake), tmp_path / "m.gguf", 16, 2)
    monkeypatch.setenv("LLAMA_BENCH", str(tmp_path / "missing"))
    assert find_llama_bench() is None
