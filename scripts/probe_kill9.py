"""Kill -9 probe (issue 16): `lmgen train --resume` killed with SIGKILL at random moments,
again and again on one run directory, then run to the end.

    .venv/bin/python scripts/probe_kill9.py [--iterations 30] [--seed 0]

The recipe checkpoints every step and keeps one, so most kills land while a checkpoint is
being written or the previous one removed. After each kill the probe looks at the run
directory as the next start will find it: every `step-*` directory must be complete, and the
newest must load (model and state.pt). At the end the run is resumed to its last step and its
weights compared with an uninterrupted run of the same recipe: they must be bit-identical.
Figures: iterations, kills that caught a checkpoint half-written (temporaries left), broken
`step-*` directories, unresumable states, and whether the final weights match.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.toml"


def recipe_args(max_steps: int) -> list[str]:
    sets = {
        "max_steps": max_steps,
        "checkpoint_interval": 1,
        "keep_checkpoints": 1,
        "eval_interval": 25,
        "sample_tokens": 0,
        "dropout": 0.1,
        "log_interval": 1,
    }
    args = ["--config", str(TINY), "--no-progress"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args


def make_data(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from lmgen.training.data import build_dataset, files_corpus
    from test_data import make_text

    (work / "train.txt").write_text(make_text(1, 400))
    (work / "val.txt").write_text(make_text(2, 60))
    out = work / "data"
    build_dataset(
        files_corpus([work / "train.txt"], val_files=[work / "val.txt"]),
        out,
        vocab_size=300,
        progress=False,
    )
    return out


def _starts(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_text().count('"event": "start"')
    except OSError:
        return 0


def inspect(run: Path) -> dict:
    """The run directory as the next start finds it."""
    import torch

    from lmgen.checkpoint import read_model_dir
    from lmgen.training.train import checkpoint_dirs, checkpoint_problem, latest_checkpoint

    root = run / "checkpoints"
    temporaries = (
        [p.name for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []
    )
    broken = [p.name for _, p in checkpoint_dirs(run) if checkpoint_problem(p) is not None]
    latest = latest_checkpoint(run)
    resumable = latest is not None
    if latest is not None:
        try:
            read_model_dir(latest / "model")
            torch.load(latest / "state.pt", map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any failure here means a resume would fail
            resumable = False
    return {
        "temporaries": temporaries,
        "broken": broken,
        "resumable": resumable,
        "latest": latest.name if latest else None,
    }


def run_probe(iterations: int = 30, seed: int = 0, work: Path | None = None, say=print) -> dict:
    import torch

    from lmgen.checkpoint import read_model_dir

    rng = random.Random(seed)
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="probe-kill9-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lmgen", "train"]
    max_steps = 14 * iterations + 40
    try:
        data = make_data(work)
        args = ["--data", str(data), *recipe_args(max_steps)]
        subprocess.run(
            [*cmd, *args, "--out", str(work / "whole")],
            env=env,
            check=True,
            capture_output=True,
            timeout=1800,
        )
        run = work / "cut"
        figures = {
            "iterations": 0,
            "mid_checkpoint_kills": 0,
            "broken_states": 0,
            "unresumable_states": 0,
            "finished_early": False,
        }
        for i in range(iterations):
            starts = _starts(run)
            proc = subprocess.Popen(
                [*cmd, *args, "--out", str(run), "--resume"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.time() + 300
            while _starts(run) == starts and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.2))
            if proc.poll() is not None:
                figures["finished_early"] = True
                say(f"iteration {i + 1}: the run ended before the kill (rc {proc.returncode})")
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            seen = inspect(run)
            figures["iterations"] += 1
            figures["mid_checkpoint_kills"] += bool(seen["temporaries"])
            figures["broken_states"] += bool(seen["broken"])
            figures["unresumable_states"] += not seen["resumable"] and i > 0
            say(
                f"kill {i + 1}: newest {seen['latest']}, temporaries {seen['temporaries']}, "
                f"broken {seen['broken']}, resumable {seen['resumable']}"
            )
        done = subprocess.run(
            [*cmd, *args, "--out", str(run), "--resume"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            say(done.stderr[-2000:])
        a = read_model_dir(work / "whole" / "final")[1].state_dict()
        b = read_model_dir(run / "final")[1].state_dict() if done.returncode == 0 else {}
        figures["final_identical"] = bool(b) and all(torch.equal(a[k], b[k]) for k in a)
        left = [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("step-")]
        figures["left_after_finish"] = left
        return figures
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args()
    t0 = time.time()
    figures = run_probe(ns.iterations, ns.seed)
    figures["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(figures, indent=2))
    ok = (
        figures["broken_states"] == 0
        and figures["unresumable_states"] == 0
        and figures["final_identical"]
        and not figures["left_after_finish"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
