"""Hostile requests get a clear 4xx, never a 500: hostile values in every field of every
endpoint, token ids that overflow or lie outside the vocabulary, a memory budget that refuses
or queues what would not fit, Host headers of other sites (DNS rebinding), duplicated
Authorization headers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.server import create_app, serve_in_thread
from lmgen.server.budget import MemoryBudget, bytes_per_position
from lmgen.server.errors import APIError

TEXTS = ["To be, or not to be: that is the question."] * 12
KEY = "sk-hardening-0123456789"

# Values no field expects, as raw JSON (so NaN, lone surrogates and huge ints travel as is).
HOSTILE = [
    "null",
    "true",
    "-1",
    "0",
    "1.5",
    str(2**63),
    str(2**64),
    "1" + "0" * 40,
    "-" + "1" * 30,
    "1e308",
    "-1e308",
    "1e-320",
    "NaN",
    "Infinity",
    '""',
    '"\\udcff"',
    '"ROMEO: \\ud800 x"',
    '"\\u00b2"',
    '"' + "x" * 5000 + '"',
    "[]",
    "[[]]",
    "[1, -1]",
    f"[{2**63}]",
    "[[1, 2], [3]]",
    '["a", 1]',
    "{}",
    '{"a": 1}',
    '{"\\u00b2": 1}',
    '{"' + "9" * 20 + '": 1}',
    '{"99999": 1}',
    '{"5": "x"}',
    '{"5": NaN}',
    "[" * 200 + "]" * 200,
    # issue 31: lone surrogates as field names, numbers of thousands of digits, deep nesting
    '{"\\ud800": 1}',
    '{"5": 1, "\\udfff": 0.5}',
    '[{"\\ud800": 1}]',
    '{"type": "text", "\\udbff\\udbff": {"\\udc00": []}}',
    "9" * 5000,
    "-0." + "1" * 1500,
    "[" * 3000 + "]" * 3000,
    '{"a": ' * 70 + "1" + "}" * 70,
]
ENDPOINTS = {
    "/v1/completions": {"prompt": "To be", "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/lmgen/next": {"prompt": "To be", "top": 3},
    "/v1/lmgen/beam": {"prompt": "To be", "max_tokens": 2, "num_beams": 2},
}
FIELDS = {
    "/v1/completions": [
        "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream",
        "logprobs", "echo", "logit_bias", "presence_penalty", "frequency_penalty", "top_k",
        "min_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size", "num_beams",
        "length_penalty", "early_stopping", "min_tokens", "ignore_eos", "context_overflow",
        "best_of", "suffix", "user", "model", "stream_options",
    ],
    "/v1/chat/completions": [
        "messages", "max_tokens", "max_completion_tokens", "temperature", "n", "stop",
        "logprobs", "top_logprobs", "logit_bias", "seed", "tools", "response_format", "model",
    ],
    "/v1/lmgen/next": [
        "prompt", "top", "temperature", "top_k", "top_p", "min_p", "typical_p",
        "repetition_penalty", "presence_penalty", "no_repeat_ngram_size", "min_tokens_to_keep",
        "logit_bias", "strategy", "choose", "seed", "temperature_last",
    ],
    "/v1/lmgen/beam": [
        "prompt", "max_tokens", "num_beams", "n", "length_penalty", "early_stopping",
        "repetition_penalty", "logit_bias", "min_tokens", "ignore_eos",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_peaky_model(tmp_path_factory.mktemp("hard") / "tiny", TEXTS)


@pytest.fixture(scope="module")
def server(model_dir, one_thread):
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)}, allowed_hosts=[])) as url:
        yield url


# One client, a new connection per request: creating a client costs ~50 ms, and a kept-alive
# connection waits ~40 ms per request on this loopback (uvicorn's, in a thread).
CLIENT = httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


def raw_post(url: str, path: str, body: str) -> httpx.Response:
    return CLIENT.post(
        url + path,
        content=body.encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "application/json"},
    )


def _with(body: dict, field: str, raw_value: str) -> str:
    """`body` as JSON with `field` set to the raw JSON text `raw_value`."""
    rest = {k: v for k, v in body.items() if k != field}
    head = json.dumps(rest)[:-1]
    return f'{head}{", " if rest else ""}"{field}": {raw_value}}}'


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_hostile_values_in_every_field_of_every_endpoint_are_never_a_5xx(server, path):
    statuses: dict[int, int] = {}
    failures = []
    base = ENDPOINTS[path]
    # one endpoint per test: a few seconds each, spread over the workers
    for field in FIELDS[path]:
        for value in HOSTILE:
            r = raw_post(server, path, _with(base, field, value))
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                failures.append(f"{path} {field}={value[:40]}: {r.text[:200]}")
            elif r.status_code >= 400 and not r.headers["content-type"].startswith(
                "application/json"
            ):
                failures.append(f"{path} {field}={value[:40]}: not a JSON error")
    assert failures == []
    assert sum(statuses.values()) == len(FIELDS[path]) * len(HOSTILE)
    assert statuses.get(400, 0) > statuses.get(200, 0)  # most of them are refused


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/lmgen/next", "/v1/lmgen/beam"])
@pytest.mark.parametrize("key", ["9" * 20, str(2**63), "99999", "300", "\u00b2", "\u0663", "-1"])
def test_logit_bias_keys_outside_the_vocabulary_are_400(server, path, key):
    body = {**ENDPOINTS[path], "logit_bias": {key: 1.0}}
    r = httpx.post(server + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "logit_bias" and err["code"] == "invalid_value"
    assert "token id" in err["message"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/lmgen/next"])
@pytest.mark.parametrize("token", [2**70, 10**18, 99999])
def test_sequence_bias_ids_beyond_any_vocabulary_are_400(server, path, token):
    """Found by the slow schema fuzz: an id past torch.long was a 500 (the tensor of ids)."""
    body = {**ENDPOINTS[path], "sequence_bias": [[[token], 1.0]]}
    r = httpx.post(server + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "sequence_bias" and err["code"] == "invalid_value"
    assert "token id" in err["message"]


def test_logit_bias_at_the_vocabulary_edge_works(server, model_dir):
    vocab = lmgen.load(model_dir).config.vocab_size
    body = {"prompt": "To be", "strategy": "greedy", "choose": True}
    r = httpx.post(server + "/v1/lmgen/next", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["chosen"]["token_id"] != vocab - 1
    body["logit_bias"] = {str(vocab - 1): 100}
    r = httpx.post(server + "/v1/lmgen/next", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["chosen"]["token_id"] == vocab - 1


# -- the memory budget ----------------------------------------------------------------------


def test_the_estimate_per_position_is_the_kv_cache_plus_the_working_set(model_dir):
    lm = lmgen.load(model_dir)  # 2 layers, 32 wide, float32
    assert bytes_per_position(lm) == (2 * 2 + 16) * 32 * 4


def test_budget_grants_in_order_refuses_the_impossible_and_times_out():
    async def scenario():
        budget = MemoryBudget(total=100, per_request=80, wait_s=0.2)
        assert await budget.reserve(60, "a") == 60
        with pytest.raises(APIError) as e:
            await budget.reserve(81, "too big")
        assert e.value.status == 413 and "--max-request-memory" in e.value.message
        waiting = asyncio.ensure_future(budget.reserve(50, "b"))  # 40 free: waits
        small = asyncio.ensure_future(budget.reserve(10, "c"))  # fits, but queued behind b
        await asyncio.sleep(0.05)
        assert not waiting.done() and not small.done() and budget.used == 60
        budget.release(60)
        assert await waiting == 50 and await small == 10 and budget.used == 60
        with pytest.raises(APIError) as e:
            await budget.reserve(50, "d")  # 40 free and nothing is released
        assert e.value.status == 429 and e.value.headers == {"Retry-After": "1"}
        assert budget.used == 60 and budget.waiting == 0
        budget.release(50)
        budget.release(10)
        assert budget.used == 0

    asyncio.run(scenario())


def test_requests_beyond_the_memory_limits_are_413_and_429(model_dir):
    slow = lmgen.load(model_dir)
    slow.model.register_forward_pre_hook(lambda *a: time.sleep(0.01))
    per = bytes_per_position(slow)
    # 4 rows x 128 positions fit; 6 rows do not; two of 4 do not fit together
    app = create_app(
        {"slow": slow}, memory_budget=5 * 128 * per, max_request_memory=5 * 128 * per,
        memory_wait_s=0.3,
    )  # fmt: skip
    big = {"prompt": ["To be"] * 2, "n": 3, "max_tokens": 120, "ignore_eos": True}
    fits = {"prompt": ["To be"] * 2, "n": 2, "max_tokens": 100, "ignore_eos": True}
    with serve_in_thread(app) as url:
        r = httpx.post(url + "/v1/completions", json=big, timeout=30)
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "request_too_large" and "6 rows" in err["message"]
        results = {}
        first = threading.Thread(
            target=lambda: results.update(
                a=httpx.post(url + "/v1/completions", json=fits, timeout=60)
            )
        )
        first.start()
        time.sleep(0.3)
        r = httpx.post(url + "/v1/completions", json=fits, timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded"
        assert "memory budget" in r.json()["error"]["message"]
        first.join()
        assert results["a"].status_code == 200
        # the reservation came back: the same request now runs at once
        assert httpx.post(url + "/v1/completions", json=fits, timeout=30).status_code == 200
        assert httpx.get(url + "/health").json()["memory"]["used_bytes"] == 0


# -- Host and Authorization headers ---------------------------------------------------------


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("localhost", True),
        ("[::1]:8000", True),
        ("127.1.2.3", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_only_loopback_hosts_are_served_on_loopback(server, host, ok):
    r = httpx.get(server + "/v1/models", headers={"Host": host})
    assert (r.status_code == 200) == ok, r.text
    if not ok:
        assert r.status_code == 421 and r.json()["error"]["code"] == "invalid_host"


def test_allowed_hosts_and_the_playground(model_dir):
    app = create_app({"tiny": lmgen.load(model_dir)}, allowed_hosts=["my.box"])
    with serve_in_thread(app) as url:
        assert httpx.get(url + "/", headers={"Host": "my.box:8000"}).status_code == 200
        assert httpx.get(url + "/").status_code == 200  # 127.0.0.1: the playground works
        assert httpx.get(url + "/static/app.js").status_code == 200
        assert httpx.get(url + "/", headers={"Host": "other.box"}).status_code == 421
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)})) as url:  # no check
        assert httpx.get(url + "/health", headers={"Host": "any.where"}).status_code == 200


def test_more_than_one_authorization_header_is_refused(model_dir):
    app = create_app({"tiny": lmgen.load(model_dir)}, api_key=KEY)
    with serve_in_thread(app) as url:
        both = httpx.Headers(
            [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {KEY}")]
        )
        r = httpx.get(url + "/v1/models", headers=both)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_authorization"
        twice = httpx.Headers([("Authorization", f"Bearer {KEY}")] * 2)
        assert httpx.get(url + "/v1/models", headers=twice).status_code == 400
        one = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(url + "/v1/models", headers=one).status_code == 200


# -- issue 31: what the second probe found --------------------------------------------------

SURROGATE_KEY = '{"\\ud800": 1}'  # as JSON text: an object whose one key is a lone surrogate


def _schema_objects(spec: dict, node: dict, path: tuple = (), depth: int = 0) -> list[tuple]:
    """Every place in a request schema that holds a JSON object (a mapping), as a path of
    field names, with "[]" where an array's item is entered: derived from /openapi.json, so
    it follows the request models whatever they come to declare."""
    if depth > 6:
        return []
    if "$ref" in node:
        node = spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    found = []
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(key, []):
            found += _schema_objects(spec, sub, path, depth + 1)
    kind = node.get("type")
    if kind == "object" or "properties" in node or "additionalProperties" in node:
        if path:
            found.append(path)
        for name, sub in node.get("properties", {}).items():
            found += _schema_objects(spec, sub, path + (name,), depth + 1)
    if kind == "array" and isinstance(node.get("items"), dict):
        found += _schema_objects(spec, node["items"], path + ("[]",), depth + 1)
    return found


def _nested_body(path: tuple, leaf: str) -> str:
    """Raw JSON with `leaf` (raw JSON text) at `path`."""
    text = leaf
    for part in reversed(path):
        text = f"[{text}]" if part == "[]" else f'{{"{part}": {text}}}'
    return text


@pytest.fixture(scope="module")
def mapping_fields(server):
    spec = httpx.get(server + "/openapi.json").json()
    fields = {}
    for path, ops in spec["paths"].items():
        body = ops.get("post", {}).get("requestBody")
        if body:
            schema = body["content"]["application/json"]["schema"]
            fields[path] = sorted(set(_schema_objects(spec, schema)))
    return fields


def test_a_surrogate_key_in_every_mapping_field_of_every_endpoint_is_a_400(server, mapping_fields):
    """Finding 1: `{"logit_bias": {"\\ud800": 1}}` was a 500 (pydantic could not render its
    own error) and the next request on that keep-alive connection was reset. Every object
    position of every endpoint's schema, through one kept-alive connection."""
    assert {"/v1/completions", "/v1/chat/completions", "/v1/lmgen/next", "/v1/lmgen/beam"} <= set(
        mapping_fields
    )
    assert ("logit_bias",) in mapping_fields["/v1/completions"]
    assert ("response_format", "json_schema") in mapping_fields["/v1/chat/completions"]
    assert ("messages", "[]") in mapping_fields["/v1/chat/completions"]
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=1))
    tried = 0
    with client:
        for endpoint, paths in mapping_fields.items():
            for path in paths:
                body = _nested_body(path, SURROGATE_KEY)
                r = client.post(
                    server + endpoint,
                    content=body.encode("utf-8", "surrogatepass"),
                    headers={"Content-Type": "application/json"},
                )
                assert r.status_code == 400, (endpoint, path, r.text)
                err = r.json()["error"]
                assert err["param"] == path[0] and err["code"] == "invalid_value", err
                assert "field name is not valid Unicode: a lone surrogate U+D800" in err["message"]
                # the same connection goes on serving
                ok = client.post(server + "/tokenize", json={"prompt": "To be"})
                assert ok.status_code == 200, ok.text
                tried += 1
    assert tried >= 15


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_the_reported_logit_bias_surrogate_key_is_a_400(server, path):
    base = {**ENDPOINTS[path], "max_tokens": 2} if path != "/v1/lmgen/next" else ENDPOINTS[path]
    body = _with(base, "logit_bias", SURROGATE_KEY)
    with httpx.Client(timeout=30) as client:  # keep-alive: the second request reuses it
        r = client.post(
            server + path,
            content=body.encode("utf-8", "surrogatepass"),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err == {
            "message": "a field name is not valid Unicode: a lone surrogate U+D800 at "
            "character 0 of a name in 'logit_bias'",
            "type": "invalid_request_error",
            "param": "logit_bias",
            "code": "invalid_value",
        }
        assert client.post(server + path, json=ENDPOINTS[path]).status_code == 200


def test_a_lone_surrogate_as_a_field_name_is_reported_as_such(server):
    body = '{"prompt": "a", "max_tokens": 2, "x\\udcffy": 1}'
    r = raw_post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_parameter_name" and err["param"] is None
    assert err["message"] == (
        "a field name is not valid Unicode: a lone surrogate U+DCFF at character 1 of the "
        "name 'x\\udcffy'"
    )
    assert "must be a JSON object" not in err["message"]


@pytest.mark.parametrize(
    "body, param, words",
    [
        ('{"prompt": "a", "logit_bias": ' + "[" * 100_000 + "]" * 100_000 + "}", "logit_bias",
         "nests arrays and objects more than 64 deep (in 'logit_bias')"),
        ("[" * 100_000 + "]" * 100_000, None, "more than 64 deep (at character 64)"),
        ('{"prompt": ' + "[" * 70 + '"a"' + "]" * 70 + "}", "prompt",
         "more than 64 deep (in 'prompt')"),
        ('{"prompt": "a", "max_tokens": ' + "9" * 5000 + "}", "max_tokens",
         "a number in 'max_tokens' has 5,000 digits"),
        ('{"prompt": "a", "temperature": -0.' + "1" * 5000 + "}", "temperature",
         "a number in 'temperature' has 5,001 digits"),
        ('{"prompt": "a", "logit_bias": {"5": ' + "1" * 4000 + "}}", "logit_bias",
         "a number in 'logit_bias' has 4,000 digits"),
    ],
    ids=["deep logit_bias", "deep body", "65 deep", "5000 digits", "long float", "4000 digits"],
)  # fmt: skip
def test_deep_nesting_and_huge_numbers_say_what_is_wrong(server, body, param, words):
    r = raw_post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert words in err["message"], err
    assert err["param"] == param
    assert err["code"] == ("nesting_too_deep" if "deep" in words else "number_too_large")
    assert "error parsing the body" not in err["message"]


def test_moderate_nesting_and_long_numbers_are_left_to_the_fields(server):
    r = raw_post(server, "/v1/completions", '{"prompt": "a", "max_tokens": ' + "9" * 308 + "}")
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "invalid_value", err
    assert err["param"] == "max_tokens" and "2048" in err["message"], err
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for _ in range(20):  # 21 levels of JSON schema pass the body's check
        schema = {"type": "object", "properties": {"a": schema}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "response_format": fmt}  # fmt: skip
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "host",
    ["[::1].evil.example", "[::1]evil", "[::1", "::1", "[::1]:80:80", "127.0.0.1:80:80",
     "localhost:8o", "local host", "localhost/x", "localhost@evil.example", "[127.0.0.1]",
     "[::1%25lo]", "lo\u00e7alhost", "localhost:-1", "[zz::1]"],
)  # fmt: skip
def test_a_malformed_host_header_is_a_400(server, host):
    r = httpx.get(server + "/v1/models", headers={"Host": host.encode("latin-1")})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_host" and "malformed Host header" in err["message"]


