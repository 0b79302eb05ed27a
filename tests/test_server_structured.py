"""Structured output and the new samplers over HTTP: OpenAI's `response_format` (json_schema,
json_object), vLLM's `guided_regex` / `guided_json` / `guided_choice` / `guided_grammar`, the
sampler fields, and their 400s — on the bundled model, through a real server."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

import lmgen
from lmgen.server import create_app, serve_in_thread

pytestmark = pytest.mark.usefixtures("one_thread")

SPEAKER = r"(ROMEO|JULIET|HAMLET): [A-Z][a-z]{1,8}\."
SCHEMA = {
    "type": "object",
    "properties": {
        "speaker": {"enum": ["ROMEO", "JULIET"]},
        "act": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["speaker", "act"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(create_app({"shakespeare": lmgen.load()})) as url:
        yield url


def post(server, path, body):
    return httpx.post(server + path, json=body, timeout=60)


def completion(server, **body):
    r = post(server, "/v1/completions", {"prompt": "Enter", "max_tokens": 40, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"]


def chat(server, **body):
    messages = [{"role": "user", "content": "Who speaks?"}]
    r = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 40, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"]


def test_chat_response_format_json_schema(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "line", "schema": SCHEMA, "strict": True}}
    for c in chat(server, response_format=fmt, n=3, seed=1):
        assert c["finish_reason"] == "stop"
        value = json.loads(c["message"]["content"])
        assert value["speaker"] in ("ROMEO", "JULIET") and 1 <= value["act"] <= 5


def test_chat_response_format_json_object_and_text(server):
    for c in chat(server, response_format={"type": "json_object"}, max_tokens=10, n=2, seed=2):
        assert c["message"]["content"].startswith("{")
        if c["finish_reason"] == "stop":
            assert isinstance(json.loads(c["message"]["content"]), dict)
    assert chat(server, response_format={"type": "text"}, max_tokens=3)  # no constraint


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("guided_regex", SPEAKER, lambda t: re.fullmatch(SPEAKER, t)),
        ("guided_json", SCHEMA, lambda t: json.loads(t)["speaker"] in ("ROMEO", "JULIET")),
        ("guided_json", json.dumps(SCHEMA), lambda t: json.loads(t)["act"] in range(1, 6)),
        ("guided_choice", ["ROMEO", "the Nurse"], lambda t: t in ("ROMEO", "the Nurse")),
        ("guided_grammar", 'start: "yes" | "no"\n', lambda t: t in ("yes", "no")),
        ("guided_grammar", 'root ::= "ay" | "nay"', lambda t: t in ("ay", "nay")),
    ],
)
def test_completions_guided(server, field, value, ok):
    for c in completion(server, **{field: value}, n=2, seed=3):
        assert c["finish_reason"] == "stop" and ok(c["text"]), c["text"]
    (c,) = completion(server, **{field: value}, temperature=0)  # greedy
    assert ok(c["text"])
    (c,) = completion(server, **{field: value}, num_beams=3)  # beam search
    assert ok(c["text"])


def test_streamed_text_obeys_and_unfinished_says_length(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(
        model="shakespeare", prompt="Enter", max_tokens=40, stream=True,
        extra_body={"guided_regex": SPEAKER},
    )  # fmt: skip
    pieces, reasons = [], []
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert re.fullmatch(SPEAKER, "".join(pieces)) and reasons[-1] == "stop"
    (c,) = completion(server, guided_regex=r"[a-z]{40}!", max_tokens=4)
    assert c["finish_reason"] == "length" and re.fullmatch(r"[a-z]*", c["text"])


def test_sampler_fields_reach_the_chain(server):
    body = {"prompt": "ROMEO:", "top": 3, "epsilon_cutoff": 3e-4, "eta_cutoff": 2e-3,
            "top_n_sigma": 2.0, "xtc_probability": 0.5, "xtc_threshold": 0.2,
            "dry_multiplier": 0.8, "dry_sequence_breakers": ["\n"], "dynatemp_range": 0.3,
            "mirostat": 2, "mirostat_tau": 4.0}  # fmt: skip
    r = post(server, "/v1/lmgen/next", body)
    assert r.status_code == 200, r.text
    assert [f["name"] for f in r.json()["filters"]] == [
        "DRY", "DynamicTemperature", "TopNSigma", "EpsilonCutoff", "EtaCutoff", "XTC",
        "MirostatV2",
    ]  # fmt: skip
    (c,) = completion(server, mirostat=2, dry_multiplier=0.8, xtc_probability=0.5, seed=1,
                      max_tokens=8)  # fmt: skip
    assert c["text"]


def test_playground_next_shows_what_the_constraint_removes(server):
    r = post(server, "/v1/lmgen/next", {"prompt": "ROMEO:", "top": 0, "choice": ["JULIET"]})
    assert r.status_code == 200, r.text
    out = r.json()
    kept = [c["token"] for c in out["candidates"] if c["kept"]]
    assert kept and all("JULIET".startswith(t) for t in kept)
    removed = {c["removed_by"] for c in out["candidates"] if not c["kept"]}
    assert removed == {"StructuredOutput"}


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/completions", {"guided_regex": "(ROMEO"}, "guided_regex", "unclosed group"),
        ("/v1/completions", {"guided_regex": r"[^\s\S]"}, "guided_regex", "no token"),
        ("/v1/completions", {"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        ("/v1/completions", {"guided_json": {"type": "strng"}}, "guided_json", "JSON schema"),
        ("/v1/completions", {"guided_choice": []}, "guided_choice", ""),
        ("/v1/completions", {"guided_grammar": "start: nope"}, "guided_grammar", "nope"),
        ("/v1/completions", {"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice",
         "at most one"),
        ("/v1/completions", {"guided_regex": "a", "ignore_eos": True}, "ignore_eos", ""),
        ("/v1/completions", {"xtc_threshold": 0.7}, "xtc_threshold", ""),
        ("/v1/completions", {"mirostat": 1}, "mirostat", ""),
        ("/v1/completions", {"dry_sequence_breakers": [""]}, "dry_sequence_breakers", ""),
        ("/v1/completions", {"epsilon_cutoff": 1.0}, "epsilon_cutoff", ""),
        ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "response_format",
         "json_schema.schema"),
        ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format", ""),
        ("/v1/chat/completions",
         {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
         "response_format", "JSON schema"),
        ("/v1/chat/completions",
         {"response_format": {"type": "json_object"}, "guided_regex": "a"}, "response_format",
         "at most one"),
        ("/v1/lmgen/next", {"regex": "("}, "regex", "not a valid regex"),
    ],
)  # fmt: skip
def test_bad_values_are_400s_naming_the_field(server, path, body, param, words):
    base = {"/v1/completions": {"prompt": "x", "max_tokens": 2},
            "/v1/chat/completions": {"messages": [{"role": "user", "content": "x"}],
                                     "max_tokens": 2},
            "/v1/lmgen/next": {"prompt": "x"}}[path]  # fmt: skip
    r = post(server, path, {**base, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert words in error["message"] and "\n" not in error["message"]
