"""`lmgen chat`: the interactive REPL under a pseudo-terminal (keys sent, the screen read), and
one reply to a pipe. Replies are checked against `lmgen.chat.chat` on the same messages."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmgen
from lmgen.chat import chat

LMGEN = str(Path(sys.executable).with_name("lmgen"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
GREEDY = ["--max-new-tokens", "12"]
Q1, Q2 = "Who art thou?", "Whence comest thou?"


@pytest.fixture(scope="module")
def lm():
    return lmgen.load()


def reply(lm, messages, **kw) -> str:
    return chat(lm, messages, max_new_tokens=12, **kw).text


class Terminal:
    """`lmgen chat ARGS` on a pseudo-terminal: what a person types, and what they see."""

    def __init__(self, *args: str, cwd: Path):
        pid, fd = pty.fork()
        if pid == 0:  # the child: the terminal is its controlling tty, so Ctrl-C is SIGINT
            os.chdir(cwd)
            os.execv(LMGEN, [LMGEN, "chat", *args])
        self.pid, self.fd, self.screen, self.seen = pid, fd, "", 0

    def read(self, timeout: float = 0.2) -> None:
        while select.select([self.fd], [], [], timeout)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the child has gone
                return
            if not data:
                return
            text = ANSI.sub("", data.decode("utf-8", "replace")).replace("\r\n", "\n")
            self.screen += text.replace("\r", "")

    def expect(self, pattern: str, timeout: float = 90) -> re.Match:
        """Waits for `pattern` (a regex) after what was matched before; returns the match."""
        end = time.monotonic() + timeout
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.screen, self.seen)
            if m:
                self.seen = m.end()
                return m
            if time.monotonic() > end:
                raise AssertionError(f"{pattern!r} not on the screen:\n{self.screen[-2000:]}")
            self.read()

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def exit_code(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"lmgen chat did not leave:\n{self.screen[-2000:]}")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.mark.slow
def test_repl_two_turns_commands_and_ctrl_d(lm, tmp_path):
    t = Terminal(*GREEDY, "--system", "Speak plainly.", cwd=tmp_path)
    try:
        t.expect(r"Chatting with shakespeare.*no chat template.*>>> ")
        system = {"role": "system", "content": "Speak plainly."}
        messages = [system, {"role": "user", "content": Q1}]
        first = reply(lm, messages)
        t.send(Q1 + "\n")
        m = t.expect(r"\?\n(.*)\n\n>>> ")  # the echoed line, then the reply
        assert m.group(1).rstrip(" ") == first
        messages += [{"role": "assistant", "content": first.strip()}]
        messages += [{"role": "user", "content": Q2}]
        second = reply(lm, messages)
        t.send(Q2 + "\n")
        m = t.expect(r"comest thou\?\n(.*)\n\n>>> ")
        assert m.group(1).rstrip(" ") == second
        messages += [{"role": "assistant", "content": second.strip()}]

        t.send("/save two.json\n")
        t.expect(r"\[5 messages saved to two.json\]")
        assert json.loads((tmp_path / "two.json").read_text()) == messages

        t.send('"""\nline one\nline two\n"""\n')  # a multi-line message
        t.expect(r"\n\n>>> ")
        t.send("/reset\n")
        t.expect(r"\[conversation cleared\]")
        t.send("/save reset.json\n")
        t.expect(r"saved to reset.json")
        assert json.loads((tmp_path / "reset.json").read_text()) == [system]
        t.send(Q1 + "\n")  # after /reset the first answer comes again
        m = t.expect(r"\?\n(.*)\n\n>>> ")
        assert m.group(1).rstrip(" ") == first

        t.send("/system Be brief.\n")
        t.expect(r"\[system message set\]")
        t.send("/settings temperature=0.5 top-k=5\n")
        m = t.expect(r"/settings [^\n]*\n([^\n]*)\n")
        assert "temperature=0.5" in m.group(1) and "top_k=5" in m.group(1)
        assert 'strategy="sample"' in m.group(1)
        t.send("/settings top_p=7\n")
        t.expect(r"error: top_p must be in \(0, 1\]")
        t.send("/nonsense\n")
        t.expect(r"error: unknown command /nonsense")
        t.send("/save multi.json\n")
        t.expect(r"saved to multi.json")
        saved = json.loads((tmp_path / "multi.json").read_text())
        assert saved[0] == {"role": "system", "content": "Be brief."}
        t.send("\x04")  # Ctrl-D at the prompt leaves
        assert t.exit_code() == 0
    finally:
        t.close()


@pytest.mark.slow
def test_repl_ctrl_c_stops_the_reply_not_the_chat(tmp_path):
    long = ["--max-new-tokens", "100000", "--ignore-eos", "--context-overflow", "slide"]
    t = Terminal(*long, cwd=tmp_path)
    try:
        t.expect(r">>> ")
        t.send("half-typed line\x03")  # Ctrl-C while typing clears the line
        t.expect(r">>> ")
        t.send(Q1 + "\n")
        t.expect(r"\?\n.{20}")  # the reply has started
        t.send("\x03")
        t.expect(r"\[stopped\]\n\n>>> ")
        t.send("/save c.json\n")
        t.expect(r"\[2 messages saved")
        saved = json.loads((tmp_path / "c.json").read_text())
        assert [m["role"] for m in saved] == ["user", "assistant"] and saved[1]["content"]
        t.send("\x04")
        assert t.exit_code() == 0
    finally:
        t.close()


def run_chat(*args: str, stdin: str = "", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LMGEN, "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
    )


@pytest.mark.slow
def test_pipe_prints_one_reply_and_continues_saved_messages(lm, tmp_path):
    r = run_chat(*GREEDY, stdin=Q1 + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == reply(lm, [{"role": "user", "content": Q1}]) + "\n"

    saved = [{"role": "user", "content": Q1}, {"role": "assistant", "content": "A friend."}]
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    r = run_chat(*GREEDY, "--messages", str(path), stdin=Q2)
    assert r.returncode == 0, r.stderr
    assert r.stdout == reply(lm, [*saved, {"role": "user", "content": Q2}]) + "\n"

    # a conversation longer than the context: the oldest turns go, with a note
    turns = []
    for k in range(40):
        turns += [{"role": "user", "content": f"Question {k}, my lord?"}]
        turns += [{"role": "assistant", "content": "Ay, my good lord, it is so. " * 2}]
    path.write_text(json.dumps([{"role": "system", "content": "Be brief."}, *turns]))
    r = run_chat(*GREEDY, "--messages", str(path), stdin="And now?")
    assert r.returncode == 0, r.stderr
    m = re.search(r"\[(\d+) older messages dropped to fit the model's context of 256", r.stderr)
    assert m and int(m.group(1)) % 2 == 0  # whole turns
    kept = [{"role": "system", "content": "Be brief."}, *turns[int(m.group(1)) :]]
    kept.append({"role": "user", "content": "And now?"})
    assert r.stdout == reply(lm, kept) + "\n"


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        ((), "", "error: nothing to reply to"),
        (("--messages", "missing.json"), "hi", "error: cannot read missing.json"),
        (("--top-p", "2"), "hi", "error: top_p must be in (0, 1]"),
        (("-n", "2", "--temperature", "1"), "hi", "error: lmgen chat keeps one reply"),
    ],
)
def test_pipe_errors_are_one_line(tmp_path, args, stdin, message):
    r = run_chat(*args, stdin=stdin, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1


def test_a_failing_template_is_one_line_naming_it(tmp_path):
    from tests.chat_model import save_chat_model
    from tests.chat_templates import MISTRAL

    model = save_chat_model(tmp_path / "mistralish")
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": MISTRAL}))
    r = run_chat("--model", str(model), "--system", "Be brief.", stdin="hi")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (
        f"error: the chat template of {model} failed: Conversation roles must alternate "
        "user/assistant/user/assistant/...\n"
    )


@pytest.mark.parametrize(
    "line, want",
    [
        ('/settings stop=["a b", "c"] temperature=0.5', {"stop": ["a b", "c"], "temperature": 0.5}),
        ("/settings stop=\\n", {"stop": ["\n"]}),  # as --stop reads it
        ('/settings --stop="x y"', {"stop": ["x y"]}),
        ("/settings logit_bias=198=-100 top-k=5", {"logit_bias": {198: -100.0}, "top_k": 5}),
        ('/settings logit_bias={"198": -100}', {"logit_bias": {198: -100}}),
        ("/settings strategy=sample seed=3", {"strategy": "sample", "seed": 3}),
    ],
)
def test_settings_read_values_as_json_or_as_their_flags(line, want, capsys):
    """/settings NAME=VALUE ...: a value may hold spaces, and one that is not JSON is read the
    way the setting's flag reads it (so the /help's "names as the flags" holds)."""
    from lmgen.cli_chat import Conversation, command

    conv = Conversation(lmgen.load("shakespeare"), {}, [], print)
    command(conv, line)
    assert conv.kwargs == want
    capsys.readouterr()


def test_settings_name_a_bad_flag_value(capsys):
    from lmgen.cli_chat import Conversation, command

    conv = Conversation(lmgen.load("shakespeare"), {}, [], print)
    with pytest.raises(lmgen.ConfigError, match=r"logit_bias: expected TOKEN_ID=BIAS"):
        command(conv, "/settings logit_bias=oops")
    assert conv.kwargs == {}


def test_a_message_without_content_is_refused_as_the_server_refuses_it(tmp_path):
    """Only the assistant's message may lack content (lmgen.chat.may_lack_content), on the
    command line as in /v1/chat/completions."""
    from lmgen.cli_chat import read_messages

    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"role": "user"}]))
    with pytest.raises(lmgen.ConfigError, match=r"message 0 \(user\) has no content"):
        read_messages(str(path))
    ok = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": []}]
    path.write_text(json.dumps(ok))
    assert read_messages(str(path)) == ok
