"""`lmgen generate`, `next` and `tokenize`: the --json contracts, the flags, and one-line
errors."""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

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
    assert "greedy" in out and "TopP" in out and "logit" in out and "log-prob" not in out


def test_next_table_under_beam_search_heads_its_scores_log_prob(capsys, model_dir):
    """Beam search's chain works on log-probabilities (LM.next_token): the column says so,
    and its values are the log of the prob column."""
    code, out, _ = run(capsys, "next", "ROMEO:", "--model", model_dir, "--strategy", "beam")
    assert code == 0 and "log-prob" in out and "logit" not in out
    lp, p = next(ln for ln in out.splitlines() if "greedy" in ln).split("│")[4:6]
    assert math.exp(float(lp)) == pytest.approx(float(p), abs=1e-4)


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
        (
            ["--early-stopping", "maybe"],
            "early_stopping must be true, false or \"never\", got 'maybe'",
        ),
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


@pytest.mark.parametrize(
    "argv, data",
    [
        (["generate", "-"], b"\xef\xbb\xbfROMEO:\r\nbut soft\r\n"),
        (["generate", "--prompts-file", "-"], b"\xef\xbb\xbfROMEO:\r\nbut soft\r\n"),
        (["generate", "--prompts-file", "{dir}/p.txt"], b"\xef\xbb\xbfROMEO:\r\nbut soft\r\n"),
        (
            ["generate", "--prompts-file", "{dir}/p.jsonl"],
            b'\xef\xbb\xbf"ROMEO:"\r\n"but soft"\r\n',
        ),
    ],
)
def test_a_byte_order_mark_and_windows_line_ends_read_as_the_text(
    argv, data, capsys, model_dir, monkeypatch, tmp_path
):
    """Whatever the way in, a leading UTF-8 BOM is dropped (as the server drops it from a
    body) and a CRLF line end is a line end: the prompts are the text's own."""
    if argv[-1].startswith("{dir}"):
        path = tmp_path / Path(argv[-1]).name
        path.write_bytes(data)
        argv = [*argv[:-1], str(path)]
    else:
        _stdin_bytes(monkeypatch, data)
    code, out, _ = run(capsys, *argv, "--model", model_dir, "--json", "--max-new-tokens", "1")
    prompts = [json.loads(line)["prompt"] for line in out.splitlines()]
    want = ["ROMEO:\nbut soft"] if argv[1] == "-" else ["ROMEO:", "but soft"]
    assert code == 0 and prompts == want


# -- text that is not UTF-8 is refused at every entry point (one line, exit 2) ------------------


def _stdin_bytes(monkeypatch, data: bytes) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "-"],
        ["next", "-"],
        ["tokenize", "-"],
        ["plot", "next", "-", "-o", "{out}"],
        ["generate", "--prompts-file", "-"],
    ],
)
def test_stdin_that_is_not_utf8_is_refused(argv, capsys, model_dir, monkeypatch, tmp_path):
    _stdin_bytes(monkeypatch, b"ROMEO \xff\xfe but soft")
    out = tmp_path / "x.png"
    argv = [a.replace("{out}", str(out)) for a in argv]
    code, stdout, err = run(capsys, *argv, "--model", model_dir)
    assert code == 2 and stdout == ""
    want = "stdin is not valid UTF-8 at byte 6"
    assert err == f"error: {want}{' (line 1)' if 'prompts-file' in argv[1] else ''}\n"
    assert not out.exists()


def test_an_argument_that_is_not_utf8_is_refused(model_dir):
    """Bytes in argv reach Python as lone surrogates; the error names the byte."""
    for argv in (
        ["generate", b"ab\xffc"],
        ["tokenize", b"ab\xffc"],
        ["generate", "x", "--stop", b"\xfe"],
    ):
        p = subprocess.run(
            [sys.executable, "-m", "lmgen", *argv, "--model", model_dir],
            capture_output=True,
            timeout=120,
        )
        assert p.returncode == 2
        if "--stop" in argv:
            assert p.stderr.startswith(b"error: argument --stop: it is not valid UTF-8 at byte 0")
        else:
            assert p.stderr == b"error: the prompt is not valid UTF-8 at byte 2\n"


