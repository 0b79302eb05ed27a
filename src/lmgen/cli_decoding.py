"""The decoding flags of every command, derived from `lmgen.settings`.

`add_decoding_arguments(parser)` adds one flag per declared setting (`--top-p`, `--dry-base`,
...), its help giving the setting's range and default; `decoding_config(args)` turns the flags
given into a validated GenerationConfig and prints its warnings. `generate`, `next`, `plot
generation` and any later command (`chat`) call these two, so a setting added to
lmgen/settings.py is on every command line at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli_args import (
    dola_layers_arg,
    early_stopping_arg,
    escaped_text,
    finite_float,
    non_empty,
    sampler_list,
    sequence_bias_arg,
    text_file,
    token_bias,
)
from .errors import ConfigError
from .settings import BY_NAME, GROUPS, SETTINGS, Setting

ALL_GROUPS = tuple(GROUPS)
STRATEGY_RULE = (
    "default: inferred: beam when --num-beams > 1; contrastive when --penalty-alpha > 0; "
    "sample when any of --temperature (other than 0), --top-k, --top-p, --min-p, --typical-p "
    "or --seed is given; else greedy"
)
# how the command line reads a value of each kind (a setting's `cli` overrides its kind)
_TYPES = {
    "int": int,
    "choice": int,  # a choice of numbers (strings are argparse choices)
    "float": finite_float,
    "text": non_empty,
    "texts": non_empty,
    "token_bias": token_bias,
    "early_stopping": early_stopping_arg,
    "file": text_file,
    "escaped": escaped_text,
    "bias_pairs": sequence_bias_arg,
    "sampler_order": sampler_list,
    "dola": dola_layers_arg,
}
_REPEATABLE = ("texts", "token_bias", "bias_pairs")  # given once per item


def typed_value(name: str, text: str) -> Any:
    """`text` as a value of setting `name`, for `lmgen chat`'s `/settings NAME=VALUE`: JSON
    where it parses (0.9, true, ["a b", "c"], {"50": -5}), else what the setting's flag makes
    of it (`stop=\\n` is ["\\n"]); one string for a setting given once per item is a list of
    one. An unknown name is left to GenerationConfig, which names it."""
    s = BY_NAME.get(name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if s is None or s.flag_name is None or s.kind == "bool":
            return text
        if s.kind == "choice" and all(isinstance(c, str) for c in s.choices):
            return text
        try:
            value = _TYPES[s.cli or s.kind](text)
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise ConfigError(f"{name}: {e}", name) from None
    if s is not None and s.kind in _REPEATABLE and not isinstance(value, list | dict):
        value = [value]
        return dict(value) if s.kind == "token_bias" else value  # as config_kwargs makes it
    if s is not None and s.kind == "token_bias" and isinstance(value, dict):  # JSON's keys
        return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()}
    return value


def flag_help(s: Setting, default: Any = None) -> str:
    """The setting's help with its range and default, as `--help` shows it."""
    allowed = s.allowed()
    shown = s.default_text() if default is None else str(default)
    return f"{s.help}{'; ' + allowed if allowed else ''} (default {shown})"


def add_decoding_arguments(
    p: argparse.ArgumentParser,
    groups: tuple[str, ...] = ALL_GROUPS,
    *,
    strategy_help: str = STRATEGY_RULE,
    flags: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
    shown_defaults: dict[str, Any] | None = None,
    argument_groups: dict[str, Any] | None = None,
) -> None:
    """One flag per declared setting of `groups` (see lmgen.settings.GROUPS), or only the
    `flags` named. `defaults` ({"--flag": value}) changes a default for this command;
    `shown_defaults` only the default its help shows, where the command applies its own when
    the flag is not given; `argument_groups` puts a group's flags into one the command made
    itself (its "output")."""
    defaults = defaults or {}
    shown = {**defaults, **(shown_defaults or {})}
    made = dict(argument_groups or {})
    chosen = [
        s
        for s in SETTINGS
        if s.flag_name is not None
        and (s.group in groups if flags is None else s.flag_name in flags)
    ]
    for s in sorted(chosen, key=lambda s: list(GROUPS).index(s.group)):  # stable: as declared
        if s.group not in made:
            made[s.group] = p.add_argument_group(GROUPS[s.group])
        g = made[s.group]
        names = [s.flag_name, *([s.short] if s.short else [])]
        kw: dict[str, Any] = {"dest": s.name, "help": flag_help(s, shown.get(s.flag_name))}
        if s.name == "strategy":
            kw["help"] = f"{s.help.split(';')[0]} ({strategy_help})"
        if s.kind == "bool":
            g.add_argument(*names, action="store_true", default=None, **kw)
            continue
        if s.kind == "choice" and all(isinstance(c, str) for c in s.choices):
            kw["choices"] = s.choices
        else:
            kw["type"] = _TYPES[s.cli or s.kind]
            kw["metavar"] = s.metavar or None
        if s.kind in _REPEATABLE:
            kw["action"] = "append"
        if s.flag_name in defaults:
            kw["default"] = defaults[s.flag_name]
        g.add_argument(*names, **kw)
        if s.kind == "json":  # OpenAI's JSON mode: any JSON object
            g.add_argument(
                "--json-object",
                dest=s.name,
                action="store_const",
                const='{"type": "object"}',
                help="the generated text is a JSON object (OpenAI's JSON mode)",
            )


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user gave: the API's defaults and its strategy rule
    (`GenerationConfig.from_kwargs`) stay the single source of truth."""
    kw = {}
    for s in SETTINGS:
        value = getattr(args, s.name, None)
        if s.flag_name is not None and value is not None:
            kw[s.name] = dict(value) if s.kind == "token_bias" else value
    return kw


def decoding_config(args: argparse.Namespace, **defaults: Any):
    """The validated GenerationConfig of the flags given (`defaults` for the ones not given);
    its warnings printed as `warning: ...`."""
    from .generation_config import GenerationConfig

    config = GenerationConfig.from_kwargs(**{**defaults, **config_kwargs(args)})
    for w in config.validate():
        print(f"warning: {w}", file=sys.stderr)
    return config
