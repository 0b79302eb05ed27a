"""Findings of a new-user tryout, each pinned by a test that failed before its fix: what
export-gguf writes with and without --dtype, and where it refuses to write."""

from __future__ import annotations

import pytest

from test_cli_generate import run
from test_gguf_quant import q8_file, raw_tensors  # noqa: F401  (the fixture)

gguf = pytest.importorskip("gguf")


def test_export_gguf_dtype_converts_kept_blocks(q8_file, tmp_path, capsys):  # noqa: F811
    kept, f16 = tmp_path / "kept.gguf", tmp_path / "f16.gguf"
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(kept))
    assert code == 0, err
    assert "Q8_0 blocks kept" in out
    assert raw_tensors(kept)["blk.0.attn_q.weight"][0] == "Q8_0"
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(f16), "--dtype", "float16")
    assert code == 0, err
    assert "float16 weights" in out and "Q8_0" not in out
    types = {kind for name, (kind, _) in raw_tensors(f16).items() if "norm" not in name}
    assert types == {"F16"}  # every weight matrix in the type asked for, none of the file's blocks


def test_export_gguf_refuses_other_suffix_and_existing_file(q8_file, tmp_path, capsys):  # noqa: F811
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(tmp_path / "m.bin"))
    assert code != 0 and ".gguf" in err and "Traceback" not in err
    assert not (tmp_path / "m.bin").exists()
    target = tmp_path / "there.gguf"
    target.write_bytes(b"keep me")
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(target))
    assert code != 0 and "--force" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == b"keep me"
    code, out, err = run(capsys, "export-gguf", str(q8_file), str(target), "--force")
    assert code == 0, err
    assert target.stat().st_size > 100
