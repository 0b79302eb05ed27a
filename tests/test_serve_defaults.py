"""`lmgen serve --temperature 0 ...`: every decoding flag of `generate`, taken as the default of
requests that leave the setting out (a request's own value wins); a bad value is an error line
before anything is loaded."""

import httpx
import pytest

import lmgen
from lmgen.cli import build_parser
from lmgen.cli_decoding import config_kwargs
from lmgen.decoding.api import generate
from lmgen.server import create_app, serve_in_thread


def test_serve_takes_generates_decoding_flags():
    args = build_parser().parse_args(
        ["serve", "--temperature", "0", "--max-new-tokens", "7", "--repetition-penalty", "1.3"]
    )
    assert config_kwargs(args) == {
        "temperature": 0.0,
        "max_new_tokens": 7,
        "repetition_penalty": 1.3,
    }


def test_serve_refuses_a_bad_default_in_one_line(capsys):
    from lmgen.cli import main

    assert main(["serve", "--top-p", "1.5", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "top_p" in err[0]


@pytest.fixture(scope="module")
def served():
    lm = lmgen.load("shakespeare")
    lm.decoding_defaults = {"temperature": 0.0, "max_new_tokens": 7, "repetition_penalty": 1.3}
    with serve_in_thread(create_app({"s": lm})) as url:
        yield url, lm


def test_requests_take_the_servers_defaults_and_override_them(served):
    url, lm = served
    r = httpx.post(url + "/v1/completions", json={"prompt": "ROMEO:"}, timeout=60).json()
    ref = generate(lm, "ROMEO:", strategy="greedy", max_new_tokens=7, repetition_penalty=1.3)
    assert r["choices"][0]["text"] == ref.text
    assert r["usage"]["completion_tokens"] == 7
    body = {"prompt": "ROMEO:", "temperature": 0.9, "seed": 4, "max_tokens": 5}
    r = httpx.post(url + "/v1/completions", json=body, timeout=60).json()
    ref = generate(lm, "ROMEO:", strategy="sample", temperature=0.9, seed=4, max_new_tokens=5,
                   repetition_penalty=1.3)  # fmt: skip
    assert r["choices"][0]["text"] == ref.text


def test_a_chat_reply_takes_the_servers_max_new_tokens(served):
    url, _ = served  # the bundled model writes no end of text within the context's room
    messages = [{"role": "user", "content": "Speak of the moon."}]
    r = httpx.post(url + "/v1/chat/completions", json={"messages": messages}, timeout=60).json()
    assert r["usage"]["completion_tokens"] == 7
    body = {"messages": messages, "max_tokens": 3}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
    assert r["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "command, shown",
    [
        ("generate", "(default 64)"),
        ("chat", "(default 512)"),  # cli_chat.REPLY_TOKENS
        ("serve", "(default 16 for /v1/completions; a chat reply: what the context leaves)"),
    ],
)
def test_max_new_tokens_help_shows_each_commands_own_default(command, shown):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    action = next(a for a in sub._actions if a.dest == "max_new_tokens")
    assert action.help.endswith(shown)


def test_a_servers_default_beyond_the_context_is_capped_for_a_chat_reply():
    """A default the client never sent is not a 400: the reply takes what the context leaves
    (a request's own max_tokens beyond it still is one)."""
    lm = lmgen.load("shakespeare")
    lm.decoding_defaults = {"max_new_tokens": 2048, "temperature": 0.0, "ignore_eos": True}
    messages = [{"role": "user", "content": "Speak of the moon."}]
    with serve_in_thread(create_app({"s": lm})) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": messages}, timeout=120)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] == lm.config.n_positions
        body = {"messages": messages, "max_tokens": 2048}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 400
