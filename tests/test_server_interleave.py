"""Over HTTP: a long beam search advances one step per turn, so a sampling request's first
token arrives while the search is still running; `context_overflow: slide` works with beams."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.server import create_app, serve_in_thread

TEXTS = ["To be, or not to be: that is the question."] * 20


@pytest.fixture(scope="module")
def slow_url(tmp_path_factory):
    lm = lmgen.load(save_peaky_model(tmp_path_factory.mktemp("interleave") / "m", TEXTS))
    lm.model.register_forward_pre_hook(lambda *_: time.sleep(0.01))
    with serve_in_thread(create_app({"m": lm})) as url:
        yield url


def test_a_sampling_stream_starts_before_a_running_beam_search_ends(slow_url):
    done = {}

    def beam():
        body = {"model": "m", "prompt": "To be", "max_tokens": 60, "num_beams": 4,
                "ignore_eos": True}  # fmt: skip
        r = httpx.post(slow_url + "/v1/completions", json=body, timeout=60)
        done["beam"] = (time.monotonic(), r.status_code)

    t = threading.Thread(target=beam)
    t.start()
    time.sleep(0.2)  # the search is under way
    body = {"model": "m", "prompt": "or not", "max_tokens": 30, "stream": True, "seed": 1,
            "ignore_eos": True}  # fmt: skip
    with httpx.stream("POST", slow_url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                first = time.monotonic()
                break
    t.join()
    assert done["beam"][1] == 200
    assert first < done["beam"][0]


def test_beam_search_slides_past_the_context(slow_url):
    prompt = "To be, or not to be: that is the question. " * 12  # > 128 positions
    body = {"model": "m", "prompt": prompt, "max_tokens": 8, "num_beams": 2,
            "context_overflow": "slide", "ignore_eos": True}  # fmt: skip
    r = httpx.post(slow_url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8
    body["context_overflow"] = "error"
    r = httpx.post(slow_url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
