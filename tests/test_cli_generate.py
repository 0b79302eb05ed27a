"""`lmgen generate` and `lmgen next`: the --json contracts and one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

import lmgen
from lmgen.cli import main
from lmgen.lm import LM
from lmgen.tokenizers import BPETokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(3)
    tok = BPETokenizer.train(
        texts=["ROMEO: but soft, what light through yonder window breaks? " * 30], vocab_size=290
    )
    model = lmgen.GPT(
        lmgen.GPTConfig(
            vocab_size=290,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    d = tmp_path_factory.mktemp("m") / "tiny"
    LM(model.eval(), tok).save(d)
    return str(d)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json_contract(capsys, model_dir):
    code, out, err = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--json",
        "--max-new-tokens",
        "5",
        "--ignore-eos",
    )
    assert code == 0
    d = json.loads(out)
    assert set(d) == {"model", "prompt", "prompt_token_ids", "choices"}
    assert d["prompt"] == "ROMEO:"
    (c,) = d["choices"]
    assert set(c) == {"index", "text", "token_ids", "logprobs", "finish_reason"}
    assert len(c["token_ids"]) == len(c["logprobs"]) == 5
    assert c["finish_reason"] == "length"
    lm = lmgen.load(model_dir)
    assert d["prompt_token_ids"] == lm.tokenizer.encode("ROMEO:")
    assert c["text"] == lm.tokenizer.decode(c["token_ids"])


def test_generate_beam_json_has_scores_in_order(capsys, model_dir):
    code, out, _ = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--json",
        "--num-beams",
        "3",
        "--num-return-sequences",
        "3",
        "--max-new-tokens",
        "6",
    )
    assert code == 0
    choices = json.loads(out)["choices"]
    scores = [c["score"] for c in choices]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_generate_stream_prints_prompt_and_text(capsys, model_dir):
    code, out, _ = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--stream",
        "--strategy",
        "sample",
        "--seed",
        "1",
        "--max-new-tokens",
        "8",
    )
    assert code == 0
    lm = lmgen.load(model_dir)
    text = lm.generate("ROMEO:", strategy="sample", seed=1, max_new_tokens=8).text
    assert out == "ROMEO:" + text + "\n"


def test_prompt_from_stdin(capsys, model_dir, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("but soft"))
    code, out, _ = run(
        capsys, "generate", "-", "--model", model_dir, "--json", "--max-new-tokens", "2"
    )
    assert code == 0 and json.loads(out)["prompt"] == "but soft"


def test_next_json_contract(capsys, model_dir):
    code, out, _ = run(
        capsys, "next", "ROMEO:", "--model", model_dir, "--json", "--top", "0", "--top-k", "4"
    )
    assert code == 0
    d = json.loads(out)
    assert {"prompt_token_ids", "chain", "candidates"} <= set(d)
    assert d["chain"] == ["TopK(k=4)"]
    assert len(d["candidates"]) == 290
    assert sum(c["kept"] for c in d["candidates"]) >= 4
    logits = [c["logit"] for c in d["candidates"]]
    assert logits == sorted(logits, reverse=True)


def test_next_table(capsys, model_dir):
    code, out, _ = run(
        capsys, "next", "ROMEO:", "--model", model_dir, "--top", "5", "--top-p", "0.5"
    )
    assert code == 0
    assert "greedy" in out and "TopP" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "1.5"], "top_p"),
        (["--top-k", "-3"], "top_k"),
        (["--min-p", "2"], "min_p"),
        (["--repetition-penalty", "0"], "repetition_penalty"),
        (["--num-beams", "0", "--strategy", "beam"], "num_beams"),
        (["--num-beams", "2", "--num-return-sequences", "3"], "num_return_sequences"),
        (["--max-new-tokens", "-5"], "max_new_tokens"),
        (["--strategy", "nucleus"], "strategy"),
        (["--early-stopping", "maybe"], "early-stopping"),
        (["--max-new-tokens", "500"], "context"),
    ],
)
def test_bad_input_is_one_line_error_exit_2(capsys, model_dir, args, needle):
    code = None
    try:
        code, out, err = run(capsys, "generate", "ROMEO:", "--model", model_dir, *args)
    except SystemExit as e:  # argparse's own errors (choices, types)
        code = e.code
        out, err = capsys.readouterr()
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_ineffective_flags_warn(capsys, model_dir):
    code, _, err = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--strategy",
        "greedy",
        "--top-k",
        "5",
        "--max-new-tokens",
        "2",
    )
    assert code == 0
    assert "warning: top_k=5 has no effect" in err


def test_unknown_model_lists_bundled(capsys):
    code, _, err = run(capsys, "generate", "hi", "--model", "no-such-model")
    assert code == 2
    assert "bundled" in err and "Traceback" not in err


def test_python_m_lmgen_runs(model_dir):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmgen",
            "generate",
            "ROMEO:",
            "--model",
            model_dir,
            "--max-new-tokens",
            "3",
            "--top-p",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: top_p must be in (0, 1], got 2.0"


def test_stop_flag_understands_backslash_escapes():
    from lmgen.cli import build_parser

    args = build_parser().parse_args(
        ["generate", "x", "--stop", "\\n\\n", "--stop", "a\\tb\\\\n\\q"]
    )
    assert args.stop == ["\n\n", "a\tb\\n\\q"]


def test_stream_refuses_beams_before_printing_anything(capsys, model_dir):
    code, out, err = run(
        capsys, "generate", "ROMEO:", "--model", model_dir, "--stream", "--num-beams", "3"
    )
    assert code == 2 and out == ""
    assert err.startswith("error: --stream needs")


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--top-k", "abc"])
    _, err = capsys.readouterr()
    assert e.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: argument --top-k")


def test_warnings_are_printed_once(capsys, model_dir):
    code, _, err = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--temperature",
        "0",
        "--top-k",
        "5",
        "--max-new-tokens",
        "2",
    )
    assert code == 0
    assert err.count("top_k=5 has no effect") == 1


def test_stdin_prompt_drops_the_final_newline(capsys, model_dir, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("To be, or not\n"))
    code, out, _ = run(
        capsys, "generate", "-", "--model", model_dir, "--json", "--max-new-tokens", "2"
    )
    assert json.loads(out)["prompt"] == "To be, or not"
