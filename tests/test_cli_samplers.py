"""The CLI flags of the issue-14 samplers and of structured output: each reaches the chain,
bad values are one-line errors with exit code 2, and a constrained `generate` obeys."""

from __future__ import annotations

import json
import re

import pytest

from lmgen.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def chain_of(capsys, *flags) -> list[str]:
    code, out, err = run(capsys, "next", "ROMEO:", "--json", "--top", "3", *flags)
    assert code == 0, err
    return json.loads(out)["chain"]


def test_sampler_flags_reach_the_chain(capsys):
    chain = chain_of(
        capsys, "--epsilon-cutoff", "3e-4", "--eta-cutoff", "2e-3", "--top-n-sigma", "1.5",
        "--xtc-probability", "0.5", "--xtc-threshold", "0.2", "--dry-multiplier", "0.8",
        "--dry-base", "2", "--dry-allowed-length", "3", "--dry-penalty-last-n", "64",
        "--dry-sequence-breaker", "\n", "--dynatemp-range", "0.4", "--dynatemp-exponent", "2",
        "--mirostat", "2", "--mirostat-tau", "4", "--mirostat-eta", "0.2", "--temperature", "0.9",
    )  # fmt: skip
    assert chain == [
        "DRY(multiplier=0.8, base=2.0, allowed_length=3, penalty_last_n=64)",
        "DynamicTemperature(temperature=0.9, range=0.4, exponent=2.0)",
        "TopNSigma(n=1.5)",
        "EpsilonCutoff(epsilon=0.0003)",
        "EtaCutoff(epsilon=0.002)",
        "XTC(probability=0.5, threshold=0.2)",
        "MirostatV2(tau=4.0, eta=0.2)",
    ]


def test_constraint_flags(capsys, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"speaker": {"enum": ["ROMEO", "JULIET"]}},
                "required": ["speaker"],
                "additionalProperties": False,
            }  # fmt: skip
        )
    )
    grammar = tmp_path / "yes.lark"
    grammar.write_text('start: "yes" | "no"\n')
    cases = [
        (["--regex", r"(ROMEO|JULIET): [A-Z][a-z]{1,8}\."],
         lambda t: re.fullmatch(r"(ROMEO|JULIET): [A-Z][a-z]{1,8}\.", t)),
        (["--json-schema", str(schema)], lambda t: json.loads(t)["speaker"] in ("ROMEO", "JULIET")),
        (["--choice", "ROMEO", "--choice", "the Nurse"], lambda t: t in ("ROMEO", "the Nurse")),
        (["--grammar", str(grammar)], lambda t: t in ("yes", "no")),
    ]  # fmt: skip
    for flags, ok in cases:
        code, out, err = run(capsys, "generate", "Enter", "--json", "--max-new-tokens", "30",
                             *flags)  # fmt: skip
        assert code == 0, err
        (choice,) = json.loads(out)["choices"]
        assert choice["finish_reason"] == "eos" and ok(choice["text"]), (flags, choice["text"])
    chain = chain_of(capsys, "--json-object")
    assert chain == ['StructuredOutput(json_schema=\'{"type": "object"}\')']


def test_unfinished_constraint_says_length(capsys):
    code, out, _ = run(capsys, "generate", "ROMEO:", "--json", "--regex", "[a-z]{30}!",
                       "--max-new-tokens", "4")  # fmt: skip
    assert code == 0
    assert json.loads(out)["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--epsilon-cutoff", "1"], "epsilon_cutoff must be in [0, 1)"),
        (["--top-n-sigma", "-1"], "top_n_sigma must be"),
        (["--xtc-threshold", "0.9"], "xtc_threshold must be in (0, 0.5]"),
        (["--dry-base", "0.5"], "dry_base must be"),
        (["--dry-penalty-last-n", "-3"], "dry_penalty_last_n must be"),
        (["--dry-sequence-breaker", ""], "--dry-sequence-breaker: must not be empty"),
        (["--dynatemp-range", "nan"], "--dynatemp-range: must be a finite number"),
        (["--mirostat", "1"], "mirostat must be 0 (off) or 2"),
        (["--mirostat-tau", "0"], "mirostat_tau must be"),
        (["--regex", "(ROMEO"], "regex '(ROMEO' is not a valid regex: unclosed group"),
        (["--regex", ""], "--regex: must not be empty"),
        (["--json-schema", "/no/such/schema.json"], "no such file: /no/such/schema.json"),
        (["--regex", "a", "--choice", "b"], "give at most one of"),
        (["--regex", r"[^\s\S]"], "no token of this vocabulary can start"),
        (["--regex", "a", "--ignore-eos"], "ignore_eos cannot be combined with regex"),
    ],
)
def test_bad_values_are_one_line_errors(capsys, flags, words):
    code, out, err = run(capsys, "generate", "ROMEO:", *flags)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err


def test_bad_schema_and_grammar_files(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "generate", "ROMEO:", "--json-schema", str(bad))
    assert code == 2 and "error: json_schema is not valid JSON" in err
    grammar = tmp_path / "bad.lark"
    grammar.write_text("start: missing_rule\n")
    code, _, err = run(capsys, "generate", "ROMEO:", "--grammar", str(grammar))
    assert code == 2 and "error: grammar is not a valid grammar" in err
    code, _, err = run(capsys, "generate", "ROMEO:", "--grammar", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_plots_take_the_sampler_flags(capsys, tmp_path):
    out = tmp_path / "g.png"
    code, _, err = run(capsys, "plot", "generation", "ROMEO:", "--strategy", "sample", "--seed",
                       "1", "--dry-multiplier", "0.8", "--mirostat", "2", "--max-new-tokens",
                       "6", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert out.stat().st_size > 0
