"""The benchmark's own pieces (no timing is asserted: benchmarks are not tests).

The benchmark is a development tool in bench/, outside the installed package."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import benchmark as B
from lmgen.errors import ConfigError
from lmgen.model import GPT, GPTConfig


def test_bytes_per_token_counts_each_weight_once():
    m = GPT(GPTConfig(vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    params = sum(p.numel() for p in m.parameters()) - m.wpe.weight.numel()  # tied head once
    assert B.bytes_per_token(m, 0) == params * 4
    kv = 2 * 1 * 10 * 16 * 4
    assert B.bytes_per_token(m, 10) == params * 4 + kv


def test_runners_agree_on_a_tiny_model(tmp_path):
    torch.manual_seed(0)
    m = GPT(
        GPTConfig(
            vocab_size=120,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    d = B.save_hf_dir(m, tmp_path / "m")
    lm, hf = B.load_lmgen(d, "fp32"), B.load_hf(d, "fp32")
    w = B.make_workload(120, 64, 6)
    for case in ("greedy", "beam", "batch8"):
        a, b = B.lmgen_runner(lm, case, w)(), B.hf_runner(hf, case, w)()
        assert B.compare(a, b) == "yes"
    for case in ("sample", "prefill", "ttft"):
        B.lmgen_runner(lm, case, w)()
        B.hf_runner(hf, case, w)()


def test_peak_rss_worker_runs_from_bench(tmp_path):
    """The RSS figures come from `python -m bench --rss-worker` in a fresh process: it still
    starts from the repository root after the move out of the package."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    d = B.save_hf_dir(GPT(cfg).eval(), tmp_path / "m")
    w = B.make_workload(50, 32, 4)
    rss = B.measure_rss("lmgen", d, "fp32", ["greedy"], w, threads=1)
    assert rss["greedy"] > 10  # MiB: a Python process with torch loaded


def test_markdown_table():
    rep = B.Report(B.machine_info(), ["--quick"])
    rep.rows.append(B.Row("14M shape", "fp32", "greedy", 100.0, 40.0, "yes", 0.5, 0.2, 300, 320))
    rep.rows.append(B.Row("14M shape", "fp32", "ttft", 0.01, 0.02))
    rep.rows.append(B.Row("14M shape", "fp32", "sample", 90.0, 30.0, "", 0.45, 0.15, bw_gbs=31.25))
    rep.bandwidth["14M shape fp32"], rep.limits["14M shape fp32"] = 20.0, 200.0
    md = B.to_markdown(rep)
    assert "**2.50×**" in md and "50% / 20%" in md and "**2.00×**" in md
    assert "45% / 15% (31.2 GB/s)" in md


@pytest.mark.slow
def test_quick_run_smoke(tmp_path):
    out = tmp_path / "b.md"
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert "greedy, batch 1" in out.read_text()


def test_extras_tables_and_json_round_trip(tmp_path):
    """Optimisations and the llama.cpp reference get their own tables; --from-json re-renders
    a saved run to the same page."""
    rep = B.Report(B.machine_info(), ["--shapes", "14m"])
    rep.rows.append(B.Row("14M shape", "bf16", "beam", 10.0, 5.0, "no (first 3 of 8)"))
    rep.extras.append(
        {
            "what": "int8 weight-only",
            "model": "14M",
            "dtype": "fp32",
            "plain": 100.0,
            "optimised": 150.0,
            "note": "n",
        }
    )
    rep.extras.append(
        {
            "what": "llama.cpp",
            "kind": "reference",
            "model": "14M",
            "dtype": "fp32",
            "gguf": "f32",
            "goal": 0.8,
            "plain": 80.0,
            "optimised": 100.0,
            "bw_gbs": 30.0,
            "bw_lmgen": 0.5,
            "bw_llama": 0.625,
            "note": "r",
        }
    )
    rep.extras.append(
        {
            "what": "llama.cpp",
            "kind": "reference",
            "model": "124M",
            "dtype": "int8",
            "gguf": "q8_0",
            "goal": 0.9,
            "plain": float("nan"),
            "optimised": float("nan"),
            "note": "failed: x",
        }
    )
    md = B.to_markdown(rep)
    assert "| int8 weight-only | 14M | fp32 | 100.0 | 150.0 | 1.50× | n |" in md
    assert "| 14M | fp32 | f32 | 80.0 | 100.0 | 0.80× | ≥ 0.8× | 50% / 62% of 30.0 GB/s | r |" in md
    assert "| 124M | int8 | q8_0 | nan | nan | nan× | ≥ 0.9× |  | failed: x |" in md
    # each goal with its measured ratio: 0.80 meets 0.8; the failed row is n/a; the 14M beam
    # row (10 vs 5 tok/s) is bf16, so the beam goal (fp32) is not listed
    assert "| 14M fp32 greedy ≥ 0.8× llama.cpp f32 | 0.80× | yes |" in md
    assert "| 124M int8 greedy ≥ 0.9× llama.cpp q8_0 | nan× | n/a |" in md
    assert "beam 4" not in md
    assert "bf16 `equal` column" in md
    raw = tmp_path / "run.json"
    raw.write_text(
        json.dumps(
            {
                "info": rep.info,
                "args": rep.args,
                "rows": [r.__dict__ for r in rep.rows],
                "extras": rep.extras,
            }
        )
    )
    out = tmp_path / "b.md"
    assert B.main(["--from-json", str(raw), "--out", str(out)]) == 0
    assert out.read_text() == md