@pytest.mark.parametrize(
    "host, status",
    [("[::1]", 200), ("[::1]:", 200), ("[0:0:0:0:0:0:0:1]:8000", 200), ("LOCALHOST", 200),
     ("localhost.", 200), ("a.localhost:1", 200), ("127.0.0.1:", 200), ("[::2]", 421),
     ("[v1.x]", 421), ("127.1", 421), ("2130706433", 421)],
)  # fmt: skip
def test_well_formed_hosts_are_served_or_421(server, host, status):
    r = httpx.get(server + "/v1/models", headers={"Host": host})
    assert r.status_code == status, r.text


def test_two_host_headers_are_a_400(server):
    host, port = server.removeprefix("http://").rsplit(":", 1)
    request = (
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n"
        b"Connection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    # uvicorn's parser (h11) refuses it before the guard sees it; the guard would too


def test_a_malformed_host_is_a_400_without_the_host_check_too(model_dir):
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)})) as url:
        assert httpx.get(url + "/health", headers={"Host": "any.where"}).status_code == 200
        r = httpx.get(url + "/health", headers={"Host": "[::1].evil.example"})
        assert r.status_code == 400


def test_allowed_hosts_must_be_hosts():
    from lmgen.errors import ConfigError
    from lmgen.server.guard import HostCheck

    assert HostCheck(["My.Box:8000", "[::2]"]).allows("my.box")
    assert HostCheck(["[::2]"]).allows("[0::2]:1")
    with pytest.raises(ConfigError, match="--allowed-host takes a host"):
        HostCheck(["[::1].evil.example"])


