"""The package's import graph: no module imports another module's private (`_`) name, and no
module imports, directly or through others, itself (lazy imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import lmgen

ROOT = Path(lmgen.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement in the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [a.name for a in node.names]
            # `from pkg import module` imports the module
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in mods]
            out += [(s, []) for s in subs]
            rest = [n for n in names if f"{base}.{n}" not in mods]
            if rest:
                out.append((base, rest))
    return [(m, n) for m, n in out if m == "lmgen" or m.startswith("lmgen.")]


def test_no_module_imports_a_private_name_of_another():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        for target, names in _imports(name, path, mods):
            if target == name:
                continue
            bad += [f"{name} imports {target}.{n}" for n in names if _private(n)]
            if any(part.startswith("_") and part != "__init__" for part in target.split(".")):
                bad.append(f"{name} imports private module {target}")
    assert bad == []


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_import_cycles():
    mods = _modules()
    graph = {
        name: {t for t, _ in _imports(name, path, mods) if t in mods and t != name}
        for name, path in mods.items()
    }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt in stack or state.get(nxt) == 1:
                if nxt in stack:
                    cycles.append(stack[stack.index(nxt) :] + [nxt])
                continue
            if state.get(nxt) != 2:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if state.get(name) != 2:
            visit(name, [name])
    assert cycles == []