def test_in_process_argument_with_a_surrogate(capsys, model_dir):
    code, _, err = run(capsys, "generate", "ROMEO: \udcff", "--model", model_dir)
    assert code == 2 and err == "error: the prompt is not valid UTF-8 at byte 7\n"


def test_prompts_file_that_is_not_utf8_names_the_line(capsys, model_dir, tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"ROMEO:\nJULIET: \xc3\n")
    code, _, err = run(capsys, "generate", "--prompts-file", str(f), "--model", model_dir)
    assert code == 2 and err == f"error: {f} is not valid UTF-8 at byte 15 (line 2)\n"


@pytest.mark.parametrize("call", ["generate", "next_token", "stream"])
def test_python_api_refuses_a_lone_surrogate(model_dir, call):
    from lmgen.errors import ConfigError

    lm = lmgen.load(model_dir)
    with pytest.raises(ConfigError, match=r"lone surrogate at position 7 \('\\udcff'\)") as e:
        result = getattr(lm, call)("ROMEO: \udcff")
        if call == "stream":
            list(result)
    assert e.value.param == "prompt"


# -- one strategy rule for the CLI and the API --------------------------------------------------


@pytest.mark.parametrize(
    "flags, kwargs",
    [
        (["--temperature", "0.8", "--seed", "3"], {"temperature": 0.8, "seed": 3}),
        (["--top-k", "5", "--seed", "3"], {"top_k": 5, "seed": 3}),
        (["--num-beams", "3"], {"num_beams": 3}),
        (["--temperature", "0"], {"temperature": 0}),
        ([], {}),
    ],
)
def test_cli_and_api_infer_the_same_strategy(flags, kwargs, capsys, model_dir):
    code, out, err = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--json",
        "--max-new-tokens",
        "6",
        *flags,
    )
    assert code == 0 and "warning" not in err
    lm = lmgen.load(model_dir)
    api = lm.generate("ROMEO:", max_new_tokens=6, **kwargs)
    assert json.loads(out)["choices"][0]["token_ids"] == api.token_ids
    assert ("score" in json.loads(out)["choices"][0]) == ("num_beams" in kwargs)


def test_sampling_keywords_sample_in_the_api(model_dir):
    """`lm.generate(p, temperature=0.8)` samples: seeds give different texts, no warning."""
    lm = lmgen.load(model_dir)
    texts = {
        lm.generate("ROMEO:", temperature=1.5, seed=s, max_new_tokens=12).text for s in range(4)
    }
    assert len(texts) > 1
    assert lm.generate("ROMEO:", temperature=1.5, seed=0, max_new_tokens=4).warnings == []


def _decoding_actions(parser):
    for group in parser._action_groups:
        if group.title in ("decoding", "search and stopping", "model runtime", "methods", "search"):
            yield from group._group_actions


@pytest.mark.parametrize(
    "command", [["generate"], ["next"], ["plot", "generation"], ["plot", "next"], ["plot", "beam"]]
)
def test_every_decoding_flag_has_help_with_its_default(command):
    from lmgen.cli import build_parser

    parser = build_parser()
    for name in command:
        parser = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[name]
    actions = list(_decoding_actions(parser))
    assert len(actions) >= 5
    for a in actions:
        assert a.help and "default" in a.help, (command, a.option_strings)


def test_plot_generation_help_gives_its_own_max_new_tokens():
    from lmgen.cli import build_parser
    from lmgen.plots import DEFAULT_MAX_NEW_TOKENS

    help_text = _subparser(build_parser(), "plot", "generation").format_help()
    assert f"(default {DEFAULT_MAX_NEW_TOKENS})" in " ".join(help_text.split())


def _subparser(parser, *names):
    for name in names:
        parser = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[name]
    return parser


