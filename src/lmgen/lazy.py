"""A package's public names loaded on first use (PEP 562), so that importing the package, or
one light module of it, does not import torch. `lmgen --help` starts in a fraction of a second
this way, and Ctrl-C during start-up reaches the CLI's handler."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_names(
    package: str, where: dict[str, list[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, whose names live in the modules
    `where` maps them from (`{".runner": ["compare", ...]}`, relative to the package). A name
    is imported on first use and kept in the package."""
    module_of = {name: module for module, names in where.items() for name in names}
    public = sorted(module_of)

    def __getattr__(name: str) -> object:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        vars(importlib.import_module(package))[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *public})

    return __getattr__, __dir__, public
