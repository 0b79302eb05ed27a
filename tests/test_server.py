"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn
server on 127.0.0.1 and a free port. Results are checked against `lmgen.generate` itself."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.generation import generate, next_token
from lmgen.server import create_app, serve_in_thread

TEXTS = [
    "To be, or not to be: that is the question.",
    "The quick brown fox jumps over the lazy dog; the lazy dog does not mind.",
    "hello world this is a test of the language model.",
] * 12
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_peaky_model(tmp_path_factory.mktemp("server") / "tiny", TEXTS)


@pytest.fixture(scope="module")
def lm(model_dir):
    m = lmgen.load(model_dir)
    m.name = "tiny"
    return m


@pytest.fixture(scope="module")
def server(model_dir):
    """Two models ("tiny" and "tiny2"), no API key."""
    a, b = lmgen.load(model_dir), lmgen.load(model_dir)
    with serve_in_thread(create_app({"tiny": a, "tiny2": b})) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=30)


def post(server, path, body, timeout=30, **kw):
    return httpx.post(server + path, json=body, timeout=timeout, **kw)


# -- models, health ------------------------------------------------------------------------------


def test_models_and_health(server, client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny", "tiny2"]
    card = client.models.retrieve("tiny2")
    assert card.id == "tiny2" and card.owned_by == "lmgen"
    assert card.model_extra["max_model_len"] == 128
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {"tiny", "tiny2"}


# -- completions -----------------------------------------------------------------------------------


def test_completion_matches_generate(client, lm):
    r = client.completions.create(
        model="tiny", prompt="To be", max_tokens=12, seed=7, temperature=0.8, top_p=0.9
    )
    ref = generate(
        lm, "To be", strategy="sample", max_new_tokens=12, seed=7, temperature=0.8, top_p=0.9
    )
    (c,) = r.choices
    assert c.text == ref.text
    assert c.finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "text_completion" and r.model == "tiny"


def test_greedy_and_extensions_match_generate(client, lm):
    r = client.completions.create(
        model="tiny",
        prompt="The quick",
        max_tokens=10,
        temperature=0,
        extra_body={"repetition_penalty": 1.3, "min_tokens": 3},
    )
    ref = generate(
        lm,
        "The quick",
        strategy="greedy",
        max_new_tokens=10,
        repetition_penalty=1.3,
        min_new_tokens=3,
    )
    assert r.choices[0].text == ref.text
    r = client.completions.create(
        model="tiny",
        prompt="hello",
        max_tokens=8,
        seed=3,
        extra_body={"top_k": 5, "min_p": 0.05, "typical_p": 0.9, "ignore_eos": True},
    )
    ref = generate(
        lm,
        "hello",
        strategy="sample",
        max_new_tokens=8,
        seed=3,
        top_k=5,
        min_p=0.05,
        typical_p=0.9,
        ignore_eos=True,
    )
    assert r.choices[0].text == ref.text
    assert r.usage.completion_tokens == 8


def test_beam_search_via_extra_body(client, lm):
    r = client.completions.create(
        model="tiny",
        prompt="To be",
        max_tokens=6,
        n=2,
        extra_body={"num_beams": 3, "length_penalty": 0.5},
    )
    ref = generate(
        lm,
        "To be",
        strategy="beam",
        num_beams=3,
        num_return_sequences=2,
        max_new_tokens=6,
        length_penalty=0.5,
    )
    assert [c.text for c in r.choices] == [c.text for c in ref.choices]


def test_prompt_list_and_n(client, lm):
    prompts = ["To be", "The quick brown"]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=5, n=3, seed=11)
    assert [c.index for c in r.choices] == list(range(6))
    refs = [
        generate(lm, p, strategy="sample", num_return_sequences=3, max_new_tokens=5, seed=11)
        for p in prompts
    ]
    assert [c.text for c in r.choices] == [c.text for ref in refs for c in ref.choices]
    assert r.usage.prompt_tokens == sum(len(x.prompt_token_ids) for x in refs)
    assert r.usage.completion_tokens == sum(len(c.token_ids) for x in refs for c in x.choices)


def test_stop_strings(client, lm):
    full = generate(lm, "To be", max_new_tokens=20).text  # greedy
    assert len(full) > 6
    stop = full[3:6]
    r = client.completions.create(
        model="tiny", prompt="To be", max_tokens=20, temperature=0, stop=[stop, "zzzz"]
    )
    c = r.choices[0]
    assert c.finish_reason == "stop" and c.text == full[: full.find(stop)]
    r = client.completions.create(
        model="tiny", prompt="To be", max_tokens=20, temperature=0, stop=stop, stream=True
    )
    assert "".join(ch.choices[0].text for ch in r) == full[: full.find(stop)]