# -- smaller fixes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "inf"], "argument --temperature/-t: must be a finite number, got 'inf'"),
        (["--top-p", "nan"], "argument --top-p: must be a finite number, got 'nan'"),
        (["--model", ""], "argument --model/-m: is empty; give a model directory"),
        (["--max-new-tokens", "500"], "or pass --context-overflow slide to keep only the last"),
    ],
)
def test_messages_in_command_line_terms(flags, message, capsys, model_dir):
    argv = ["generate", "ROMEO:", "--model", model_dir, *flags]
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as e:
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert "context_overflow=" not in err


@pytest.mark.parametrize(
    "command, fits",
    [
        (["next"], "and the next token do not fit"),
        (["plot", "next"], "and the next token do not fit"),
        (["plot", "attention"], "does not fit"),
    ],
)
def test_a_long_prompt_for_a_command_without_context_overflow(command, fits, capsys, model_dir,
                                                               tmp_path):  # fmt: skip
    """`next` and the plots take no --context-overflow or --max-new-tokens: their error names
    neither, only the prompt's length against the context."""
    lm = lmgen.load(model_dir)
    prompt = "ROMEO: " * (lm.config.n_positions // 2 + 8)
    n = len(lm.tokenizer.encode(prompt))
    argv = [*command, prompt, "--model", model_dir]
    if command[0] == "plot":
        argv += ["-o", str(tmp_path / "p.png")]
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"the prompt ({n} tokens) {fits} the model's context of {lm.config.n_positions}" in err
    assert "--context-overflow" not in err and "max_new_tokens" not in err


def test_lmgen_bench_is_a_pointer(capsys):
    code, out, err = run(capsys, "bench")
    assert code == 2 and out == "" and "python -m bench" in err


# -- runtime flags: --device, --dtype, --quantize, --compile, --draft ------------------------------


def _json_tokens(capsys, model_dir, *flags):
    code, out, err = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--json",
        "--max-new-tokens",
        "6",
        *flags,
    )
    assert code == 0, err
    return json.loads(out)["choices"][0]["token_ids"]


@pytest.mark.parametrize(
    "flags, load",
    [
        (["--device", "cpu"], {"device": "cpu"}),
        (["--dtype", "bfloat16"], {"dtype": torch.bfloat16}),
        (["--dtype", "float16"], {"dtype": torch.float16}),
        (["--quantize", "int8"], {"quantize": "int8"}),
    ],
)
def test_runtime_flags_load_the_model_as_the_api_does(flags, load, capsys, model_dir):
    want = lmgen.load(model_dir, **load).generate("ROMEO:", max_new_tokens=6).token_ids
    assert _json_tokens(capsys, model_dir, *flags) == want


@pytest.mark.parametrize(
    "device, message",
    [("gpu", "not a device name"), ("cuda:7", "CUDA"), ("meta", "not available here")],
)
def test_a_device_this_machine_lacks_is_one_line(device, message, capsys, model_dir):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    code, _, err = run(capsys, "generate", "ROMEO:", "--model", model_dir, "--device", device)
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_compile_and_draft_reach_the_api(capsys, model_dir, monkeypatch):
    seen = {}
    real = LM.generate

    def spy(self, prompt, config=None, **kw):
        seen.update(kw)
        kw.pop("compile", None)  # compiling takes a minute on a small CPU: not here
        return real(self, prompt, config, **kw)

    monkeypatch.setattr(LM, "generate", spy)
    plain = _json_tokens(capsys, model_dir)
    # the model as its own draft: speculative greedy gives the same tokens
    assert _json_tokens(capsys, model_dir, "--draft", model_dir, "--speculative-k", "2") == plain
    assert isinstance(seen["draft"], LM) and seen["speculative_k"] == 2
    seen.clear()
    assert _json_tokens(capsys, model_dir, "--compile") == plain
    assert seen == {"compile": True}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--stream", "--draft", "x"], "--stream cannot be combined with --draft"),
        (["--stream", "--compile"], "--stream cannot be combined with --compile"),
        (["--stream", "--logprobs", "2"], "--stream cannot be combined with --logprobs"),
        (["--speculative-k", "3"], "--speculative-k needs --draft DIR"),
        (["--prompts-file", "p.txt"], "give a PROMPT or --prompts-file FILE"),
    ],
)
def test_flag_combinations_refused_before_loading(flags, message, capsys):
    code, out, err = run(capsys, "generate", "ROMEO:", "--model", "no-such-model", *flags)
    assert code == 2 and out == "" and message in err


