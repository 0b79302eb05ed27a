"""Issue 29's settings on the command line and over HTTP: each reaches generation with the
same result as the Python API, and a bad value is one line naming the parameter (exit code 2;
a 400 whose `param` is the setting)."""

from __future__ import annotations

import httpx
import pytest

import lmgen
from lmgen.cli import main
from lmgen.decoding.api import generate
from lmgen.server import create_app, serve_in_thread

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "ROMEO:\nBut soft, what light\nJULIET:\nBut soft, what"

# (HTTP body fields, the same as generate() keywords)
REQUESTS = [
    ({"top_h": 0.6, "seed": 2}, {"strategy": "sample", "top_h": 0.6, "seed": 2}),
    ({"p_less": True, "seed": 2}, {"strategy": "sample", "p_less": True, "seed": 2}),
    ({"p_less_norm": True, "seed": 5}, {"strategy": "sample", "p_less_norm": True, "seed": 5}),
    ({"adaptive_target": 0.3, "adaptive_decay": 0.5, "seed": 4},
     {"strategy": "sample", "adaptive_target": 0.3, "adaptive_decay": 0.5, "seed": 4}),
    ({"sequence_bias": [[[1, 2], 4.0], [[3], -5.0]], "temperature": 0},
     {"strategy": "greedy", "sequence_bias": [[[1, 2], 4.0], [[3], -5.0]]}),
    ({"samplers": ["min_p", "temperature"], "min_p": 0.05, "temperature": 1.3, "seed": 9},
     {"strategy": "sample", "samplers": ["min_p", "temperature"], "min_p": 0.05,
      "temperature": 1.3, "seed": 9}),
    ({"prompt_lookup_num_tokens": 4, "temperature": 0},
     {"strategy": "greedy", "prompt_lookup_num_tokens": 4}),
    ({"dola_layers": "high", "temperature": 0}, {"strategy": "greedy", "dola_layers": "high"}),
]  # fmt: skip

BAD = [
    ({"top_h": 1.5}, "top_h"),
    ({"adaptive_target": 2}, "adaptive_target"),
    ({"adaptive_decay": 1.0}, "adaptive_decay"),
    ({"sequence_bias": [[[], 1.0]]}, "sequence_bias"),
    ({"sequence_bias": [[[1], "x"]]}, "sequence_bias"),
    ({"samplers": ["top_q"]}, "samplers"),
    ({"samplers": ["top_k"], "min_p": 0.2}, "samplers"),
    ({"prompt_lookup_num_tokens": -1}, "prompt_lookup_num_tokens"),
    ({"dola_layers": "middle"}, "dola_layers"),
    ({"p_less": "yes"}, "p_less"),
    ({"sequence_bias": [[[10**6], 1.0]]}, "sequence_bias"),
    ({"sequence_bias": [[[1], 500.0]]}, "sequence_bias"),
    ({"samplers": ["top_k", "top_k"]}, "samplers"),
    ({"dola_layers": [99]}, "dola_layers"),
]


@pytest.fixture(scope="module")
def served():
    lm = lmgen.load("shakespeare")
    with serve_in_thread(create_app({"s": lm})) as url:
        yield url, lm


@pytest.mark.parametrize(("body", "kwargs"), REQUESTS)
def test_requests_equal_generate(served, body, kwargs):
    url, lm = served
    r = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, **body},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == generate(lm, PROMPT, max_new_tokens=12, **kwargs).text


@pytest.mark.parametrize(("body", "param"), BAD)
def test_bad_request_values_name_the_parameter(served, body, param):
    url, _ = served
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2, **body},
                   timeout=60)  # fmt: skip
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "\n" not in err["message"]


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, *capsys.readouterr()


CLI_BAD = [
    (["--top-h", "1.5"], "top_h"),
    (["--adaptive-target", "1.5"], "adaptive_target"),
    (["--adaptive-decay", "0.999"], "adaptive_decay"),
    (["--sequence-bias", "1,2"], "--sequence-bias"),
    (["--samplers", "top_k;bogus"], "samplers"),
    (["--samplers", "top_k", "--min-p", "0.1"], "samplers"),
    (["--prompt-lookup-num-tokens", "-2"], "prompt_lookup_num_tokens"),
    (["--prompt-lookup-max-ngram", "0"], "prompt_lookup_max_ngram"),
    (["--dola-layers", "1,x"], "--dola-layers"),
    (["--dola-layers", "low", "--num-beams", "2"], "dola_layers"),
    (["--mirostat", "2", "--adaptive-target", "0.3", "--seed", "1"], "adaptive_target"),
]


@pytest.mark.parametrize(("flags", "named"), CLI_BAD)
def test_bad_flags_are_one_line_errors(capsys, flags, named):
    code, out, err = run(capsys, "generate", "ROMEO:", "--max-new-tokens", "2", *flags)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:")
    assert named in lines[0]


def test_flags_reach_generation_and_show_chain(capsys):
    flags = ["--seed", "3", "--top-h", "0.7", "--temperature", "0.8", "--adaptive-target",
             "0.4", "--samplers", "top_h;temperature;adaptive_p",
             "--sequence-bias", "1,2=3"]  # fmt: skip
    code, out, err = run(capsys, "generate", PROMPT, "--max-new-tokens", "8", "--no-echo",
                         "--show-chain", *flags)  # fmt: skip
    assert code == 0, err
    assert err.strip() == (
        "chain: SequenceBias(sequence_bias=[[[1, 2], 3.0]]) -> TopH(top_h=0.7) -> "
        "Temperature(temperature=0.8) -> AdaptiveP(target=0.4, decay=0.9)"
    )
    lm = lmgen.load("shakespeare")
    ref = generate(lm, PROMPT, max_new_tokens=8, strategy="sample", seed=3, top_h=0.7,
                   temperature=0.8, adaptive_target=0.4,
                   samplers=["top_h", "temperature", "adaptive_p"],
                   sequence_bias=[[[1, 2], 3.0]])  # fmt: skip
    assert out.rstrip("\n") == ref.text
