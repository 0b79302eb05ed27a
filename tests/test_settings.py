"""One declaration per setting (lmgen.settings).

docs/settings.md is the generated table and fails here when stale; the command line's --help,
the server's OpenAPI document and that table agree on every setting's range and default (the
OpenAPI numbers are read back from JSON Schema, the table's from its words); an out-of-range
value gets the same one-line message from Python, the command line and HTTP; and a sampler's
name stays in its declaration, its processor and at most one mapping.
"""

from __future__ import annotations

import argparse
import ast
import math
import re
from pathlib import Path

import httpx
import pytest

import lmgen
from lmgen.cli import build_parser, main
from lmgen.errors import ConfigError
from lmgen.generation_config import GenerationConfig
from lmgen.server import create_app, serve_in_thread
from lmgen.settings import BY_NAME, SETTINGS, markdown

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "lmgen"
DOCS = ROOT / "docs" / "settings.md"


def test_docs_settings_md_is_generated_from_the_declarations():
    assert DOCS.read_text(encoding="utf-8") == markdown(), (
        "docs/settings.md is stale: run `python -m lmgen.settings > docs/settings.md`"
    )


# -- reading a range back: from the table's words, and from JSON Schema ------------------------

NUMBER = r"-?[0-9.e+-]+|2\*\*[0-9]+"


def _n(text: str) -> float:
    return 2.0 ** int(text[3:]) if text.startswith("2**") else float(text)


def range_of_words(text: str) -> tuple:
    """(low, low_open, high, high_open, integer, also) from "in (0, 1]", "an int >= 1", ..."""
    also: tuple = ()
    m = re.fullmatch(r"(\S+) \([a-z]+\) or (.*)", text)
    if m and not text.startswith("'"):
        also, text = (_n(m.group(1)),), m.group(2)
    if m := re.fullmatch(rf"an int >= ({NUMBER})", text):
        return (_n(m[1]), False, None, False, True, also)
    if m := re.fullmatch(rf"an int in \[({NUMBER}), ({NUMBER})([\])])", text):
        return (_n(m[1]), False, _n(m[2]), m[3] == ")", True, also)
    if m := re.fullmatch(rf"finite and (>=?) ({NUMBER})", text):
        return (_n(m[2]), m[1] == ">", None, False, False, also)
    if m := re.fullmatch(rf"a finite number >= ({NUMBER}) and <= ({NUMBER})", text):
        return (_n(m[1]), False, _n(m[2]), False, False, also)
    if m := re.fullmatch(rf"in ([\[(])({NUMBER}), ({NUMBER})([\])])", text):
        return (_n(m[2]), m[1] == "(", _n(m[3]), m[4] == ")", False, also)
    raise AssertionError(f"not a range in words: {text!r}")


def range_of_schema(schema: dict) -> tuple:
    also: tuple = ()
    if "anyOf" in schema:
        consts = [s for s in schema["anyOf"] if "const" in s]
        also = tuple(float(s["const"]) for s in consts)
        (schema,) = [s for s in schema["anyOf"] if "const" not in s]

    def bound(closed: str, open_: str):
        if closed in schema:
            return float(schema[closed]), False
        if open_ in schema:
            return float(schema[open_]), True
        return None, False

    low, low_open = bound("minimum", "exclusiveMinimum")
    high, high_open = bound("maximum", "exclusiveMaximum")
    return (low, low_open, high, high_open, schema.get("type") == "integer", also)


def choices_of_words(text: str) -> list:
    words = re.split(r", | or ", text)
    return [w.split(" (")[0].strip("'") for w in words]


def table() -> dict[str, dict[str, str]]:
    """docs/settings.md's rows by setting name."""
    rows, header = {}, None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells[0] == "setting":
            header = cells
            continue
        if header and not cells[0].startswith("-"):
            rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return rows


def _value_of_words(text: str):
    text = text.split(" = ")[0]
    if text == "none":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


@pytest.fixture(scope="module")
def rows():
    rows = table()
    assert set(rows) == {s.name for s in SETTINGS}
    return rows


