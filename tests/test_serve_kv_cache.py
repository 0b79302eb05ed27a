"""`lmgen serve --kv-cache-mb` and `--max-batch`: checked at the boundary (one error line, exit
2), the default taken from the machine's memory, and a request that could never fit the KV
cache refused over HTTP with a 400 that names the flag."""

from __future__ import annotations

import os

import httpx
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.cli import build_parser, main
from lmgen.server import create_app, serve_in_thread
from lmgen.server.cli import default_kv_cache_mb


@pytest.mark.parametrize("flag", ["--kv-cache-mb", "--max-batch"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_values_are_one_error_line(flag, value, capsys):
    assert main(["serve", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} must be >= 1") and err.count("\n") == 1


def test_the_default_is_a_quarter_of_the_machines_memory():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_kv_cache_mb() == total // 4 >> 20
    assert build_parser().parse_args(["serve"]).kv_cache_mb == default_kv_cache_mb()


def test_a_request_larger_than_the_kv_cache_is_a_400(tmp_path):
    d = save_peaky_model(tmp_path / "tiny", ["to be or not to be, that is the question."] * 8)
    lm = lmgen.load(d)
    per_position = 2 * lm.config.n_layer * lm.config.n_embd * 4
    app = create_app({"tiny": lm}, kv_cache_bytes=40 * per_position)
    with serve_in_thread(app) as url:
        small = {"model": "tiny", "prompt": "to be", "max_tokens": 8}
        assert httpx.post(url + "/v1/completions", json=small, timeout=60).status_code == 200
        big = {**small, "max_tokens": 60}
        r = httpx.post(url + "/v1/completions", json=big, timeout=60)
        assert r.status_code == 400
        error = r.json()["error"]
        assert "--kv-cache-mb" in error["message"] and error["param"] == "max_tokens"
