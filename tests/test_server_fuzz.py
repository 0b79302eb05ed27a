"""A property of the server (issue 31): any body Python's JSON decoder accepts gets a 2xx or a
4xx in OpenAI's error shape, never a 5xx, on every POST endpoint.

The bodies are drawn by hypothesis: the endpoint's own fields and unknown ones, with values of
every JSON type, lone surrogates in strings and in field names, NaN and infinities, huge
integers, numbers of thousands of digits, nesting deeper than the server takes. Derandomized,
so the default test run is deterministic and quick; LMGEN_FUZZ_EXAMPLES=5000 runs a longer
search with fresh examples."""

from __future__ import annotations

import json
import math
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmgen
from conftest import save_peaky_model
from lmgen.server import create_app, serve_in_thread

TEXTS = ["To be, or not to be: that is the question."] * 12
EXAMPLES = int(os.environ.get("LMGEN_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 100,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip

BASES = {
    "/v1/completions": {"prompt": "To be", "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/lmgen/next": {"prompt": "To be", "top": 3},
    "/v1/lmgen/beam": {"prompt": "To be", "max_tokens": 2, "num_beams": 2},
    "/tokenize": {"prompt": "To be"},
    "/detokenize": {"tokens": [1, 2]},
}


class Raw(str):
    """JSON text written into a body as it is (numbers of thousands of digits, NaN, deep
    nesting: what json.dumps would not write)."""


RAW = [
    "9" * 5000, "-" + "1" * 1200, "0." + "1" * 2000, "1e999999", "-1e-999999", "NaN",
    "-Infinity", "[" * 100 + "]" * 100, "[" * 3000 + "]" * 3000, '{"a":' * 80 + "1" + "}" * 80,
    '"\\ud800"', '"\\udfff\\ud800"', '{"\\ud800": 1}', '{"x\\udcff": {"\\udbff": []}}',
    '[{"\\ud800": null}]', '"\\u0000"', '"\\ud83d\\ude00"',
]  # fmt: skip

# Text with lone surrogates among ordinary characters.
chars = st.one_of(
    st.characters(exclude_categories=()),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
)
text = st.text(chars, max_size=10)
lone = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
surrogate_text = st.tuples(text, lone, text).map("".join)  # at least one lone surrogate
keys = st.one_of(text, surrogate_text, st.sampled_from(["5", "0", "9" * 20, "-1", "type"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.sampled_from(["greedy", "sample", "beam", "user", "assistant", "text", "json_object"]),
    st.sampled_from(RAW).map(Raw),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)


def dump(value) -> str:
    """Python's JSON (NaN and infinities as Python writes them) with Raw pieces verbatim and
    lone surrogates as \\u escapes."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dump(str(k))}: {dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: a lone surrogate becomes "\ud800"


def bodies(path: str):
    base = BASES[path]
    fields = sorted({*base, "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
                     "logprobs", "logit_bias", "response_format", "guided_choice", "min_p",
                     "repetition_penalty", "num_beams", "strategy", "messages", "tools",
                     "prompt", "tokens", "model", "max_tokens", "add_special_tokens"})  # fmt: skip
    names = st.one_of(st.sampled_from(fields), st.sampled_from(fields), keys)
    objects = st.dictionaries(keys, values, min_size=1, max_size=3)
    pairs = st.one_of(
        st.tuples(names, values),
        st.tuples(names, values),
        # the fields that hold objects, given objects (keys with lone surrogates among them)
        st.tuples(st.sampled_from(["logit_bias", "response_format", "stream_options"]), objects),
        st.tuples(st.sampled_from(["messages", "tools"]), st.lists(objects, min_size=1,
                                                                    max_size=2)),
        # biases that pass every check but their keys' (the 500 of issue 31)
        st.tuples(st.just("logit_bias"), st.dictionaries(keys, st.integers(-100, 100),
                                                         min_size=1, max_size=3)),
    )  # fmt: skip
    changed = st.lists(pairs, max_size=4).map(lambda extra: {**base, **dict(extra)})
    return st.one_of(changed, changed, changed, values)


@pytest.fixture(scope="module")
def server(tmp_path_factory, one_thread):
    lm = lmgen.load(save_peaky_model(tmp_path_factory.mktemp("fuzz") / "tiny", TEXTS))
    with serve_in_thread(create_app({"tiny": lm}, allowed_hosts=[])) as url:
        # a new connection per request: a kept-alive one waits ~40 ms a request on this
        # loopback (test_server_hardening.py checks that connections survive a refusal)
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=url, timeout=120, limits=limits) as c:
            yield c


@pytest.mark.parametrize("path", list(BASES))
def test_any_json_body_is_a_2xx_or_a_4xx(server, path):
    seen: dict[int, int] = {}

    @FUZZ
    @given(body=bodies(path))
    def check(body):
        text = dump(body)
        try:  # JSON by construction (RFC 8259 sets no limit on digits or depth)
            json.loads(text, parse_int=str, parse_float=str)
        except RecursionError:
            pass  # deeper than Python's decoder goes, but JSON
        r = server.post(path, content=text.encode(), headers={"Content-Type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (text[:300], r.text[:300])
        if r.status_code >= 400:
            err = r.json()["error"]
            assert isinstance(err["message"], str) and "\n" not in err["message"], err
            assert isinstance(err["type"], str) and "param" in err and "code" in err, err

    check()
    assert sum(seen.values()) >= 50 and any(400 <= s < 500 for s in seen), seen