@pytest.fixture(scope="module")
def openapi():
    from lmgen.server import schemas

    return {
        "api": schemas.ChatRequest.model_json_schema()[
            "properties"
        ],  # completions: max_tokens 0 too
        "own": schemas.NextRequest.model_json_schema()["properties"],
    }


def _field(spec: dict) -> dict:
    return next((s for s in spec.get("anyOf", [spec]) if s.get("type") != "null"), spec)


def test_openapi_and_the_table_agree(rows, openapi):
    checked = 0
    for name, row in rows.items():
        api_name = row["HTTP name"].strip("`")
        if api_name == "–" or api_name not in openapi["api"]:
            continue
        spec = _field(openapi["api"][api_name])
        if "enum" in spec:
            assert [str(c) for c in spec["enum"]] == choices_of_words(row["range"]), name
        elif row["HTTP range"] != "–":
            assert range_of_schema(spec) == range_of_words(row["HTTP range"]), name
            # the server's range lies within the library's
            lo, lo_open, hi, hi_open, integer, _ = range_of_words(row["range"])
            assert range_of_schema(spec)[0] == lo and range_of_schema(spec)[4] == integer, name
        if "default" in spec:
            assert spec["default"] == _value_of_words(row["default"]), name
        else:  # no default in the document: none, or one the endpoint picks
            assert row["default"] == "none" or BY_NAME[name].serve_default is None, name
        checked += 1
    assert checked >= 40


def test_the_next_endpoint_has_the_chain_by_its_own_names(rows, openapi):
    chain = {s.name for s in SETTINGS if s.chain}
    assert chain <= set(openapi["own"])
    for name in chain:
        if rows[name]["range"] != "–" and "enum" not in _field(openapi["own"][name]):
            got = range_of_schema(_field(openapi["own"][name]))
            assert got == range_of_words(rows[name]["HTTP range"]), name


