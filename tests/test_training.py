"""The training loop: recipes, a tiny run end to end, kill-and-resume, DDP, bits per byte."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmgen.checkpoint import read_model_dir
from lmgen.errors import ConfigError
from lmgen.lm import LM
from lmgen.training.data import build_dataset, files_corpus
from lmgen.training.evaluate import evaluate_bits_per_byte, evaluate_text
from lmgen.training.train import (
    checkpoint_dirs,
    checkpoint_problem,
    clean_run_dir,
    latest_checkpoint,
    load_recipe,
    lr_factor,
    read_metrics,
    save_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"
sys.path.insert(0, str(Path(__file__).parent))
from test_data import make_text  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "train.txt").write_text(make_text(1, 400))
    (d / "val.txt").write_text(make_text(2, 60))
    out = d / "data"
    build_dataset(
        files_corpus([d / "train.txt"], val_files=[d / "val.txt"]),
        out,
        vocab_size=300,
        progress=False,
    )
    return out


def tiny(*overrides: str):
    return load_recipe(TINY, ["sample_tokens=0", *overrides])


# ------------------------------------------------------------------ recipes


def test_recipe_overrides_and_types():
    r = load_recipe(TINY, ["model.n_layer=3", "lr=0.01", "bf16=true", "sample_prompt=KING:"])
    assert r.model.n_layer == 3 and r.train.lr == 0.01 and r.train.bf16 is True
    assert r.train.sample_prompt == "KING:"
    assert "n_layer = 3" in r.to_toml()


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        load_recipe(TINY, ["max_step=3"])
    with pytest.raises(ConfigError, match="did you mean 'model.n_layer'"):
        load_recipe(TINY, ["model.n_layers=3"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown recipe key 'train.learning_rate'"):
        load_recipe(bad)
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="must be an integer"):
        load_recipe(TINY, ["max_steps=abc"])


def test_lr_schedule():
    r = tiny("max_steps=100", "warmup_steps=10", "lr=1.0", "min_lr=0.1").train
    f = [lr_factor(s, r) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert lr_factor(100, r) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    from lmgen.model import GPT, GPTConfig
    from lmgen.training.train import make_optimizer

    model = GPT(GPTConfig(vocab_size=50, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    opt = make_optimizer(model, tiny().train, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])


# ------------------------------------------------------------------ training


def test_tiny_run_lowers_loss_and_writes_a_model(data_dir, tmp_path):
    run = tmp_path / "run"
    final = train(data_dir, run, tiny("max_steps=40", "lr=1e-2"), progress=False)
    rows = read_metrics(run / "metrics.jsonl")
    evals = [r for r in rows if r["event"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < math.log(300) + 0.5
    assert {"val_ppl", "val_bpb"} <= set(evals[-1])
    losses = [r["loss"] for r in rows if r["event"] == "train"]
    assert losses[-1] < losses[0]
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert (run / "recipe.toml").is_file()
    assert latest_checkpoint(run).name == "step-000040"
    _, model, tok = read_model_dir(final)
    assert model.config.n_layer == 2 and tok.vocab_size == 300
    # A second run into the same directory must not silently overwrite it.
    with pytest.raises(ConfigError, match="--resume"):
        train(data_dir, run, tiny(), progress=False)


def test_kill_and_resume_equals_uninterrupted(data_dir, tmp_path):
    recipe = tiny("max_steps=24", "dropout=0.1", "checkpoint_interval=8", "eval_interval=8")
    train(data_dir, tmp_path / "whole", recipe, progress=False)
    # "killed" after 11 steps: the checkpoint of step 8 survives, steps 9-11 are lost
    assert train(data_dir, tmp_path / "cut", recipe, progress=False, stop_after=11) is None
    assert latest_checkpoint(tmp_path / "cut").name == "step-000008"
    assert not (tmp_path / "cut" / "final").exists()
    train(data_dir, tmp_path / "cut", recipe, resume=True, progress=False)
    a = read_model_dir(tmp_path / "whole" / "final")[1].state_dict()
    b = read_model_dir(tmp_path / "cut" / "final")[1].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the half-written checkpoint directories of a kill are never picked up
    (tmp_path / "cut" / "checkpoints" / ".tmp-partial").mkdir()
    assert latest_checkpoint(tmp_path / "cut").name == "step-000024"


def test_checkpoint_every_n_steps_and_keeps_last(data_dir, tmp_path):
    train(
        data_dir,
        tmp_path / "r",
        tiny("max_steps=12", "checkpoint_interval=3", "keep_checkpoints=2", "eval_interval=100"),
        progress=False,
    )
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert names == ["step-000009", "step-000012"]
    state = torch.load(tmp_path / "r/checkpoints/step-000012/state.pt", weights_only=False)
    assert {"optimizer", "scheduler", "rng", "data", "step"} <= set(state)


def test_final_model_loads_in_transformers(data_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    final = train(data_dir, tmp_path / "r", tiny("max_steps=4"), progress=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(final).eval()
    _, ours, _ = read_model_dir(final)
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_llama_style_model_trains_and_loads_in_transformers(data_dir, tmp_path):
    """model.family = "llama": RoPE, RMSNorm, SwiGLU and grouped-query attention from scratch;
    the saved directory is a LlamaForCausalLM to transformers, with the same logits."""
    transformers = pytest.importorskip("transformers")
    recipe = tiny("family=llama", "n_kv_head=1", "max_steps=30", "lr=1e-2")
    final = train(data_dir, tmp_path / "r", recipe, progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
              if r["event"] == "train"]  # fmt: skip
    assert losses[-1] < losses[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(final).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.num_key_value_heads == 1
    _, ours, _ = read_model_dir(final)
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="model.family must be one of"):
        train(data_dir, tmp_path / "bad", tiny("family=mamba"), progress=False)


def test_cli_train_and_eval(data_dir, tmp_path, capsys):
    from lmgen.cli import main

    run = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--data",
                str(data_dir),
                "--out",
                str(run),
                "--config",
                str(TINY),
                "--set",
                "max_steps=4",
                "--set",
                "sample_tokens=0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(data_dir),
                "--out",
                str(run),
                "--config",
                str(TINY),
                "--set",
                "max_stepz=4",
            ]
        )
        == 2
    )
    assert "did you mean 'train.max_steps'" in capsys.readouterr().err
    assert main(["eval", "--model", str(run / "final"), "--data", str(data_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bytes"] == len(make_text(2, 60).encode())
    assert 0 < out["bits_per_byte"] < 10


def test_no_validation_split_trains_without_eval(tmp_path, capsys, caplog):
    """`lmgen data --val-fraction 0` then `lmgen train`: no evaluation, and final/ is written."""
    from lmgen.cli import main

    (tmp_path / "corpus.txt").write_text(make_text(1, 300))
    data = tmp_path / "d7"
    assert (
        main(
            [
                "data",
                str(tmp_path / "corpus.txt"),
                "--out",
                str(data),
                "--val-fraction",
                "0",
                "--vocab-size",
                "300",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "val: 0 files" in capsys.readouterr().out
    run = tmp_path / "r4"
    with caplog.at_level(logging.WARNING, logger="lmgen.training.train"):
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(data),
                    "--out",
                    str(run),
                    "--config",
                    str(TINY),
                    "--set",
                    "max_steps=2",
                    "--set",
                    "eval_interval=1",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (run / "final" / "config.json").is_file()
    assert latest_checkpoint(run).name == "step-000002"
    assert not [r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "eval"]
    warnings = [r.getMessage() for r in caplog.records if "no validation split" in r.getMessage()]
    assert len(warnings) == 1  # said once, not at every would-be evaluation
    # evaluating on the data dir's (missing) validation split: a clear error, exit 2
    assert main(["eval", "--model", str(run / "final"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no validation split" in err


def test_eval_interval_zero_never_evaluates(data_dir, tmp_path):
    run = tmp_path / "r"
    final = train(data_dir, run, tiny("max_steps=3", "eval_interval=0"), progress=False)
    assert final is not None and (final / "config.json").is_file()
    rows = read_metrics(run / "metrics.jsonl")
    assert not [r for r in rows if r["event"] == "eval"]
    assert [r for r in rows if r["event"] == "end"]
    with pytest.raises(ConfigError, match="eval_interval must be >= 0"):
        tiny("eval_interval=-1")
    with pytest.raises(ConfigError, match="checkpoint_interval must be at least 1"):
        tiny("checkpoint_interval=0")


def test_train_unwritable_out_is_an_error_before_any_work(data_dir, tmp_path, capsys, monkeypatch):
    from lmgen.cli import main
    from lmgen.training import train as train_mod

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    monkeypatch.setattr(train_mod, "BatchSampler", None)  # any work past the checks fails
    outs = [a_file, a_file / "run"]
    if os.path.isdir("/proc/self"):
        outs.append(Path("/proc/lmgen-test-run"))
    for out in outs:
        assert (
            main(["train", "--data", str(data_dir), "--out", str(out), "--config", str(TINY)]) == 2
        ), out
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}: ") and err.count("\n") == 1, err
    assert a_file.read_text() == "x"


def test_recipe_toml_round_trips_any_text(tmp_path):
    prompt = 'ROMEO 🙂 "quoted" back\\slash\nnew line\ttab\x7f'
    r = tiny(f"sample_prompt={prompt}", "max_time=1.5")
    (tmp_path / "recipe.toml").write_text(r.to_toml())
    again = load_recipe(tmp_path / "recipe.toml")
    assert again == r and again.train.sample_prompt == prompt
    with pytest.raises(ConfigError, match="sample_prompt is not valid UTF-8"):
        tiny("sample_prompt=ROMEO \udcff")  # a non-UTF-8 byte from the command line


# ------------------------------------------------------------------ kills and resume


class _Killed(BaseException):
    """A simulated kill -9 (BaseException: no `except Exception` stops it)."""


@contextlib.contextmanager
def _dies_at(n: int):
    """The n-th filesystem change (mkdir, rename, unlink, rmdir, a safetensors write) raises
    _Killed, and so does every one after it: as after a kill -9, nothing the dying process
    still tries (its cleanup included) reaches the disk. Yields the running count."""
    import lmgen.checkpoint as ck

    count = [0]

    def dying(fn):
        def call(*args, **kwargs):
            count[0] += 1
            if count[0] >= n:
                raise _Killed
            return fn(*args, **kwargs)

        return call

    names = ("mkdir", "replace", "rename", "unlink", "rmdir")
    real = {name: getattr(os, name) for name in names}
    real_save = ck.save_file
    for name in names:
        setattr(os, name, dying(real[name]))
    ck.save_file = dying(real_save)
    try:
        yield count
    finally:
        for name in names:
            setattr(os, name, real[name])
        ck.save_file = real_save


def _tiny_model(data_dir):
    from lmgen.model import GPT, GPTConfig
    from lmgen.training.data import Dataset

    tok = Dataset(data_dir).tokenizer()
    config = GPTConfig(vocab_size=300, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    return GPT(config), tok


def _state(step: int) -> dict:
    return {"step": step, "optimizer": {}, "scheduler": {}, "rng": {}}


def _assert_consistent(run: Path, allowed: set[str]) -> None:
    """Every step-* directory complete, the newest one loads, one of `allowed`."""
    for _, p in checkpoint_dirs(run):
        assert checkpoint_problem(p) is None, (p, checkpoint_problem(p))
    latest = latest_checkpoint(run)
    assert latest is not None and latest.name in allowed, latest
    read_model_dir(latest / "model")
    assert torch.load(latest / "state.pt", weights_only=False)["step"] == int(latest.name[5:])


def test_checkpoint_save_killed_at_every_filesystem_step(data_dir, tmp_path):
    """A kill at each of the filesystem changes of one checkpoint save (new checkpoint in,
    the oldest rotated out; and a same-step re-save): every step-* directory left is
    complete, the newest loads, and the next start removes every temporary."""
    model, tok = _tiny_model(data_dir)

    def setup(run: Path) -> None:
        for step in (1, 2):
            save_checkpoint(run, step, model, tok, _state(step), keep=2)

    for label, step, allowed in (
        ("new", 3, {"step-000002", "step-000003"}),
        ("again", 2, {"step-000001", "step-000002"}),
    ):
        with _dies_at(10**9) as count:
            setup(tmp_path / f"{label}-count")
            before = count[0]
            save_checkpoint(tmp_path / f"{label}-count", step, model, tok, _state(step), keep=2)
        steps = count[0] - before
        assert steps >= 10  # mkdtemp, model dir build and swap, rename in, rotation
        for k in range(1, steps + 1):
            run = tmp_path / f"{label}-{k}"
            setup(run)
            with pytest.raises(_Killed), _dies_at(k):
                save_checkpoint(run, step, model, tok, _state(step), keep=2)
            _assert_consistent(run, allowed)
            clean_run_dir(run)
            left = sorted(p.name for p in (run / "checkpoints").iterdir())
            assert all(n.startswith("step-") for n in left), (k, left)
            _assert_consistent(run, allowed)


def test_final_model_write_killed_at_every_step_is_recovered(data_dir, tmp_path):
    from lmgen.checkpoint import recover_model_dir, write_model_dir

    model, tok = _tiny_model(data_dir)
    with _dies_at(10**9) as count:
        write_model_dir(model, tok, tmp_path / "count" / "final")
        before = count[0]
        write_model_dir(model, tok, tmp_path / "count" / "final")
    for k in range(1, count[0] - before + 1):
        final = tmp_path / f"r{k}" / "final"
        write_model_dir(model, tok, final)
        with pytest.raises(_Killed), _dies_at(k):
            write_model_dir(model, tok, final)
        recover_model_dir(final)
        assert sorted(p.name for p in final.parent.iterdir()) == ["final"], k
        read_model_dir(final)


def test_resume_skips_reports_and_sets_aside_broken_checkpoints(data_dir, tmp_path, caplog):
    recipe = tiny("max_steps=12", "checkpoint_interval=4", "keep_checkpoints=3", "dropout=0.1")
    train(data_dir, tmp_path / "whole", recipe, progress=False)
    cut = tmp_path / "cut"
    assert train(data_dir, cut, recipe, progress=False, stop_after=12) is None
    ck = cut / "checkpoints"
    assert [p.name for _, p in checkpoint_dirs(cut)] == [f"step-0000{s:02d}" for s in (4, 8, 12)]
    state = ck / "step-000012" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # torn
    (ck / "step-000008" / "model" / "model.safetensors").unlink()  # what rmtree in place left
    for stale in (ck / ".tmp-abcd1234", ck / ".trash-step-000001-0123abcd", cut / ".final.tmp-9"):
        (stale / "model").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="lmgen.training.train"):
        train(data_dir, cut, recipe, resume=True, progress=False)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "step-000012 is broken (state.pt does not load" in said
    assert "step-000008 is broken (model/model.safetensors missing)" in said
    start = [r for r in read_metrics(cut / "metrics.jsonl") if r["event"] == "start"][-1]
    assert start["resumed_from"].endswith("step-000004")
    assert [s.split(":")[0] for s in start["skipped_checkpoints"]] == [
        "step-000012",
        "step-000008",
    ]
    names = sorted(p.name for p in ck.iterdir())
    assert names == [
        "broken-step-000008",
        "broken-step-000012",
        "step-000004",
        "step-000008",
        "step-000012",
    ]
    assert not list(cut.glob(".final.*"))
    a = read_model_dir(tmp_path / "whole" / "final")[1].state_dict()
    b = read_model_dir(cut / "final")[1].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cli_resume_uses_the_runs_own_recipe_and_prints_each_eval(data_dir, tmp_path, capsys):
    from lmgen.cli import main

    run = tmp_path / "r"
    first = ["--set", "max_steps=6", "--set", "eval_interval=3", "--set", "sample_tokens=4"]
    base = ["train", "--data", str(data_dir), "--out", str(run), "--no-progress"]
    assert main([*base, "--config", str(TINY), *first, "--set", "checkpoint_interval=3"]) == 0
    out = capsys.readouterr().out
    evals = [line for line in out.splitlines() if ": val loss " in line]
    assert [line.split(":")[0] for line in evals] == ["step 3/6", "step 6/6"], out
    assert all(" bits/byte" in line and "ppl " in line for line in evals)
    assert out.count("  | ROMEO:") == 2  # the sample (prompt and continuation) below each
    # no --config: the run's recipe.toml (tiny's 2 layers, not the built-in 6), --set on top
    assert main([*base, "--resume", "--set", "max_steps=9"]) == 0
    out = capsys.readouterr().out
    assert f"recipe: {run / 'recipe.toml'}" in out
    assert "resuming from" in out and "step-000006 (step 6)" in out
    assert "step 9/9: val loss" in out
    assert read_model_dir(run / "final")[0].n_layer == 2
    assert "max_steps = 9" in (run / "recipe.toml").read_text()


def test_verbose_flag_before_or_after_the_command():
    from lmgen.cli import build_parser

    parser = build_parser()
    args = ["--data", "d", "--out", "o"]
    assert parser.parse_args(["train", *args]).verbose is False
    assert parser.parse_args(["-v", "train", *args]).verbose is True
    assert parser.parse_args(["train", *args, "-v"]).verbose is True
    assert parser.parse_args(["data", "x", "--out", "o", "--verbose"]).verbose is True
    assert parser.parse_args(["eval", "--text", "t", "-v"]).verbose is True


# ------------------------------------------------------------------ bits per byte


def _full_context_nll(lm: LM, text: str) -> float:
    ids = [lm.tokenizer.eos_token_id] + lm.tokenizer.encode(text)
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(x[:, :-1]).double(), -1)
    return float(-logp.gather(-1, x[:, 1:, None]).sum())


def test_bits_per_byte_sliding_window(data_dir, tmp_path):
    from lmgen.model import GPT, GPTConfig

    ds_tok = read_model_dir(train(data_dir, tmp_path / "r", tiny("max_steps=2"), progress=False))[2]
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=300,
            n_positions=64,
            n_embd=16,
            n_layer=1,
            n_head=2,
            eos_token_id=ds_tok.eos_token_id,
        )
    ).eval()
    lm = LM(model, ds_tok)
    text = "The king is dead. Long live the queen!\n" * 2
    n_tokens = len(ds_tok.encode(text))
    assert n_tokens + 1 <= 64
    # the window holds the whole text: exactly the full-context NLL
    ev = evaluate_text(lm, text, window=64, stride=32)
    assert ev.tokens == n_tokens
    expected = _full_context_nll(lm, text) / math.log(2) / len(text.encode())
    assert ev.bits_per_byte == pytest.approx(expected, rel=1e-6)
    # short windows: every token scored exactly once, whatever the stride
    for window, stride in ((8, 8), (8, 3), (5, 1)):
        ev = evaluate_text(lm, text, window=window, stride=stride, batch_size=3)
        assert ev.tokens == n_tokens
        assert 0 < ev.bits_per_byte < 20
    assert evaluate_bits_per_byte(lm, text, 8, 8) == pytest.approx(
        evaluate_text(lm, text, 8, 8).bits_per_byte
    )
    with pytest.raises(ConfigError, match="window"):
        evaluate_text(lm, text, window=65)


def test_eval_window_and_stride_zero_are_errors(data_dir, tmp_path, capsys):
    """0 is out of range, not "the default" (which is what None means)."""
    from lmgen.checkpoint import write_model_dir
    from lmgen.cli import main
    from lmgen.model import GPT, GPTConfig
    from lmgen.training.data import Dataset

    tok = Dataset(data_dir).tokenizer()
    model = GPT(
        GPTConfig(
            vocab_size=300,
            n_positions=16,
            n_embd=16,
            n_layer=1,
            n_head=2,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    lm = LM(model, tok)
    text = "The king is dead. Long live the queen!\n"
    with pytest.raises(ConfigError, match=r"window must be in \[1, 16\].*got 0"):
        evaluate_text(lm, text, window=0)
    with pytest.raises(ConfigError, match=r"window must be in \[1, 16\].*got -1"):
        evaluate_text(lm, text, window=-1)
    with pytest.raises(ConfigError, match=r"stride must be in \[1, window=16\], got 0"):
        evaluate_text(lm, text, stride=0)
    with pytest.raises(ConfigError, match=r"stride must be in \[1, window=8\], got 0"):
        evaluate_text(lm, text, window=8, stride=0)
    ev = evaluate_text(lm, text)  # None: the defaults
    assert (ev.window, ev.stride) == (16, 8)
    path = write_model_dir(model, tok, tmp_path / "m")
    (tmp_path / "t.txt").write_text(text)
    base = ["eval", "--model", str(path), "--text", str(tmp_path / "t.txt")]
    for flags, message in (
        (["--window", "0"], "window must be in [1, 16]"),
        (["--stride", "0"], "stride must be in [1, window=16]"),
    ):
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert main([*base, "--window", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stride"] == 4


# ------------------------------------------------------------------ DDP


def _torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lmgen",
        "train",
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_two_processes_match_single_process(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = [
        "--data",
        str(data_dir),
        "--config",
        str(TINY),
        "--no-progress",
        "--set",
        "max_steps=6",
        "--set",
        "log_interval=1",
        "--set",
        "eval_interval=3",
        "--set",
        "checkpoint_interval=3",
        "--set",
        "sample_tokens=0",
        "--set",
        "batch_size=2",
    ]
    p = _torchrun([*common, "--out", str(tmp_path / "ddp"), "--set", "grad_accum=1"], env)
    assert p.returncode == 0, p.stderr[-3000:]
    single = train(
        data_dir,
        tmp_path / "single",
        tiny(
            "max_steps=6",
            "log_interval=1",
            "eval_interval=3",
            "checkpoint_interval=3",
            "batch_size=2",
            "grad_accum=2",
        ),
        progress=False,
    )
    assert single is not None
    a = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r["event"] == "train"]
    b = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if r["event"] == "train"]
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-4)
    start = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r["event"] == "start"]
    assert start[0]["world"] == 2
    # rank 0 alone wrote: one start record, one final model
    assert len(start) == 1 and (tmp_path / "ddp" / "final" / "config.json").is_file()


# ------------------------------------------------------------------ the bundled model


def test_bundled_model_loads_and_generates():
    from lmgen.checkpoint import BUNDLED_DIR

    path = BUNDLED_DIR / "shakespeare"
    if not (path / "config.json").is_file():
        pytest.skip("the bundled shakespeare model is not trained yet")
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 16 * 1024 * 1024
    import lmgen

    lm = lmgen.load("shakespeare")
    assert lm.model.wte.weight.dtype == torch.float32
    from lmgen.generation import generate

    out = generate(lm, "ROMEO:", strategy="greedy", max_new_tokens=8)
    assert isinstance(out.text, str) and out.text
    transformers = pytest.importorskip("transformers")
    # fp16 on disk; transformers may keep fp16, so compare both in fp32
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).float().eval()
    ids = torch.tensor([lm.tokenizer.encode("ROMEO: What light")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, lm.model(ids), atol=1e-4, rtol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert tok.encode("ROMEO: What light") == ids[0].tolist()


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(data_dir, tmp_path):
    """A real kill (SIGKILL, mid-step or mid-checkpoint), then --resume: same final weights."""
    import signal
    import time

    args = [
        "--data",
        str(data_dir),
        "--config",
        str(TINY),
        "--no-progress",
        "--set",
        "max_steps=60",
        "--set",
        "checkpoint_interval=5",
        "--set",
        "dropout=0.1",
        "--set",
        "sample_tokens=0",
        "--set",
        "eval_interval=20",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    main = [sys.executable, "-m", "lmgen", "train"]
    subprocess.run(
        [*main, *args, "--out", str(tmp_path / "whole")],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [*main, *args, "--out", str(cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while latest_checkpoint(cut) is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(cut) is not None
    assert not (cut / "final").exists(), "the run ended before the kill; kill sooner"
    subprocess.run(
        [*main, *args, "--out", str(cut), "--resume"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    a = read_model_dir(tmp_path / "whole" / "final")[1].state_dict()
    b = read_model_dir(cut / "final")[1].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigkill_loop_of_30_never_leaves_a_broken_or_unresumable_run(tmp_path):
    """scripts/probe_kill9.py: 30 SIGKILLs at random moments of checkpoint-every-step training
    on one run directory, each followed by --resume; then the run to its end."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("probe_kill9", ROOT / "scripts/probe_kill9.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    figures = probe.run_probe(iterations=30, seed=1, work=tmp_path, say=lambda line: None)
    assert figures["iterations"] == 30 and not figures["finished_early"], figures
    assert figures["broken_states"] == 0 and figures["unresumable_states"] == 0, figures
    assert figures["mid_checkpoint_kills"] > 0, figures  # the kills did catch saves
    assert figures["final_identical"] and figures["left_after_finish"] == [], figures


