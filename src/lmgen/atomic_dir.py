"""Putting a finished directory in place so that an interruption never leaves a half-written
one where the complete one should be."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def swap_in(tmp: Path, out: Path, recheck: Callable[[], None] | None = None) -> None:
    """Renames the complete directory `tmp` to `out`. An existing `out` is first moved aside
    (after `recheck()`, which may refuse: it may have changed while `tmp` was written), so a
    failed rename puts it back and loses nothing; the old one is deleted last."""
    if not os.path.lexists(out):
        os.replace(tmp, out)
        return
    if recheck is not None:
        recheck()
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
