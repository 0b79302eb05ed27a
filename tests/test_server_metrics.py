"""`GET /metrics`: the exposition parsed with prometheus_client's own parser (the oracle for
the format), its numbers checked against what the requests themselves returned."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import lmgen
from conftest import save_peaky_model
from lmgen.server import create_app, serve_in_thread

TEXTS = ["To be, or not to be: that is the question.", "hello world, a test."] * 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = save_peaky_model(tmp_path_factory.mktemp("metrics") / "tiny", TEXTS)
    app = create_app({"tiny": lmgen.load(d)}, kv_cache_bytes=1 << 24)
    with serve_in_thread(app) as url:
        yield url


def scrape(url) -> dict:
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.labels.get("model", "tiny") == "tiny":
                key = s.name + (f"[{s.labels['le']}]" if "le" in s.labels else "")
                samples[key] = s.value
    return samples


def test_metrics_count_the_requests_tokens_and_latencies(server):
    before = scrape(server)
    assert before["lmgen_requests_running"] == 0 and before["lmgen_requests_waiting"] == 0
    assert before["lmgen_kv_cache_capacity_bytes"] == 1 << 24
    tokens = 0
    for seed, n in ((1, 1), (2, 2)):
        body = {"model": "tiny", "prompt": "To be", "max_tokens": 6, "seed": seed, "n": n,
                "temperature": 0.9, "ignore_eos": True}  # fmt: skip
        r = httpx.post(server + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        tokens += r.json()["usage"]["completion_tokens"]
    after = scrape(server)
    assert tokens == 18
    generated = "lmgen_generated_tokens_total"
    assert after[generated] - before.get(generated, 0) == tokens
    ttft = "lmgen_time_to_first_token_seconds_count"
    assert after[ttft] - before.get(ttft, 0) == 2  # one first token per request
    # a prompt's choices share a step: 5 gaps after the first token, per request
    itl = "lmgen_inter_token_latency_seconds_count"
    assert after[itl] - before.get(itl, 0) == 10
    assert after["lmgen_inter_token_latency_seconds_bucket[+Inf]"] == after[itl]
    assert after["lmgen_time_to_first_token_seconds_sum"] > 0
    assert after["lmgen_kv_cache_used_bytes"] == 0  # finished rows hold nothing
    assert after["lmgen_requests_running"] == 0