# -- --logit-bias and --logprobs ------------------------------------------------------------------


def test_logit_bias_bans_and_favours_tokens(capsys, model_dir):
    greedy = _json_tokens(capsys, model_dir)
    banned = _json_tokens(capsys, model_dir, "--logit-bias", f"{greedy[0]}=-100")
    assert banned[0] != greedy[0]
    forced = _json_tokens(capsys, model_dir, "--logit-bias", "7=100", "--logit-bias", "9=-5")
    assert forced == [7] * 6
    lm = lmgen.load(model_dir)
    api = lm.generate("ROMEO:", max_new_tokens=6, logit_bias={greedy[0]: -100}).token_ids
    assert banned == api


@pytest.mark.parametrize("value", ["7", "x=1", "7=big", "7=inf"])
def test_logit_bias_syntax(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "x", "--logit-bias", value])
    assert e.value.code == 2
    assert "expected TOKEN_ID=BIAS, e.g. 198=-100" in capsys.readouterr().err


def test_logprobs_in_json_and_text(capsys, model_dir):
    code, out, _ = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--json",
        "--max-new-tokens",
        "4",
        "--logprobs",
        "3",
    )
    (c,) = json.loads(out)["choices"]
    lm = lmgen.load(model_dir)
    assert len(c["top_logprobs"]) == 4
    ids = lm.tokenizer.encode("ROMEO:")
    for k, step in enumerate(c["top_logprobs"]):
        assert [set(t) for t in step] == [{"token_id", "token", "logprob"}] * 3
        logits = lm.model(torch.tensor([ids + c["token_ids"][:k]]))[0, -1].float()
        want = torch.log_softmax(logits, -1).topk(3)
        assert [t["token_id"] for t in step] == want.indices.tolist()
        assert [t["logprob"] for t in step] == pytest.approx(want.values.tolist(), abs=1e-4)
        assert c["logprobs"][k] == pytest.approx(
            torch.log_softmax(logits, -1)[c["token_ids"][k]].item(), abs=1e-4
        )
    code, out, _ = run(
        capsys,
        "generate",
        "ROMEO:",
        "--model",
        model_dir,
        "--max-new-tokens",
        "4",
        "--logprobs",
        "2",
    )
    lines = out.splitlines()
    assert "top alternatives" in out and len([x for x in lines if x.startswith("  '")]) == 4
    first = c["top_logprobs"][0][0]
    assert f"{first['token']!r} {first['logprob']:.3f}" in out


# -- --prompts-file: a batch ----------------------------------------------------------------------