def test_a_parameter_of_another_endpoint_is_not_suggested_as_itself(server):
    body = {"prompt": "a", "response_format": {"type": "json_object"}}
    r = httpx.post(server + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"] == "parameter 'response_format' is not taken by this endpoint"
    assert err["param"] == "response_format" and err["code"] == "unknown_parameter"


def test_the_guard_refuses_two_host_headers_itself():
    from lmgen.server.guard import Guard, HostCheck

    guard = Guard(None, api_key=None, max_body_bytes=100, hosts=HostCheck([]))
    scope = {"headers": [(b"host", b"localhost"), (b"host", b"evil.example")], "path": "/"}
    err = guard.check_headers(scope)
    assert err.status == 400 and err.code == "invalid_host" and "2 Host headers" in err.message
    scope["headers"] = [(b"host", b"[::1].evil.example")]
    assert guard.check_headers(scope).status == 400
    scope["headers"] = [(b"host", b"localhost:1")]
    assert guard.check_headers(scope) is None


def test_a_logit_bias_key_is_quoted_in_its_error(server):
    body = {"prompt": "To be", "max_tokens": 2, "logit_bias": {"9" * 20: 1}}
    r = httpx.post(server + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "got '99999999999999999999'" in message and "{key" not in message, message


# Bodies that are not UTF-8, or UTF-8 that is not JSON: raw bytes (the probe sent 25).
RAW_BODIES = [
    b'{"prompt": "\xff"}',  # not UTF-8 inside a string
    b'{"pr\xc3": "x"}',  # a truncated two-byte sequence in a key
    b'{"prompt": "To be", "max_tokens": 2}\x80',  # a stray continuation byte at the end
    b'{"prompt": "\xc0\xaf"}',  # an overlong "/"
    b'{"prompt": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 (CESU-8)
    b'{"prompt": "\xf4\x90\x80\x80"}',  # beyond U+10FFFF
    b'{"prompt": "\xe2\x82"}',  # a truncated three-byte sequence
    '{"prompt": "To be"}'.encode("utf-16"),  # UTF-16 with its BOM
    '{"prompt": "To be"}'.encode("utf-16-le"),  # (FastAPI's decoder alone would take these)
    '{"prompt": "To be", "logit_bias": {"\ud800": 1}}'.encode("utf-16-be", "surrogatepass"),
    '{"prompt": "To be"}'.encode("utf-32"),
    b"\xef\xbb\xbf\xef\xbb\xbf{}",  # two byte order marks
    '{"prompt": "caf\u00e9"}'.encode("latin-1"),
    b'{"prompt": "a\x00b"}',  # a raw NUL inside a string
    b'{"prompt": "a\x01\x1fb"}',  # raw control characters inside a string
    b"\x00" * 64,
    bytes(range(256)),
    b"\xff\xfe\xfd",
    b"",
    b"   \n\t ",
    b"{",
    b'{"prompt": "To be"',
    b'{"prompt": "To be",}',
    b"{'prompt': 'To be'}",
    b'{"prompt": "To be"} {"prompt": "again"}',
    b"null",
    b'"\\ud800"',
    b'{"prompt": "To be", "max_tokens": 2, "logit_bias": {"\\ud800": 1}}',
    b'{"\\ud800": 1}',
]


@pytest.mark.parametrize("path", [*ENDPOINTS, "/tokenize", "/detokenize"])
def test_raw_byte_bodies_are_a_4xx_never_a_5xx(server, path):
    failures = []
    for body in RAW_BODIES:
        r = CLIENT.post(server + path, content=body, headers={"Content-Type": "application/json"})
        if not 400 <= r.status_code < 500:
            failures.append(f"{body[:40]!r}: {r.status_code} {r.text[:200]}")
            continue
        err = r.json()["error"]
        if "\n" in err["message"] or not err["code"]:
            failures.append(f"{body[:40]!r}: {err}")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            if f"at offset {e.start}" not in err["message"]:
                failures.append(f"{body[:40]!r}: the offset is not named: {err['message']}")
    assert failures == []


def test_a_utf8_byte_order_mark_is_ignored(server):
    """RFC 8259 §8.1 lets a parser ignore it; the body is then checked as any other."""
    body = b'{"prompt": "To be", "max_tokens": 2}'
    r = CLIENT.post(server + "/v1/completions", content=b"\xef\xbb\xbf" + body,
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text
    bad = b'\xef\xbb\xbf{"prompt": "a", "logit_bias": {"\\ud800": 1}}'
    r = CLIENT.post(server + "/v1/completions", content=bad,
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "lone surrogate U+D800" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "text, code",
    [
        ('{"a": "\\uD800"}', "invalid_value"),  # upper-case hex
        ('{"a": "\\udBfF"}', "invalid_value"),
        ('{"a": ["ok", {"b": "x\\udc00"}]}', "invalid_value"),
        ('{"\\uDC00": 1}', "invalid_parameter_name"),
        ('{"a": "\\\\ud800"}', None),  # a backslash, then "ud800": no surrogate
        ('{"a": "\\ud83d\\ude00"}', None),  # a pair: U+1F600
        ('{"a": "' + "9" * 400 + '"}', None),  # digits in a string
        ('{"a": 1' + "0" * 400 + ".5}", "number_too_large"),
        ('{"a": -' + "1" * 309 + "}", "number_too_large"),
        ('{"a": -' + "1" * 308 + "}", None),
        ('{"a": 1e400}', None),  # infinity: the fields refuse it
        ('{"a": "' + "[" * 100 + '"}', None),  # brackets in a string
        ('{"a": ' + "[" * 64 + "]" * 64 + "}", "nesting_too_deep"),  # 65 with the body's
        ('{"a": ' + "[" * 63 + "]" * 63 + "}", None),
        ('{"a": 1} x', "invalid_json"),
        ('{"a": "\\x"}', "invalid_json"),
    ],
)
def test_the_guard_decodes_json_bodies_as_it_says(text, code):
    from lmgen.server.guard import decode_error

    err = decode_error(text.encode())
    assert (err.code if err is not None else None) == code, err and err.message
    if err is not None:
        assert err.status == 400 and "\n" not in err.message


@pytest.mark.parametrize(
    "path, body, message, code",
    [
        ("/v1/completions", {"prompt": "a", "suffix": "x"},
         "'suffix' is not supported (only empty or null); got 'x'", "unsupported"),
        ("/v1/chat/completions", {"messages": []}, "'messages' must not be empty",
         "invalid_value"),
        ("/v1/completions", {"prompt": "a", "logit_bias": {"abc": 5}},
         "invalid value for 'logit_bias': logit_bias keys must be token ids (1 to 18 ASCII "
         "digits), got 'abc'", "invalid_value"),
        ("/v1/completions", {"prompt": "a", "temperature": "hot"},
         "invalid value for 'temperature': Input should be a valid number (got 'hot')",
         "invalid_value"),
    ],
)  # fmt: skip
def test_validation_messages_say_what_was_wrong_once(server, path, body, message, code):
    """An unsupported field says so (not 'at most 0 characters'), an empty list says it is
    empty, and what was sent is quoted once (lmgen's validators quote it themselves)."""
    r = httpx.post(server + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["message"] == message and error["code"] == code
    assert error["message"].count("got ") <= 1
