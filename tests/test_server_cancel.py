"""A client that goes away stops its work within a decode step, whatever the strategy: the
worker steps a Session (beam search too), and a dropped job closes it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.server import create_app, serve_in_thread

TEXTS = ["To be, or not to be: that is the question."] * 20


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """A server whose model counts its forward passes (each slowed to ~10 ms)."""
    lm = lmgen.load(save_peaky_model(tmp_path_factory.mktemp("cancel") / "m", TEXTS))
    calls = [0]

    def hook(*_):
        calls[0] += 1
        time.sleep(0.01)

    lm.model.register_forward_pre_hook(hook)
    with serve_in_thread(create_app({"m": lm})) as url:
        yield url, calls


def _cancelled(url) -> int:
    return httpx.get(url + "/health").json()["models"]["m"]["cancelled"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/completions", {"max_tokens": 100}),
        ("/v1/completions", {"max_tokens": 100, "temperature": 1.0, "seed": 1}),
        ("/v1/completions", {"max_tokens": 100, "num_beams": 4}),
        ("/v1/completions", {"max_tokens": 100, "stream": True}),
        ("/v1/lmgen/beam", {"max_tokens": 100, "num_beams": 4}),
    ],
    ids=["greedy", "sample", "beam", "stream", "playground-beam"],
)
def test_a_disconnect_stops_the_work_within_a_step(counted, path, body):
    url, calls = counted
    before = _cancelled(url)
    body = {"prompt": "To be", "ignore_eos": True, **body}

    def client():
        try:
            with httpx.stream("POST", url + path, json=body, timeout=0.3) as r:
                for chunk in r.iter_bytes():
                    if b"data: " in chunk:  # streamed: the first event arrived; hang up
                        break
        except httpx.TimeoutException:
            pass

    t = threading.Thread(target=client)
    t.start()
    t.join()
    gone = time.monotonic()
    while _cancelled(url) == before and time.monotonic() - gone < 5:
        time.sleep(0.01)
    assert _cancelled(url) == before + 1
    assert time.monotonic() - gone < 1.0
    settled = calls[0]
    time.sleep(0.3)
    assert calls[0] - settled <= 1  # at most the step that was running when it was dropped
