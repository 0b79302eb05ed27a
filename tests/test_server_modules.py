"""The server package's layout: errors classified by type, and no module reaching into
another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import lmgen.server
from lmgen.errors import ConfigError, ContextLengthError, GenerationError
from lmgen.server.errors import from_lmgen

SERVER = Path(lmgen.server.__file__).parent


def test_context_errors_are_classified_by_type_not_text():
    e = from_lmgen(ContextLengthError("too long"), "messages")
    assert (e.status, e.code, e.param) == (400, "context_length_exceeded", "messages")
    e = from_lmgen(GenerationError("the context of this step is strange"))
    assert e.status == 400 and e.code is None
    e = from_lmgen(ConfigError("max_new_tokens must be >= 1", "max_new_tokens"))
    assert (e.code, e.param) == ("invalid_value", "max_tokens")
    assert e.message == "max_tokens must be >= 1"


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            if (
                isinstance(base, ast.Name)
                and base.id not in ("self", "cls")
                and not (node.attr.startswith("__") and node.attr.endswith("__"))
            ):
                found.append(f"{base.id}.{node.attr}")
    return found


def test_no_server_module_uses_another_modules_private_names():
    offenders = {
        p.name: names
        for p in sorted(SERVER.glob("*.py"))
        if p.name != "worker.py" and (names := _private_imports(p))
    }
    assert offenders == {}
