"""`lmgen chat`: a conversation with a model in the terminal, or one reply to what stdin holds.

The conversation is a list of OpenAI-style messages rendered by the model's chat template
(lmgen.chat); replies stream as they are decided and stop at the template's end of turn.
Interactive commands: /reset, /system TEXT, /save FILE, /settings [NAME=VALUE ...], /help.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .cli_args import add_model_arg, add_runtime_args, load_lm, read_prompt
from .cli_decoding import add_decoding_arguments, config_kwargs, typed_value
from .errors import ConfigError, LmgenError
from .settings import COMMAND_GROUPS

REPLY_TOKENS = 512  # a reply's length at most, unless --max-new-tokens says otherwise
ROLES = ("system", "developer", "user", "assistant", "tool")
HELP = """\
/reset              start again (the system message stays)
/system TEXT        set the system message (/system alone removes it)
/save FILE          write the conversation as JSON messages (lmgen chat --messages FILE reads it)
/settings           show the decoding settings; /settings NAME=VALUE ... changes them
                    (names as the flags or keywords: top_p=0.9, --temperature=0.7, seed=1;
                    values as JSON or as the flag takes them: stop=["a b"], stop=\\n)
/help               this list
Multi-line input: end a line with \\ to go on, or put the lines between two lines of \"\"\".
Ctrl-C stops a reply (or clears the line you are typing); Ctrl-D leaves."""


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="talk with a model through its chat template",
        description="A conversation with a chat model: its messages rendered by the model's "
        "chat template, replies streamed and stopped at its end of turn. In a terminal it is "
        "interactive (/help lists the commands); with stdin from a pipe or file, it prints "
        "one reply to the text read. Models without a chat template get lmgen's plain "
        "'Role: text' transcript. Every decoding flag of `lmgen generate` is accepted.",
    )
    add_model_arg(p)
    add_runtime_args(p)
    g = p.add_argument_group("conversation")
    g.add_argument("--system", metavar="TEXT", help="a system message to start with")
    g.add_argument(
        "--messages",
        metavar="FILE",
        help="continue a saved conversation: a JSON list of {role, content} messages, as "
        "/save writes it",
    )
    add_decoding_arguments(
        p, COMMAND_GROUPS["chat"], shown_defaults={"--max-new-tokens": REPLY_TOKENS}
    )
    p.set_defaults(func=cmd_chat)


def read_messages(path: str) -> list[dict]:
    """A conversation file: a JSON list of {"role", "content"} objects."""
    from .chat import may_lack_content

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}", "messages") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of messages", "messages")
    for k, m in enumerate(data):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ConfigError(
                f"{path}: message {k} must be an object whose role is one of {', '.join(ROLES)}",
                "messages",
            )
        if not isinstance(m.get("content"), (str, list, type(None))):
            raise ConfigError(f"{path}: message {k}'s content must be text", "messages")
        if m.get("content") is None and not may_lack_content(m["role"]):
            raise ConfigError(f"{path}: message {k} ({m['role']}) has no content", "messages")
    return data


class Conversation:
    """The messages so far, the decoding settings, and the model that replies."""

    def __init__(self, lm, kwargs: dict, messages: list[dict], note: Callable[[str], None]):
        from .chat import chat_format

        self.lm = lm
        self.format = chat_format(lm)
        self.kwargs = kwargs  # the decoding keywords given (flags, then /settings)
        self.config = make_config(kwargs)
        self.messages = messages
        self.note = note

    @property
    def system(self) -> list[dict]:
        return [m for m in self.messages[:1] if m.get("role") in ("system", "developer")]

    def set_system(self, text: str) -> None:
        rest = self.messages[len(self.system) :]
        self.messages = ([{"role": "system", "content": text}] if text else []) + rest

    def reset(self) -> None:
        self.messages = self.system

    def settings(self, assignments: list[str]) -> None:
        kwargs = dict(self.kwargs)
        for a in assignments:
            name, eq, value = a.partition("=")
            if not eq:
                raise ConfigError(f"/settings takes NAME=VALUE, got {a!r}")
            name = name.strip().lstrip("-").replace("-", "_")
            kwargs[name] = typed_value(name, value)
        config = make_config(kwargs)  # raises on a bad name or value: nothing changes
        self.kwargs, self.config = kwargs, config

    def describe(self) -> str:
        from .generation_config import GenerationConfig

        default = GenerationConfig().to_dict()
        current = self.config.to_dict()
        shown = {k: v for k, v in current.items() if v != default.get(k)}
        shown.setdefault("strategy", self.config.effective_strategy())
        return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(shown.items()))

    def reply(self) -> Iterator[str]:
        """The reply to the conversation, as text deltas; older turns dropped first when the
        context is outgrown (with a note)."""
        from .chat import chat, chat_stream, fit_messages

        context = self.lm.config.n_positions
        want = self.config.max_new_tokens
        reserve = min(want, context // 2)
        self.messages, dropped, ids = fit_messages(self.lm, self.messages, reserve)
        if dropped:
            self.note(
                f"[{dropped} older message{'s' if dropped > 1 else ''} dropped to fit the "
                f"model's context of {context} tokens]"
            )
        config = self.config
        if config.context_overflow == "error" and len(ids) + want > context:
            config = config.replace(max_new_tokens=context - len(ids))
        if config.effective_strategy() in ("greedy", "sample"):
            yield from chat_stream(self.lm, self.messages, config)
        else:  # beam and contrastive search decide the text at their end
            yield chat(self.lm, self.messages, config).text


def make_config(kwargs: dict):
    from .generation_config import GenerationConfig

    config = GenerationConfig.from_kwargs(**{"max_new_tokens": REPLY_TOKENS, **kwargs})
    for w in config.validate():
        print(f"warning: {w}", file=sys.stderr)
    if config.num_return_sequences != 1:
        raise ConfigError("lmgen chat keeps one reply: num_return_sequences must be 1")
    return config


def cmd_chat(args: argparse.Namespace) -> int:
    messages = read_messages(args.messages) if args.messages else []
    kwargs = config_kwargs(args)
    make_config(kwargs)  # a bad flag fails before the model loads
    interactive = sys.stdin.isatty()
    if not interactive:
        text = read_prompt("-")
        if text.strip():
            messages.append({"role": "user", "content": text})
        elif not messages or messages[-1].get("role") != "user":
            raise ConfigError(
                "nothing to reply to: pipe a message to stdin (or give --messages FILE "
                "ending with a user message)",
                "messages",
            )
    lm = load_lm(args)
    conv = Conversation(lm, kwargs, messages, note=lambda s: print(s, file=sys.stderr))
    if args.system is not None:
        conv.set_system(args.system)
    if not interactive:
        for delta in conv.reply():
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    return repl(conv)


def repl(conv: Conversation) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    conv.note = print
    fmt = conv.format
    how = "" if fmt.is_default else ", through its chat template"
    print(f"Chatting with {conv.lm.name}{how}. /help lists the commands; Ctrl-D leaves.")
    if fmt.is_default:
        print("This model has no chat template: its messages are a plain 'Role: text' transcript.")
    if conv.messages:
        print(f"[{len(conv.messages)} messages so far; /save FILE keeps the conversation]")
    while True:
        try:
            text = read_message()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        if not text.strip():
            continue
        try:
            if text.startswith("/"):
                command(conv, text)
            else:
                talk(conv, text)
        except LmgenError as e:
            print(f"error: {e}")


def read_message() -> str:
    """One message: a line, lines joined by a trailing backslash, or lines between \"\"\"."""
    line = input(">>> ")
    if line.strip().startswith('"""'):
        lines = [line.strip()[3:]] if line.strip()[3:] else []
        while True:
            line = input("... ")
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines).strip("\n")
            lines.append(line)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = input("... ")
    return "\n".join([*lines, line])


