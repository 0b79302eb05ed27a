"""The first seconds of the command line: Ctrl-C during start-up, what `--help` imports, and
one-line usage errors that suggest the flag or command meant."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmgen.cli import build_parser, main


def lmgen_command() -> list[str]:
    script = Path(sys.executable).parent / "lmgen"  # the console script a user runs
    return [str(script)] if script.exists() else [sys.executable, "-m", "lmgen"]


def _torch_is_loading(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_during_start_up_is_one_line_and_exit_130():
    """The interrupt arrives while the command is still importing torch (as soon as torch's
    library is mapped into the process): `interrupted`, exit 130, no traceback."""
    proc = subprocess.Popen(
        [*lmgen_command(), "generate", "ROMEO:", "--max-new-tokens", "5000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test runner may ignore SIGINT, and children inherit that: restore the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    if Path("/proc/self/maps").exists():
        while not _torch_is_loading(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the command ended before it imported torch"
    else:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "interrupted\n"), err
    assert out == ""


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from lmgen.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'lmgen.model', 'lmgen.lm') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lmgen_compare_stays_the_function_after_its_modules_are_imported():
    code = (
        "import lmgen.compare.metrics, lmgen.compare.cli, lmgen\n"
        "from lmgen.compare.runner import compare\n"
        "print(lmgen.compare is compare, 'torch' in lmgen.__dir__())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def _usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_misspelled_flag_gets_the_nearest_flag_and_the_subcommand_help(capsys):
    err = _usage_error(capsys, "generate", "--temprature", "0.8")
    assert "unrecognized argument: --temprature; did you mean --temperature?" in err
    assert "(see 'lmgen generate --help')" in err
    err = _usage_error(capsys, "serve", "--prot=8000")
    assert "did you mean --port?" in err and "'lmgen serve --help'" in err
    err = _usage_error(capsys, "plot", "next", "x", "--out", "x.png", "--top-kk", "5")
    assert "did you mean --top-k?" in err and "'lmgen plot next --help'" in err


def test_nothing_close_gets_no_guess(capsys):
    err = _usage_error(capsys, "generate", "x", "--zzzzzz")
    assert "did you mean" not in err and "unrecognized argument: --zzzzzz" in err


def test_misspelled_choice_gets_the_nearest_choice(capsys):
    err = _usage_error(capsys, "generate", "x", "--strategy", "samle")
    assert "did you mean 'sample'?" in err


def _help_commands(parser, metavar: str) -> list[str]:
    """The commands as `--help` lists them (a long name gets its help on the next line)."""
    block = parser.format_help().split(f"  {metavar}\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^ {4}(\S+)", block, flags=re.M)


def test_one_list_of_commands_in_help_and_in_the_error(capsys):
    parser = build_parser()
    listed = _help_commands(parser, "COMMAND")
    assert {"generate", "tokenize", "train", "serve"} <= set(listed)
    assert "bench" not in listed  # a pointer to `python -m bench`, not a command
    assert listed == parser.listed_commands()
    err = _usage_error(capsys, "genrate", "x")
    assert "unknown command 'genrate'; did you mean generate?" in err
    assert f"(commands: {', '.join(listed)})" in err
    plot_listed = _help_commands(parser._commands.choices["plot"], "PICTURE")
    assert "temperature" in plot_listed  # the nested commands too
    err = _usage_error(capsys, "plot", "nxt")
    assert f"unknown picture 'nxt'; did you mean next? (pictures: {', '.join(plot_listed)})" in err


def test_bench_still_points_to_the_benchmark(capsys):
    assert main(["bench", "--anything"]) == 2
    assert "python -m bench" in capsys.readouterr().err