def _actions(*command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    for name in command:
        parser = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[name]
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_cli_help_and_the_table_agree(rows):
    actions = _actions("generate")
    checked = 0
    for name, row in rows.items():
        if row["flag"] == "–" or name == "strategy":  # its help gives the inference rule
            continue
        flag = row["flag"].strip("`").split(",")[0]
        action = actions[flag]
        assert action.dest == name
        help_text = " ".join(action.help.split())
        assert help_text.endswith(f"(default {row['default']})"), (flag, help_text)
        if row["range"] != "–":
            assert help_text.endswith(f"; {row['range']} (default {row['default']})"), flag
        checked += 1
    assert checked >= 45


def test_flags_are_the_same_on_every_command_that_takes_them():
    generate = _actions("generate")
    for command in (("next",), ("plot", "generation"), ("chat",)):
        try:
            other = _actions(*command)
        except StopIteration:  # a command not in this build
            continue
        except KeyError:
            continue
        for flag, action in other.items():
            if flag in generate and action.dest in BY_NAME and flag != "--max-new-tokens":
                assert action.help == generate[flag].help or action.dest == "strategy", flag


# -- one message from Python, the command line and HTTP ------------------------------------------

OUT_OF_RANGE = [
    ("top_p", 1.5),
    ("min_p", 2.0),
    ("typical_p", 0.0),
    ("epsilon_cutoff", 1.0),
    ("top_n_sigma", -1.0),
    ("xtc_threshold", 0.9),
    ("dry_multiplier", -0.5),
    ("dry_base", 0.5),
    ("dry_penalty_last_n", -3),
    ("repetition_penalty", 0.0),
    ("presence_penalty", 3.0),
    ("temperature", 1e-05),
    ("top_k", -1),
    ("mirostat", 1),
    ("mirostat_tau", 0.0),
    ("early_stopping", "sometimes"),  # true, false or "never": a union on the wire
]


def python_message(name, value) -> str:
    with pytest.raises(ConfigError) as e:
        GenerationConfig.from_kwargs(**{name: value})
    assert e.value.param == name
    return str(e.value)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serve_in_thread(create_app({"tiny": lmgen.load(tiny_model_dir)})) as url:
        yield url


@pytest.mark.parametrize("name, value", OUT_OF_RANGE)
def test_one_message_from_python_cli_and_http(name, value, server, capsys):
    message = python_message(name, value)
    assert message.startswith(f"{name} must be ") and message.endswith(f", got {value!r}")
    assert "\n" not in message

    flag = BY_NAME[name].flag_name
    assert main(["generate", "hello", flag, str(value)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"

    for path, body in (
        ("/v1/completions", {"prompt": "hello"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
        ("/v1/lmgen/next", {"prompt": "hello"}),
    ):
        if path == "/v1/lmgen/next" and not BY_NAME[name].chain:
            continue
        r = httpx.post(server + path, json={**body, name: value}, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["message"], err["param"], err["code"]) == (message, name, "invalid_value")


def test_the_server_caps_are_its_own_and_say_so(server):
    chat = {"messages": [{"role": "user", "content": "x"}]}
    for path, body, low in (
        ("/v1/completions", {"prompt": "x"}, 0),
        ("/v1/chat/completions", chat, 1),
    ):
        r = httpx.post(server + path, json={**body, "max_tokens": 5000})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "max_tokens"
        assert err["message"] == f"max_tokens must be an int in [{low}, 2048], got 5000"
    assert GenerationConfig.from_kwargs(max_new_tokens=5000).max_new_tokens == 5000


# -- each name said once ------------------------------------------------------------------------

# Named more widely, deliberately: the classic knobs (pictures and presets show them), the
# structured-output kinds (common words: regex, choice, grammar), OpenAI's logit_bias (its
# token ids are checked where a request enters) and min_tokens_to_keep (a parameter of every
# filter, as in transformers). The rule is about the samplers and penalties.
CLASSIC = {"temperature", "top_k", "top_p", "regex", "json_schema", "choice", "grammar"}
CLASSIC |= {"logit_bias", "min_tokens_to_keep"}


def _python_sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in SRC.rglob("*.py")}


def test_a_sampler_name_is_in_at_most_three_source_files():
    sources = _python_sources()
    too_many = {}
    for s in SETTINGS:
        if not s.processor or s.name in CLASSIC:
            continue
        files = [
            p.relative_to(SRC) for p, text in sources.items() if re.search(rf"\b{s.name}\b", text)
        ]
        if len(files) > 3:
            too_many[s.name] = [str(f) for f in files]
    assert too_many == {}


def _imported_modules(path: Path) -> set[str]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


def test_no_module_imports_the_compatibility_shims():
    """lmgen.generation and lmgen.processors stay for users; the package uses the modules
    they re-export."""
    users = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.name != "__init__.py"
        and _imported_modules(p) & {"lmgen.generation", "lmgen.processors"}
    ]
    assert users == []


def test_numbers_are_checked_once_everywhere():
    """A range is finite: nan and inf are refused by every numeric setting."""
    for s in SETTINGS:
        if s.range is None:
            continue
        for bad in (math.nan, math.inf, True):
            with pytest.raises(ConfigError, match=f"^{s.name} must be"):
                GenerationConfig.from_kwargs(**{s.name: bad})


def test_the_cli_prints_a_config_warning_once(tiny_model_dir, capsys, caplog):
    """The CLI prints the config's warnings itself and silences the library's log of them
    (it silenced a logger that no longer logged them, and each warning came out twice)."""
    import logging

    caplog.set_level(logging.WARNING)
    logger = logging.getLogger("lmgen.generation_config")
    try:
        flags = ["--strategy", "greedy", "--top-k", "5", "--max-new-tokens", "2"]
        assert main(["generate", "hello", "-m", str(tiny_model_dir), *flags]) == 0
    finally:
        logger.setLevel(logging.NOTSET)
    assert capsys.readouterr().err.count("warning: top_k=5 has no effect") == 1
    assert [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()] == []