def talk(conv: Conversation, text: str) -> None:
    conv.messages.append({"role": "user", "content": text})
    parts: list[str] = []
    stopped = False
    replies = conv.reply()
    try:
        for delta in replies:
            parts.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stopped = True
    except LmgenError:
        conv.messages.pop()  # the message got no reply: it is not part of the conversation
        raise
    finally:
        replies.close()
    reply = "".join(parts)
    print(" [stopped]" if stopped else "")
    print()
    if stopped and not reply.strip():
        conv.messages.pop()  # stopped before a word: as if the message was never sent
        return
    conv.messages.append({"role": "assistant", "content": reply.strip()})


def command(conv: Conversation, text: str) -> None:
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name == "/reset":
        conv.reset()
        print("[conversation cleared]")
    elif name == "/system":
        conv.set_system(rest)
        print(f"[system message {'set' if rest else 'removed'}]")
    elif name == "/save":
        if not rest:
            raise ConfigError("/save needs a file name")
        try:
            Path(rest).write_text(
                json.dumps(conv.messages, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
        except OSError as e:
            raise ConfigError(f"cannot write {rest}: {e.strerror or e}") from None
        print(f"[{len(conv.messages)} messages saved to {rest}]")
    elif name == "/settings":
        if rest:  # NAME=VALUE pairs; a value may hold spaces (stop=["a b", "c"])
            conv.settings(re.split(r"\s+(?=-{0,2}[A-Za-z_][\w-]*=)", rest))
        print(conv.describe())
    elif name in ("/help", "/?"):
        print(HELP)
    else:
        raise ConfigError(f"unknown command {name}; /help lists them")
