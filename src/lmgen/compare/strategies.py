"""Decoding strategies to compare: the defaults (Holtzman et al.'s Table 1 rows lmgen can run,
plus min-p and typical-p), and parsing them from `--strategy "name: key=value ..."` options
or a TOML/JSON file of `name -> {key: value}` tables.

Every strategy is validated as a `GenerationConfig` before anything runs, so a bad one
fails at once with its name in the message.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmgen.cli_args import sampler_list
from lmgen.errors import ConfigError
from lmgen.generation_config import GenerationConfig

# Set once for the whole run (--max-new-tokens, --samples, --seed), not per strategy.
RUN_LEVEL = {
    "max_new_tokens": "--max-new-tokens (max_new_tokens=)",
    "num_return_sequences": "--samples (samples=)",
    "seed": "--seed (seed=)",
    "logprobs": "nothing: compare scores every token itself",
    "context_overflow": "nothing: prompts must fit the context",
}


@dataclass(frozen=True)
class Strategy:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def config(self, max_new_tokens: int, samples: int = 1) -> GenerationConfig:
        """The validated config this strategy runs with (deterministic ones make one text per
        prompt whatever `samples` says: more would be copies)."""
        try:
            base = GenerationConfig.from_kwargs(max_new_tokens=max_new_tokens, **self.options)
            if base.effective_strategy() == "sample" and samples > 1:
                base = base.replace(num_return_sequences=samples)
        except ConfigError as e:
            raise ConfigError(f"strategy {self.name!r}: {e}", e.param) from None
        except TypeError as e:  # a value of the wrong shape for the dataclass
            raise ConfigError(f"strategy {self.name!r}: {e}") from None
        return base

    def warnings(self, max_new_tokens: int, samples: int = 1) -> list[str]:
        """GenerationConfig's warnings for this strategy's settings (a sampler setting on a
        strategy that does not sample, ...), the ones `lmgen generate` prints for the same
        flags: a row that silently ran as something else would read as that setting's numbers."""
        config = self.config(max_new_tokens, samples)
        return [f"strategy {self.name!r}: {w}" for w in config.validate()]

    def describe(self) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.options.items())


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_value(text: str) -> Any:
    """`40` -> 40, `0.9` -> 0.9, `true` -> True, `["\\n"]` -> a list, `never` -> "never"."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_options(body: str, spec: str | None = None) -> dict[str, Any]:
    """`key=value key=value` as GenerationConfig keywords (`top-k` read as `top_k`)."""
    options: dict[str, Any] = {}
    for word in body.split():
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ConfigError(f"--strategy {spec or body!r}: expected key=value, got {word!r}")
        key = key.replace("-", "_")
        options[key] = parse_value(value)
        if key == "samplers" and isinstance(options[key], str):
            # the order as on the command line, `samplers=top_k;temperature` (or a JSON list)
            try:
                options[key] = sampler_list(value)
            except argparse.ArgumentTypeError as e:
                where = f"--strategy {spec or body!r}"
                raise ConfigError(f"{where}: samplers: {e}", "samplers") from None
    return options


# The paper's rows lmgen can run (stochastic beam search it cannot), with the paper's
# parameters; min-p, typical-p and the rows after them are not in the paper. Top-H's 0.4 is
# the value of transformers' example; adaptive-p's decay is llama.cpp's default (0.9).
DEFAULT_STRATEGIES: tuple[Strategy, ...] = (
    Strategy("greedy", {"strategy": "greedy"}),
    Strategy("beam, b=16", {"strategy": "beam", "num_beams": 16}),
    Strategy("pure sampling", {"strategy": "sample"}),
    Strategy("sampling, t=0.9", {"strategy": "sample", "temperature": 0.9}),
    Strategy("top-k=40", {"strategy": "sample", "top_k": 40}),
    Strategy("top-k=640", {"strategy": "sample", "top_k": 640}),
    Strategy("top-k=40, t=0.7", {"strategy": "sample", "top_k": 40, "temperature": 0.7}),
    Strategy("nucleus, p=0.95", {"strategy": "sample", "top_p": 0.95}),
    # min-p, typical-p and issue 29's samplers, written as on the command line (`lmgen compare -s`);
    # a row at t=2 for each where its paper makes its claim
    *(
        Strategy(name, parse_options(options))
        for name, options in (
            ("min-p=0.1", "strategy=sample min-p=0.1"),
            ("typical, p=0.95", "strategy=sample typical-p=0.95"),
            ("top-H=0.4", "strategy=sample top-h=0.4"),
            ("top-H=0.4, t=2", "strategy=sample top-h=0.4 temperature=2.0"),
            ("min-p=0.1, t=2", "strategy=sample min-p=0.1 temperature=2.0"),
            ("p-less", "strategy=sample p-less=true"),
            ("p-less, t=2", "strategy=sample p-less=true temperature=2.0"),
            ("p-less-norm", "strategy=sample p-less-norm=true"),
            ("adaptive-p=0.3", "strategy=sample adaptive-target=0.3"),
            ("adaptive-p=0.3, min-p=0.05", "strategy=sample adaptive-target=0.3 min-p=0.05"),
        )
    ),
)

HUMAN = "human"


def parse_strategy(spec: str) -> Strategy:
    """`"name: key=value key=value"`; without `name:` the options themselves are the name;
    a default strategy's name alone is that strategy. Keys are GenerationConfig fields
    (`top-k` is read as `top_k`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--strategy: give 'name: key=value ...', got an empty string")
    for default in DEFAULT_STRATEGIES:  # a default's name alone picks it: "greedy"
        if spec.strip() == default.name:
            return default
    name, sep, body = spec.partition(":")
    if not sep:
        name, body = spec.strip(), spec
    name = name.strip()
    options = parse_options(body, spec)
    if not name:
        raise ConfigError(f"--strategy {spec!r}: the name before ':' is empty")
    return Strategy(name, options)


def load_strategies_file(path: str | Path) -> list[Strategy]:
    """A TOML (.toml) or JSON file: a table per strategy, `name -> {key: value}`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--strategies {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            table = tomllib.loads(data.decode("utf-8"))
        elif path.suffix.lower() == ".json":
            table = json.loads(data.decode("utf-8"))
        else:
            raise ConfigError(f"--strategies {path}: name it .toml or .json")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--strategies {path}: not UTF-8 (byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(f"--strategies {path}: {e}") from None
    if not isinstance(table, Mapping):
        raise ConfigError(f"--strategies {path}: expected a table of strategies")
    out = []
    for name, options in table.items():
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"--strategies {path}: {name!r} must be a table of options, got {options!r}"
            )
        out.append(Strategy(str(name), {k.replace("-", "_"): v for k, v in options.items()}))
    if not out:
        raise ConfigError(f"--strategies {path}: holds no strategies")
    return out


def check_strategies(strategies: Iterable[Strategy], max_new_tokens: int, samples: int) -> None:
    """Every strategy valid, names unique and not `human`; raises ConfigError on the first
    problem, before any text is generated."""
    seen: set[str] = set()
    count = 0
    for s in strategies:
        count += 1
        if not isinstance(s, Strategy):
            raise ConfigError(f"strategies must be Strategy objects, got {type(s).__name__}")
        if s.name in seen:
            raise ConfigError(f"two strategies are named {s.name!r}; names must be unique")
        if s.name == HUMAN:
            raise ConfigError(f"{HUMAN!r} is the human text's row; name the strategy otherwise")
        seen.add(s.name)
        for key in s.options:
            if key in RUN_LEVEL:
                raise ConfigError(
                    f"strategy {s.name!r}: {key} is set for the whole run, by {RUN_LEVEL[key]}"
                )
        s.config(max_new_tokens, samples)
    if not count:
        raise ConfigError("no strategies to compare")


def as_strategies(strategies) -> list[Strategy]:
    """None -> the defaults; strings are parsed; a mapping is `name -> options`."""
    if strategies is None:
        return list(DEFAULT_STRATEGIES)
    if isinstance(strategies, Mapping):
        bad = [k for k, v in strategies.items() if not isinstance(v, Mapping)]
        if bad:
            raise ConfigError(f"strategy {bad[0]!r}: its options must be a mapping")
        return [Strategy(str(k), dict(v)) for k, v in strategies.items()]
    if isinstance(strategies, str):
        strategies = [strategies]
    return [parse_strategy(s) if isinstance(s, str) else s for s in strategies]
