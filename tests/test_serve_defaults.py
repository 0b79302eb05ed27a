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