def test_logprobs_and_echo(client, lm):
    r = client.completions.create(
        model="tiny",
        prompt="To be",
        max_tokens=6,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    ref = generate(lm, "To be", max_new_tokens=6, logprobs=3, ignore_eos=True)
    lp = r.choices[0].logprobs
    assert lp.tokens == [lm.tokenizer.token_to_str(t) for t in ref.token_ids]
    assert lp.token_logprobs == pytest.approx(ref.choices[0].logprobs, abs=1e-5)
    assert all(len(d) <= 3 for d in lp.top_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(
        max(d.values()) == pytest.approx(v, abs=1e-5)
        for d, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )
    assert lp.text_offset[0] == 0

    e = client.completions.create(
        model="tiny",
        prompt="To be",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        echo=True,
        extra_body={"ignore_eos": True},
    )
    c = e.choices[0]
    assert c.text == "To be" + r.choices[0].text
    n_prompt = len(lm.tokenizer.encode("To be"))
    assert c.logprobs.token_logprobs[0] is None
    assert c.logprobs.top_logprobs[0] is None  # as OpenAI: nothing comes before the first
    assert all(len(d) == 2 for d in c.logprobs.top_logprobs[1:])
    assert len(c.logprobs.tokens) == n_prompt + 6
    assert c.logprobs.token_logprobs[n_prompt:] == pytest.approx(lp.token_logprobs, abs=1e-5)
    assert "".join(c.logprobs.tokens) == c.text


def test_streaming_equals_non_streaming(client):
    kw = dict(model="tiny", prompt="hello world", max_tokens=16, seed=5, temperature=1.2)
    whole = client.completions.create(**kw)
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finish[-1] == whole.choices[0].finish_reason and set(finish[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streaming_n_and_echo(client):
    kw = dict(model="tiny", prompt="To be", max_tokens=10, seed=9, n=3, echo=True)
    whole = client.completions.create(**kw)
    texts = ["", "", ""]
    for ch in client.completions.create(stream=True, **kw):
        for c in ch.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in whole.choices]
    assert all(t.startswith("To be") for t in texts)


def test_stream_with_logprobs_sends_whole_choices(client):
    kw = dict(model="tiny", prompt="To be", max_tokens=5, temperature=0, logprobs=1)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[0].choices[0].logprobs.tokens == whole.choices[0].logprobs.tokens


def test_seeded_text_is_the_same_alone_concurrent_and_streamed(client):
    kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=24, temperature=1.0)
    alone = {s: client.completions.create(seed=s, **kw).choices[0].text for s in (1, 2)}

    def one(i):
        seed = 1 + i % 2
        if i % 3 == 0:
            text = "".join(
                ch.choices[0].text for ch in client.completions.create(seed=seed, stream=True, **kw)
            )
        else:
            text = client.completions.create(seed=seed, **kw).choices[0].text
        return seed, text

    with ThreadPoolExecutor(8) as pool:
        # other work in between: unseeded requests, another model, the next-token endpoint
        noise = [
            pool.submit(client.completions.create, model="tiny2", prompt="x", max_tokens=30)
            for _ in range(3)
        ]
        results = list(pool.map(one, range(12)))
        for f in noise:
            f.result()
    for seed, text in results:
        assert text == alone[seed]


# -- chat ------------------------------------------------------------------------------------------


def test_chat(client, lm):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "To be or"},
    ]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, seed=4)
    prompt = "System: You are terse.\nUser: To be or\nAssistant:"
    ref = generate(
        lm, prompt, strategy="sample", max_new_tokens=12, seed=4, stop=["\nUser:", "\nSystem:"]
    )
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == ref.text
    assert r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(lm.tokenizer.encode(prompt))
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, seed=4, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_defaults_n_and_logprobs(client):
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        n=2,
        temperature=0.7,
        seed=1,
        logprobs=True,
        top_logprobs=2,
        max_completion_tokens=5,
    )
    assert len(r.choices) == 2
    for c in r.choices:
        assert c.logprobs.content and all(len(t.top_logprobs) == 2 for t in c.logprobs.content)
        assert "".join(t.token for t in c.logprobs.content) == c.message.content
    # no max_tokens: the rest of the context (this prompt is short)
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= 128


