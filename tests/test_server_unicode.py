"""Text that is not valid Unicode is refused, never replaced: a lone surrogate in any string
of any endpoint is a 400 naming the field and the position; a body that is not UTF-8 is a 400
`invalid_json` naming the offset; a tokenizer's own refusal is a 400 on every endpoint."""

from __future__ import annotations

import httpx
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.errors import ConfigError
from lmgen.server import create_app, serve_in_thread

TEXTS = ["To be, or not to be: that is the question."] * 12
BAD = "ROMEO: \\udcff!"  # as JSON text: a lone low surrogate at character 7
CHAT = "/v1/chat/completions"
CASES = [
    ("/v1/completions", '{"prompt": "%s"}', "prompt"),
    ("/v1/completions", '{"prompt": ["fine", "%s"]}', "prompt"),
    ("/v1/completions", '{"prompt": "x", "stop": ["%s"]}', "stop"),
    ("/v1/completions", '{"prompt": "x", "stop": "%s"}', "stop"),
    ("/v1/completions", '{"prompt": "x", "user": "%s"}', "user"),
    (CHAT, '{"messages": [{"role": "user", "content": "%s"}]}', "messages"),
    (CHAT, '{"messages": [{"role": "user", "content": [{"type": "text", "text": "%s"}]}]}',
     "messages"),
    (CHAT, '{"messages": [{"role": "user", "content": "x", "name": "%s"}]}', "messages"),
    ("/v1/lmgen/next", '{"prompt": "%s"}', "prompt"),
    ("/v1/lmgen/beam", '{"prompt": "%s"}', "prompt"),
    ("/v1/completions", '{"prompt": "x", "model": "%s"}', "model"),
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_peaky_model(tmp_path_factory.mktemp("unicode") / "tiny", TEXTS)


@pytest.fixture(scope="module")
def server(model_dir):
    with serve_in_thread(create_app({"tiny": lmgen.load(model_dir)})) as url:
        yield url


def post_raw(url: str, path: str, body: bytes) -> httpx.Response:
    return httpx.post(
        url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30
    )


@pytest.mark.parametrize("path, template, param", CASES)
def test_a_lone_surrogate_is_a_400_naming_the_field_and_position(server, path, template, param):
    r = post_raw(server, path, (template % BAD).encode())
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_value"
    assert "lone surrogate U+DCFF at character 7" in err["message"]
    assert "\n" not in err["message"]


def test_a_surrogate_pair_is_fine(server):
    r = post_raw(server, "/v1/completions", b'{"prompt": "smile \\ud83d\\ude00", "max_tokens": 2}')
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize(
    "body, offset",
    [(b'{"prompt": "\xff\xfe"}', 12), (b'{"prompt": "caf\xe9"}', 15), (b"\x80", 0)],
)
def test_a_body_that_is_not_utf8_is_invalid_json(server, body, offset):
    for path in ("/v1/completions", CHAT, "/v1/lmgen/next"):
        r = post_raw(server, path, body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_json" and f"at offset {offset}" in err["message"]


def test_a_tokenizer_that_refuses_its_input_is_a_400_on_every_endpoint(model_dir):
    """The tokenizer's own check (ConfigError with param "prompt") reaches the client as a 400
    on every endpoint, with the API's field name."""
    lm = lmgen.load(model_dir)
    encode = lm.tokenizer.encode

    def refusing(text, add_special_tokens=True):  # the Tokenizer protocol's signature
        if "FORBIDDEN" in text:
            raise ConfigError(f"text is not valid here (character {text.index('F')})", "prompt")
        return encode(text, add_special_tokens=add_special_tokens)

    lm.tokenizer.encode = refusing
    with serve_in_thread(create_app({"tiny": lm})) as url:
        for path, body, param in [
            ("/v1/completions", {"prompt": "a FORBIDDEN b"}, "prompt"),
            ("/v1/completions", {"prompt": "a FORBIDDEN b", "stream": True}, "prompt"),
            (CHAT, {"messages": [{"role": "user", "content": "FORBIDDEN"}]}, "messages"),
            ("/v1/lmgen/next", {"prompt": "FORBIDDEN"}, "prompt"),
            ("/v1/lmgen/beam", {"prompt": "FORBIDDEN"}, "prompt"),
        ]:
            r = httpx.post(url + path, json=body, timeout=30)
            assert r.status_code == 400, (path, r.text)
            err = r.json()["error"]
            assert err["param"] == param and "not valid here" in err["message"], (path, err)