def test_prompts_file_lines_and_jsonl(capsys, model_dir, tmp_path):
    prompts = ["ROMEO:", "but soft", "what light\nthrough"]
    lm = lmgen.load(model_dir)
    want = [r.token_ids for r in lm.generate(prompts, max_new_tokens=5)]
    jl = tmp_path / "p.jsonl"
    jl.write_text(
        json.dumps(prompts[0])
        + "\n\n"
        + json.dumps({"prompt": prompts[1]})
        + "\n"
        + json.dumps(prompts[2])
        + "\n"
    )
    code, out, _ = run(
        capsys,
        "generate",
        "--prompts-file",
        str(jl),
        "--model",
        model_dir,
        "--json",
        "--max-new-tokens",
        "5",
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["prompt"] for r in rows] == prompts
    assert [r["choices"][0]["token_ids"] for r in rows] == want
    txt = tmp_path / "p.txt"
    txt.write_text("ROMEO:\n\nbut soft\n")
    code, out, _ = run(
        capsys,
        "generate",
        "--prompts-file",
        str(txt),
        "--model",
        model_dir,
        "--max-new-tokens",
        "5",
    )
    assert code == 0
    assert out.startswith("--- prompt 0 (") and "--- prompt 1 (" in out
    assert out.count("--- prompt") == 2


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("e.txt", "\n\n", "holds no prompts"),
        ("b.jsonl", '"ok"\n{"text": 1}\n', 'line 2: expected a JSON string or {"prompt": "..."}'),
        ("c.jsonl", "{oops\n", "line 1: not JSON"),
    ],
)
def test_bad_prompts_files(name, text, message, capsys, model_dir, tmp_path):
    f = tmp_path / name
    f.write_text(text)
    code, _, err = run(capsys, "generate", "--prompts-file", str(f), "--model", model_dir)
    assert code == 2 and message in err
    code, _, err = run(capsys, "generate", "--prompts-file", str(tmp_path / "none.txt"))
    assert code == 2 and "No such file" in err


# -- lmgen tokenize -------------------------------------------------------------------------------


def test_tokenize(capsys, model_dir):
    lm = lmgen.load(model_dir)
    text = "ROMEO: café"
    ids = lm.tokenizer.encode(text)
    code, out, _ = run(capsys, "tokenize", text, "--model", model_dir, "--json")
    d = json.loads(out)
    assert code == 0 and d["token_ids"] == ids and d["text"] == text
    assert d["tokens"] == [lm.tokenizer.token_to_str(i) for i in ids]
    assert d["pieces"] == [lm.tokenizer.backend.id_to_token(i) for i in ids]
    code, out, _ = run(capsys, "tokenize", text, "--model", model_dir)
    lines = out.splitlines()
    assert lines[-1] == f"{len(ids)} tokens"
    assert [int(x.split()[0]) for x in lines[:-1]] == ids
    assert "b'\\xc3'" in out or "'é'" in out  # a byte of é shown as a byte, never as �
    assert "\ufffd" not in out


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_tokenize_shows_a_released_tokenizers_byte_pieces_as_bytes(family, capsys, tmp_path):
    """A character split over tokens: SentencePiece's byte fallback (`<0xE6>`, Llama 2) and a
    byte-level BPE's pieces (Llama 3, SmolLM2) print as the bytes they stand for, checked
    against the UTF-8 of the text, never as a row of identical '�'."""
    from lmgen.tokenizers import load_tokenizer, token_bytes
    from test_tokenizers_pretrained import llama2_dir, llama3_dir

    directory = (llama2_dir if family == "llama2" else llama3_dir)(tmp_path / family)
    tok = load_tokenizer(directory)
    text = "ꙮ"  # in no test vocabulary: its three bytes are three tokens
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [token_bytes(tok, i) for i in ids if "\ufffd" in tok.token_to_str(i)]
    assert len(pieces) == 3 and b"".join(pieces) == text.encode("utf-8")
    code, out, _ = run(capsys, "tokenize", text, "--model", str(directory))
    assert code == 0 and "\ufffd" not in out
    for piece in pieces:
        assert repr(piece) in out


@pytest.mark.parametrize(
    "argv",
    [["generate", "x"], ["next", "x"], ["chat"], ["serve"], ["plot", "next", "x", "-o", "p.png"],
     ["tokenize", "x"], ["eval", "--text", "t"]],
)  # fmt: skip
def test_verbose_before_or_after_every_command(argv):
    """`-v` goes before the command or after it, on every command (it was the training
    commands' alone after it: `lmgen generate -v` was an error)."""
    from lmgen.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(argv).verbose is False
    assert parser.parse_args(["-v", *argv]).verbose is True
    assert parser.parse_args([*argv, "-v"]).verbose is True