# ------------------------------------------------------------------ output when piped


def test_piped_train_prints_one_plain_line_per_log_interval(data_dir, tmp_path, capsys):
    """`lmgen train ... | cat`: no bar, no carriage return; a progress line every log interval,
    the evaluations and samples on lines of their own; and the tokens/s of the window that
    follows an evaluation (its sample, its checkpoint) stays within reach of the others."""
    from lmgen.cli import main

    args = ["--set", "max_steps=12", "--set", "log_interval=2", "--set", "eval_interval=4"]
    args += ["--set", "checkpoint_interval=4", "--set", "sample_tokens=16"]
    base = ["train", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--config", str(TINY)]
    assert main([*base, *args]) == 0  # stdout and stderr are not terminals here, as in a pipe
    p = capsys.readouterr()
    assert "\r" not in p.out + p.err
    lines = p.out.splitlines()
    progress = [line for line in lines if ": loss " in line]
    assert [line.split(":")[0] for line in progress] == [f"step {s}/12" for s in range(2, 13, 2)]
    assert all(line.endswith(" s") and " tokens/s, " in line for line in progress)
    evals = [line for line in lines if ": val loss " in line]
    assert [line.split(":")[0] for line in evals] == ["step 4/12", "step 8/12", "step 12/12"]
    assert sum(line.startswith("  | ROMEO:") for line in lines) == 3
    rates = [
        r["tokens_per_s"]
        for r in read_metrics(tmp_path / "r" / "metrics.jsonl")
        if r["event"] == "train"
    ]
    median = sorted(rates)[len(rates) // 2]
    assert min(rates) > median / 4, rates
