"""The command line's argparse: every usage error is one line, `error: …`, with the nearest
flag, command or choice suggested and the help to read, and exit code 2."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

# argparse's own wording (stable across Python versions): "argument X: invalid choice: 'v' (...)"
_INVALID_CHOICE = re.compile(r"^argument (?P<arg>.+?): invalid choice: '(?P<value>.*?)' \(")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommand parsers are of its own kind."""

    _commands = None  # the subcommands' action, once added

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", type(self))
        self._commands = super().add_subparsers(**kwargs)
        return self._commands

    def listed_commands(self) -> list[str]:
        """The commands `--help` lists, in its order (those added with a `help`): the list an
        unknown command's error shows too, so the two never differ."""
        commands = self._commands
        # _choices_actions is what argparse's help formatter lists: one entry per helped command
        return [a.dest for a in commands._choices_actions] if commands else []

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._innermost(ns)
            typed = extras[0].partition("=")[0]
            takers = self.commands_with(typed) if typed.startswith("--") else []
            parser.error(unrecognized(extras, flags(parser), takers))
        return ns

    def commands_with(self, flag: str, prefix: str = "") -> list[str]:
        """The commands whose parser takes `flag` ("generate", "plot generation"): a flag of
        another command is named as such rather than answered with a lookalike of this one's."""
        commands = self._commands
        if commands is None:
            return []
        out = []
        for name, sub in commands.choices.items():
            if flag in flags(sub):
                out.append(prefix + name)
            if isinstance(sub, Parser):
                out += sub.commands_with(flag, f"{prefix}{name} ")
        return out

    def _innermost(self, ns: argparse.Namespace) -> Parser:
        """The (sub)command parser that read the arguments: the one whose flags to suggest."""
        parser = self
        while (commands := parser._commands) is not None:
            chosen = getattr(ns, commands.dest, None)
            if chosen not in commands.choices:
                break
            parser = commands.choices[chosen]
        return parser

    def error(self, message: str):
        print(f"error: {self._suggest(message)} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)

    def _suggest(self, message: str) -> str:
        m = _INVALID_CHOICE.match(message)
        if m is None:
            return message
        value, commands = m["value"], self._commands
        if commands is not None and m["arg"] == (commands.metavar or commands.dest):
            listed = self.listed_commands()
            noun = (commands.metavar or "command").lower()  # "command", "picture"
            guess = did_you_mean(value, listed)
            return f"unknown {noun} {value!r}{guess} ({noun}s: {', '.join(listed)})"
        choices = re.findall(r"'([^']*)'", message[m.end() :])
        return message + did_you_mean(value, choices, quote=True)


def flags(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def unrecognized(extras: list[str], known_flags: list[str], takers: list[str] = ()) -> str:
    """'unrecognized argument: --temprature; did you mean --temperature?', or, for a flag of
    other commands (`takers`), 'unrecognized argument: --seed (a flag of lmgen generate, ...)'."""
    words = " ".join(extras)
    message = f"unrecognized argument{'s' if len(extras) > 1 else ''}: {words}"
    typed = [e.partition("=")[0] for e in extras if e.startswith("-") and len(e) > 1]
    if takers:
        message += f" ({typed[0]} is a flag of lmgen {', '.join(takers)}, not of this command)"
    elif typed:
        message += did_you_mean(typed[0], known_flags)
    return message


def did_you_mean(value: str, candidates: list[str], quote: bool = False) -> str:
    """'; did you mean X?' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(value, candidates, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {close[0]!r}?" if quote else f"; did you mean {close[0]}?"