def test_chat_refuses_tools(server):
    r = post(
        server,
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "logprobs": 50}, "logprobs"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x", "stop": [1]}, "stop"),
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"5": 1000}}, "logit_bias"),
        ({"prompt": "x", "top_k": -2}, "top_k"),
        ({"prompt": "x", "num_beams": 2, "n": 3}, "n"),
        ({"prompt": "x", "min_tokens": 20, "max_tokens": 5}, "min_tokens"),
        ({"prompt": "x", "top-k": 3}, "top-k"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [1, 10**6]}, "prompt"),  # beyond the vocabulary
        ({}, "prompt"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x" * 400, "max_tokens": 16}, "prompt"),
        ({"prompt": "x", "max_tokens": 128}, "prompt"),
    ],
)
def test_invalid_completions_are_400(server, body, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_context_overflow_code(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hello " * 100, max_tokens=100)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", max_tokens=100, messages=[{"role": "user", "content": "hello " * 100}]
        )
    assert e.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", {"messages": []}),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        ),
        ("/v1/lmgen/next", {"prompt": "x", "top": -1}),
        ("/v1/lmgen/next", {"prompt": "x", "min_p": 2}),
        ("/v1/lmgen/beam", {"prompt": "x", "num_beams": 0}),
        ("/v1/lmgen/beam", {"prompt": "x", "max_tokens": 1000}),
        ("/v1/lmgen/beam", {"prompt": "x", "length_penalty": 1e6}),  # would overflow
        ("/v1/lmgen/next", {"prompt": "x", "temperature": 1e-300}),  # no finite probability left
        ("/v1/lmgen/next", {"prompt": "x", "logit_bias": {"1": "a"}}),
    ],
)
def test_invalid_other_endpoints_are_400(server, path, body):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_malformed_requests(server):
    r = httpx.post(
        server + "/v1/completions",
        content=b'{"prompt": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(
        server + "/v1/completions", content=b"[1, 2]", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    r = httpx.post(
        server + "/v1/completions",
        content=b"x" * (2 << 20),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(server + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-9", prompt="x", max_tokens=2)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_api_key(model_dir):
    app = create_app({"tiny": lmgen.load(model_dir)}, api_key=KEY)
    with serve_in_thread(app) as url:
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model="tiny", prompt="x", max_tokens=2).choices
        for key in ("wrong", KEY + "x", KEY[:-1]):
            bad = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as e:
                bad.models.list()
            assert e.value.code == "invalid_api_key"
        r = httpx.post(url + "/v1/completions", json={"prompt": "x"})  # no header at all
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(url + "/v1/completions", content=b"{bad json")  # auth comes first
        assert r.status_code == 401
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/").status_code == 200


# -- the playground's endpoints --------------------------------------------------------------------


def test_next_matches_lmgen_next_json(server, lm):
    body = {"model": "tiny", "prompt": "To be", "top": 8, "top_k": 5, "temperature": 0.7}
    out = post(server, "/v1/lmgen/next", body).json()
    ref = next_token(lm, "To be", top=8, top_k=5, temperature=0.7).to_dict()
    for key in ref:  # every field of `lmgen next --json`, unchanged
        if key != "candidates":
            assert out[key] == ref[key]
    assert len(out["candidates"]) == len(ref["candidates"])
    for got, want in zip(out["candidates"], ref["candidates"], strict=True):
        assert {k: got[k] for k in want} == pytest.approx(want)
    assert [c["kept"] for c in out["candidates"]] == [True] * 5 + [False] * 3
    assert {c["removed_by"] for c in out["candidates"][5:]} == {"TopK"}
    assert out["filters"][-1]["name"] == "TopK" and out["kept_count"] == 5
    assert out["filters"][-1]["removed"] == out["vocab_size"] - 5


def test_next_choose(server, lm):
    greedy = post(
        server, "/v1/lmgen/next", {"prompt": "The quick", "strategy": "greedy", "choose": True}
    ).json()
    assert greedy["chosen"]["token_id"] == greedy["greedy_token_id"]
    assert greedy["chosen"]["strategy"] == "greedy"
    body = {"prompt": "The quick", "choose": True, "seed": 123, "temperature": 1.5}
    a = post(server, "/v1/lmgen/next", body).json()["chosen"]
    b = post(server, "/v1/lmgen/next", body).json()["chosen"]
    assert a == b
    # the same sampler as generation: the first token of a seeded generate()
    ref = generate(
        lm,
        "The quick",
        strategy="sample",
        seed=123,
        temperature=1.5,
        max_new_tokens=1,
        ignore_eos=True,
    )
    assert a["token_id"] == ref.token_ids[0]
    assert a["text"] == ref.text


def test_beam_trace(server, lm):
    out = post(
        server, "/v1/lmgen/beam", {"prompt": "To be", "num_beams": 3, "max_tokens": 5, "n": 2}
    ).json()
    ref = generate(
        lm, "To be", strategy="beam", num_beams=3, max_new_tokens=5, num_return_sequences=2
    )
    assert [c["text"] for c in out["choices"]] == [c.text for c in ref.choices]
    ids = {"root"}
    for st in out["steps"]:
        for c in st["candidates"]:
            assert c["parent_id"] in ids and c["status"] in ("kept", "finished", "pruned")
        assert sum(c["status"] == "kept" for c in st["candidates"]) <= 3
        ids |= {c["id"] for c in st["candidates"] if c["status"] == "kept"}
    for c in out["choices"]:
        nodes = {d["id"]: d for st in out["steps"] for d in st["candidates"]}
        assert [nodes[n]["token_id"] for n in c["path"]][: len(c["token_ids"])] == c["token_ids"]


# -- concurrency, disconnects ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(model_dir):
    """A model slowed to ~20 ms a forward pass, so requests overlap and take a while."""
    slow = lmgen.load(model_dir)
    slow.model.register_forward_pre_hook(lambda *a: time.sleep(0.02))
    with serve_in_thread(create_app({"slow": slow}, max_active=4)) as url:
        yield url


def _stats(url):
    return httpx.get(url + "/health").json()["models"]["slow"]


def test_event_loop_stays_responsive_and_short_requests_overtake(slow_server):
    body = {"prompt": "x", "max_tokens": 120, "ignore_eos": True}  # >= 2.4 s
    long = threading.Thread(target=post, args=(slow_server, "/v1/completions", body))
    long.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert httpx.get(slow_server + "/health").status_code == 200
    assert time.monotonic() - t0 < 1.0  # the model's work does not block the event loop
    r = post(slow_server, "/v1/completions", {"prompt": "x", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200
    assert long.is_alive()  # the short request was served in turns, not after the long one
    long.join()


def test_client_disconnect_stops_generation(slow_server):
    before = _stats(slow_server)["cancelled"]
    body = {"prompt": "x", "max_tokens": 120, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", slow_server + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
    # non-streaming: the client gives up waiting
    with pytest.raises(httpx.TimeoutException):
        post(
            slow_server,
            "/v1/completions",
            {"prompt": "x", "max_tokens": 120, "ignore_eos": True},
            timeout=0.4,
        )
    deadline = time.monotonic() + 5
    while _stats(slow_server)["cancelled"] < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = _stats(slow_server)
    assert stats["cancelled"] == before + 2 and stats["active"] == 0


def test_full_queue_is_429(model_dir):
    slow = lmgen.load(model_dir)
    slow.model.register_forward_pre_hook(lambda *a: time.sleep(0.015))
    app = create_app({"slow": slow}, max_active=1, max_waiting=1)
    body = {"prompt": "x", "max_tokens": 60, "ignore_eos": True}
    with serve_in_thread(app) as url, ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, url, "/v1/completions", body)
        time.sleep(0.3)
        waiting = pool.submit(post, url, "/v1/completions", body)
        time.sleep(0.3)
        r = post(url, "/v1/completions", body)
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded"
        assert r.headers["retry-after"] == "1"
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_streamed_chunks_are_the_sessions_events_one_each(client, lm):
    # the oracle: the same request's session stepped alone (work.session_steps), its text
    # deltas and finishes in the order they are decided; each is one chunk of the stream, in
    # that order, however the worker hands a step's events to the event loop
    from lmgen.generation_config import GenerationConfig
    from lmgen.server.openai_api import FINISH
    from lmgen.server.work import session_steps

    config = GenerationConfig(strategy="sample", seed=3, temperature=1.0, max_new_tokens=12,
                              num_return_sequences=2, stop=["e"])  # fmt: skip
    events = []
    steps = session_steps(lm, ["To be"], config, lambda *e: events.append(e))
    for _ in steps:
        pass
    expect = [(i, rest[0], None) if kind == "delta" else (i, "", FINISH[rest[0]])
              for kind, i, *rest in events]  # fmt: skip
    stream = client.completions.create(model="tiny", prompt="To be", max_tokens=12, seed=3,
                                       temperature=1.0, n=2, stop=["e"], stream=True)  # fmt: skip
    got = [(c.index, c.text, c.finish_reason) for ch in stream for c in ch.choices]
    assert got == expect
    assert sum(r is not None for *_, r in got) == 2
