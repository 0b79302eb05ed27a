"""Contrastive and diverse beam search from the command line and over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

import lmgen
from conftest import save_peaky_model
from lmgen.cli import main
from lmgen.server import create_app, serve_in_thread

TEXTS = ["To be, or not to be: that is the question."] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_peaky_model(tmp_path_factory.mktemp("searches") / "m", TEXTS)


def test_cli_contrastive_and_groups_equal_the_api(model_dir, capsys):
    lm = lmgen.load(model_dir)
    for flags, kw in (
        (["--penalty-alpha", "0.6", "--top-k", "4"], dict(penalty_alpha=0.6, top_k=4)),
        (
            ["--num-beams", "4", "--num-beam-groups", "2", "--diversity-penalty", "1.0", "-n", "2"],
            dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=2),
        ),
    ):
        main(["generate", "To be", "--model", str(model_dir), "--max-new-tokens", "8", "--json",
              *flags])  # fmt: skip
        out = json.loads(capsys.readouterr().out)
        want = lm.generate("To be", max_new_tokens=8, **kw)
        assert [c["token_ids"] for c in out["choices"]] == [c.token_ids for c in want.choices]


def test_cli_bad_values_are_one_line_errors(model_dir, capsys):
    for flags, message in (
        (["--penalty-alpha", "2", "--top-k", "4"], "penalty_alpha must be in [0, 1]"),
        (["--num-beams", "4", "--num-beam-groups", "3"], "divisible by num_beam_groups"),
    ):
        code = main(["generate", "To be", "--model", str(model_dir), "--max-new-tokens", "4",
                     *flags])  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_server_contrastive_and_groups(model_dir):
    lm = lmgen.load(model_dir)
    with serve_in_thread(create_app({"m": lmgen.load(model_dir)})) as url:
        body = {"model": "m", "prompt": "To be", "max_tokens": 8, "penalty_alpha": 0.6,
                "top_k": 4}  # fmt: skip
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        want = lm.generate("To be", max_new_tokens=8, strategy="contrastive", top_k=4)
        assert r.json()["choices"][0]["text"] == want.text
        body = {"model": "m", "prompt": "To be", "max_tokens": 8, "num_beams": 4,
                "num_beam_groups": 2, "diversity_penalty": 1.0, "n": 2}  # fmt: skip
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        groups = dict(num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=2)
        want = lm.generate("To be", max_new_tokens=8, strategy="beam", num_beams=4, **groups)
        assert [c["text"] for c in r.json()["choices"]] == [c.text for c in want.choices]
        for bad in ({"penalty_alpha": 1.5, "top_k": 4}, {"num_beams": 4, "num_beam_groups": 3},
                    {"diversity_penalty": -1}):  # fmt: skip
            r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": "x",
                           "max_tokens": 4, **bad}, timeout=30)  # fmt: skip
            assert r.status_code == 400, (bad, r.text)
