"""docs/EVALUATION.md as a newcomer follows it: its `lmgen serve` and `lm_eval` commands, run
as written (on a free port instead of 8000), print the figures of the page's table; so does
its `hf` command. Slow: lm-eval takes 30-60 s for each backend on 2 cores."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "EVALUATION.md"
BIN = Path(sys.executable).parent


def _section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _commands(section: str) -> list[list[str]]:
    """The commands of the section's first bash block, continuation lines joined."""
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line, comments=True) for line in lines]
    return [c for c in commands if c]


def _page_figures() -> dict[tuple[str, str], str]:
    """(task, metric) -> value, from the page's table of lm-eval's results."""
    figures, task = {}, None
    for row in re.findall(r"^\| (.*) \|$", _section("Against `lmgen serve`"), re.M):
        cells = [c.strip() for c in row.split("|")]
        if len(cells) != 3 or not re.fullmatch(r"[\d.]+", cells[2]):
            continue
        task = cells[0] or task
        figures[(task, cells[1])] = cells[2]
    return figures


def _printed_figures(stdout: str) -> dict[tuple[str, str], str]:
    """(task, metric) -> value, from the table lm_eval prints."""
    figures, task = {}, None
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or not re.fullmatch(r"[\d.]+", cells[6]):
            continue
        task = cells[0] or task
        figures[(task, cells[4])] = cells[6]
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_lm_eval(command: list[str]) -> dict:
    assert command[0] == "lm_eval"
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": str(BIN)}
    p = subprocess.run(
        [str(BIN / "lm_eval"), *command[1:]],
        cwd=REPO,  # "Run it from the repository root"
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return _printed_figures(p.stdout)


def _wait_for(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read()
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer")


def test_page_figures_are_read():
    figures = _page_figures()
    assert figures[("lmgen_shakespeare_rolling", "bits_per_byte")] == "1.9982"
    assert figures[("lmgen_shakespeare_agreement", "acc")] == "1.0000"


@pytest.mark.slow
def test_the_documented_server_commands_print_the_pages_figures():
    serve, lm_eval = [
        c for c in _commands(_section("Against `lmgen serve`")) if c[0] != ".venv/bin/pip"
    ]
    assert serve[:2] == ["lmgen", "serve"] and serve[-1] == "&" and lm_eval[0] == "lm_eval"
    port = str(_free_port())
    serve = [str(BIN / "lmgen"), *serve[1:-1]]
    serve[serve.index("--port") + 1] = port
    lm_eval = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in lm_eval]
    server = subprocess.Popen(
        serve, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", server)
        printed = _run_lm_eval(lm_eval)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert printed == _page_figures()


@pytest.mark.slow
def test_the_documented_hf_command_prints_the_same_figures():
    (lm_eval,) = _commands(_section("Against the model directory (transformers)"))
    printed = _run_lm_eval(lm_eval)
    figures = _page_figures()
    # transformers sums a passage's log-likelihood in float32: perplexities agree to rounding
    assert printed.keys() == figures.keys()
    for key, value in figures.items():
        assert float(printed[key]) == pytest.approx(float(value), rel=1e-6, abs=1.1e-4), key