def test_batch_step_row_runs_the_engine_rows_and_renders_its_goal(tmp_path):
    """The batch16 extra times the server's running-batch forward for 16 rows and for 1 (each
    row's logits equal to it run alone, which the engine tests check), and its goal row reads
    the step-cost ratio against issue 28's 1.5x."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=90, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                    bos_token_id=None, eos_token_id=None)  # fmt: skip
    lm = B.load_lmgen(B.save_hf_dir(GPT(cfg).eval(), tmp_path / "m"), "fp32")
    args = B.build_arg_parser().parse_args(["--repeats", "2"])
    row = B.run_batch_step(args, "tiny", "fp32", lm, rows=3, steps=4)
    assert row["kind"] == "batch-step" and row["plain"] > 0 and row["optimised"] > 0
    assert row["cost"] == pytest.approx(3 * row["plain"] / row["optimised"])
    rep = B.Report(B.machine_info(), [])
    rep.extras.append(dict(row, cost=1.2, plain=10.0, optimised=40.0))
    md = B.to_markdown(rep)
    assert "| tiny fp32 batched decode step, 3 rows vs 1: step cost ≤ 1.5× | 1.20× | yes |" in md
    assert "| batched decode step, 3 rows vs 1 | tiny | fp32 | 10.0 | 40.0 | 4.00× |" in md


def _saved_run(tmp_path):
    rep = B.Report(B.machine_info(), ["--shapes", "14m", "--draft", "my runs/draft"])
    rep.rows.append(B.Row("14M shape", "fp32", "greedy", 100.0, 40.0, "yes"))
    raw = tmp_path / "run.json"
    raw.write_text(json.dumps(B.report_to_json(rep)))
    return rep, raw


def test_from_json_works_without_transformers(tmp_path):
    """`python -m bench --from-json` renders a page in a process where transformers cannot
    be imported; measuring there refuses with one line."""
    rep, raw = _saved_run(tmp_path)
    out = tmp_path / "page.md"
    run_bench = (
        "import runpy, sys; sys.modules['transformers'] = None; "  # unimportable from here
        "sys.argv = ['bench', *sys.argv[1:]]; runpy.run_module('bench', run_name='__main__')"
    )
    root = Path(B.__file__).resolve().parent.parent
    p = subprocess.run(
        [sys.executable, "-c", run_bench, "--from-json", str(raw), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert p.returncode == 0, p.stderr
    assert out.read_text() == B.to_markdown(rep)
    assert p.stdout == f"wrote {out} (the markdown page)\n"
    p = subprocess.run(
        [sys.executable, "-c", run_bench, "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert p.returncode == 2
    assert p.stderr == (
        "error: the benchmark compares against transformers: pip install transformers\n"
    )


@pytest.fixture
def fake_run(monkeypatch):
    """`run` replaced by a canned report, so the writing rules are tested without measuring."""
    calls = []

    def run(args):
        calls.append(args)
        rep = B.Report(B.machine_info(), list(args.argv))
        rep.rows.append(B.Row("14M shape", "fp32", "greedy", 100.0, 40.0, "yes"))
        return rep

    monkeypatch.setattr(B, "run", run)
    return calls


def test_a_run_writes_only_where_told(tmp_path, monkeypatch, capsys, fake_run):
    monkeypatch.chdir(tmp_path)
    assert B.main(["--quick"]) == 0
    page = capsys.readouterr().out
    assert "greedy, batch 1" in page and "command: `python -m bench --quick`" in page
    assert list(tmp_path.iterdir()) == []  # no docs/ created, nothing written
    argv = ["--quick", "--cases", "greedy", "--out", "b.md", "--json", "r.json"]
    assert B.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "wrote b.md (the markdown page)",
        "wrote r.json (the raw results; --from-json renders them again)",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.md", "r.json"]
    cmd = "python -m bench --quick --cases greedy --out b.md --json r.json"
    assert f"command: `{cmd}`" in (tmp_path / "b.md").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["args"] == argv


def test_the_command_line_is_recorded_quoted(fake_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert B.main(["--draft", "my runs/draft", "--quick"]) == 0
    assert "command: `python -m bench --draft 'my runs/draft' --quick`" in capsys.readouterr().out


def test_append_adds_a_section(fake_run, tmp_path, capsys):
    page = tmp_path / "b.md"
    assert B.main(["--quick", "--out", str(page)]) == 0
    assert B.main(["--quick", "--cases", "greedy", "--append", "--out", str(page)]) == 0
    text = page.read_text()
    assert text.count("# Benchmarks: lmgen vs transformers") == 1
    assert f"## Another run: `python -m bench --quick --cases greedy --append --out {page}`" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--append"], "--append adds a section to the --out page: give --out FILE"),
        (["--out", "no/such/folder/b.md"], "the folder no/such/folder does not exist"),
        (["--json", "."], "--json .: is a folder"),
    ],
)
def test_bad_outputs_fail_before_measuring(argv, message, fake_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert B.main(["--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert fake_run == [] and list(tmp_path.iterdir()) == []


def test_lmgen_bench_points_to_python_m_bench(capsys):
    from lmgen.cli import main

    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "run `python -m bench`" in err


def test_the_package_holds_no_benchmark_and_never_imports_transformers():
    """transformers is the test oracle, a dev dependency: nothing installed imports it."""
    import importlib.util

    import lmgen

    pkg = Path(lmgen.__file__).parent
    for name in ("benchmark", "bench_cli", "llamacpp"):
        assert importlib.util.find_spec(f"lmgen.{name}") is None
    offenders = [
        str(f.relative_to(pkg))
        for f in pkg.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+transformers\b", f.read_text(), re.M)
    ]
    assert offenders == []


def test_from_json_refuses_a_file_that_is_not_a_run(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(ConfigError, match="not a results file written by --json"):
        B.load_report(str(bad))
    with pytest.raises(ConfigError, match="FileNotFoundError"):
        B.load_report(str(tmp_path / "missing.json"))


def test_goal_table_lists_the_beam_goal_against_transformers():
    rep = B.Report(B.machine_info(), [])
    rep.rows.append(B.Row("14M shape [14.2M]", "fp32", "beam", 20.0, 10.0, "yes"))
    rep.rows.append(B.Row("GPT-2-small shape [124.4M]", "fp32", "beam", 30.0, 10.0, "yes"))
    assert B.goal_rows(rep) == [
        ["14M shape [14.2M] fp32 beam 4 ≥ 2.5× transformers", "2.00×", "no"]
    ]


def test_smollm2_rotation_puts_each_side_first_in_turn():
    from bench import smollm2 as S

    order = []
    sides = {name: (lambda name=name: order.append(name) or 1.0) for name in ("a", "b", "c")}
    rates = S.rotate(sides, 3, between=lambda: order.append("|"))
    assert rates == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}
    runs = [x for x in order if x != "|"]
    assert runs == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert order.count("|") == 9  # the bandwidth is sampled after every run


def test_smollm2_rows_from_fake_runs_render_in_both_tables(tmp_path):
    """The SmolLM2 rows from made-up runs: medians, each side's bandwidth fraction against its
    own bytes per token, a llama.cpp side that did not run rendered as such, JSON round trip."""
    from bench import smollm2 as S

    rates = {"lmgen": [40.0, 50.0, 60.0], "transformers": [20.0, 25.0, 30.0]}
    per_token = {"lmgen": 5e8, "transformers": 5e8, "llama.cpp": 1e8}
    row, ref = S.rows_from_runs(
        "SmolLM2 [134.5M]",
        "fp32",
        {**rates, "llama.cpp": [200.0, 100.0, 150.0]},
        [20.0, 25.0, 30.0],
        per_token,
        "yes",
        "n",
    )
    assert (row.case, row.lmgen, row.hf, row.ratio, row.equal) == ("decode", 50.0, 25.0, 2.0, "yes")
    assert row.bw_gbs == 25.0 and row.bw_lmgen == 1.0 and row.bw_hf == 0.5  # limit 50 tok/s
    assert ref["plain"] == 50.0 and ref["optimised"] == 150.0 and ref["gguf"] == "q4_1"
    assert ref["bw_lmgen"] == 1.0 and ref["bw_llama"] == 0.6  # limit 250 tok/s
    row2, missing = S.rows_from_runs(
        "SmolLM2 [134.5M]", "bf16", {**rates, "llama.cpp": []}, [], per_token, "no", "not run"
    )
    assert row2.bw_lmgen is None and "bw_gbs" not in missing
    assert missing["optimised"] != missing["optimised"]  # NaN: no number is made up
    rep = B.Report(B.machine_info(), ["--shapes", "none", "--extras", "smollm2"])
    rep.rows += [row, row2]
    rep.extras += [ref, missing]
    md = B.to_markdown(rep)
    assert "| SmolLM2 [134.5M] | fp32 | greedy decode steps, batch 1 | tok/s | 50.0 | 25.0 |" in md
    assert "**2.00×** | 100% / 50% (25.0 GB/s)" in md
    assert "| SmolLM2 [134.5M] | fp32 | q4_1 | 50.0 | 150.0 | 0.33× |  | 100% / 60% of 25.0" in md
    assert "| SmolLM2 [134.5M] | bf16 | q4_1 | 50.0 | nan | nan× |  |  | not run |" in md
    assert "Goals" not in md  # no targets for these rows yet
    raw = tmp_path / "run.json"
    raw.write_text(json.dumps(B.report_to_json(rep)))
    assert B.to_markdown(B.load_report(str(raw))) == md


def test_smollm2_rows_are_skipped_with_a_note_without_the_file(tmp_path, monkeypatch):
    from bench import smollm2 as S

    monkeypatch.setenv("LMGEN_TEST_MODELS", str(tmp_path))
    assert S.find_gguf() is None and S.find_gguf(str(tmp_path / "x.gguf")) is None
    (tmp_path / S.GGUF_NAME).write_bytes(b"GGUF")
    assert S.find_gguf() == tmp_path / S.GGUF_NAME
    monkeypatch.setenv("LMGEN_TEST_MODELS", str(tmp_path / "empty"))
    rep = B.Report(B.machine_info(), [])
    args = B.build_arg_parser().parse_args(["--dtypes", "fp32"])
    S.run_smollm2(args, rep)
    assert rep.rows == [] and "SmolLM2-135M rows skipped" in rep.notes[0]


def test_bytes_per_token_counts_grouped_query_kv_heads():
    cfg = GPTConfig(
        vocab_size=100,
        n_positions=32,
        n_embd=24,
        n_layer=2,
        n_head=6,
        n_kv_head=2,
        head_size=8,
        model_type="llama",
        positions="rope",
        norm="rmsnorm",
        mlp="gated",
        activation_function="silu",
    )
    m = GPT(cfg)
    assert B.kv_width(cfg) == 16
    weights = B.bytes_per_token(m, 0)
    assert B.bytes_per_token(m, 10) - weights == 2 * 2 * 10 * 16 * 4


def test_smollm2_files_each_hold_their_kind(tmp_path, monkeypatch):
    """Each derived file holds the weights its row is named for (the f16 file was once written
    after the int4 quantization had turned the model's weights into Q4_0 blocks)."""
    gguf = pytest.importorskip("gguf")
    import lmgen
    from bench import smollm2 as S
    from lmgen.gguf_export import write_gguf
    from lmgen.tokenizers import BPETokenizer

    tok = BPETokenizer.train(texts=["a small corpus of words, " * 20], vocab_size=300)
    torch.manual_seed(0)
    llama = dict(model_type="llama", positions="rope", norm="rmsnorm", mlp="gated",
                 activation_function="silu",
                 norm_bias=False, mlp_bias=False, qkv_bias=False, attn_out_bias=False)  # fmt: skip
    cfg = lmgen.GPTConfig(vocab_size=tok.vocab_size, n_positions=64, n_embd=64, n_layer=1,
                          n_head=2, n_inner=128, **llama)  # fmt: skip
    source = write_gguf(lmgen.GPT(cfg), tmp_path / "source.gguf", torch.float32, tokenizer=tok)
    real_load = lmgen.load
    monkeypatch.setattr(lmgen, "load", lambda path, **kw: real_load(source, **kw))
    monkeypatch.setattr(S, "find_llama_quantize", lambda: None)
    files = S.quant_files(tmp_path / "m.gguf", tmp_path)
    want = {"q8_0": "Q8_0", "q4_0": "Q4_0", "f32": "F32", "f16": "F16"}
    for kind, ggml_type in want.items():
        reader = gguf.GGUFReader(str(files[kind][0]))
        types = {t.tensor_type.name for t in reader.tensors if t.name.endswith("ffn_up.weight")}
        assert types == {ggml_type}, kind
    assert files["q4_k"][0] is None
