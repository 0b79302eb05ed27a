"""Loader probe (issue 16): every case of tests/test_load_hardening.py against `lmgen.load`,
then a short generation for what loads; counts the outcomes.

    .venv/bin/python scripts/probe_loader.py [-v]

A case ends as `refused` (a one-line ModelLoadError), `loaded` (and generated), or
`traceback` (any other exception, at load or at generation): the goal is 0 tracebacks, and
every case in REFUSED refused. The address space is capped while a case runs, so a loader
that tries to allocate what the file does not hold fails fast instead of exhausting memory.
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    import lmgen
    import test_load_hardening as cases
    from lmgen.errors import LmgenError

    verbose = "-v" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="probe-loader-"))
    try:
        base = cases.base_dir.__wrapped__(_Factory(work))
        table = [(n, m, "refuse") for n, (m, _) in cases.REFUSED.items()]
        table += [(n, m, "accept") for n, m in cases.ACCEPTED.items()]
        counts = {"refused": 0, "loaded": 0, "traceback": 0, "wrong outcome": 0}
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        for i, (name, mutate, want) in enumerate(table):
            d = Path(shutil.copytree(base, work / f"case{i}"))
            mutate(d)
            resource.setrlimit(resource.RLIMIT_AS, (cases._vm_size() + (3 << 30), hard))
            try:
                lm = lmgen.load(d)
                lm.generate("To be", max_new_tokens=3)
                outcome, detail = "loaded", ""
            except LmgenError as e:
                outcome, detail = "refused", str(e)
                if "\n" in detail or len(detail) > 400:  # not one clear line
                    outcome = "traceback"
            except BaseException as e:  # noqa: BLE001 - the probe counts exactly these
                if isinstance(e, KeyboardInterrupt):
                    raise
                outcome = "traceback"
                detail = "".join(traceback.format_exception_only(type(e), e)).strip()[:200]
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            counts[outcome] += 1
            wrong = outcome != "traceback" and (outcome == "refused") != (want == "refuse")
            counts["wrong outcome"] += wrong
            if verbose or outcome == "traceback" or wrong:
                print(f"{outcome:9} {'WRONG ' if wrong else ''}{name}: {detail[:160]}")
            shutil.rmtree(d, ignore_errors=True)
        for name in cases.ODD_NAMES:  # model names, not directories: all must be refused
            try:
                lmgen.load(name)
                outcome = "loaded"
            except LmgenError as e:
                outcome = "refused" if "\n" not in str(e) and len(str(e)) <= 400 else "traceback"
            except Exception as e:  # noqa: BLE001 - counted
                outcome, detail = "traceback", f"{type(e).__name__}: {e}"[:200]
                print(f"traceback name {name[:40]!r}: {detail}")
            counts[outcome] += 1
            counts["wrong outcome"] += outcome == "loaded"
        table += [None] * len(cases.ODD_NAMES)
        print(
            f"{len(table)} cases: {counts['refused']} refused, {counts['loaded']} loaded, "
            f"{counts['traceback']} tracebacks, {counts['wrong outcome']} wrong outcomes"
        )
        return 1 if counts["traceback"] or counts["wrong outcome"] else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Factory:
    """Enough of pytest's tmp_path_factory for the fixture."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=name, dir=self.root))
        return path


if __name__ == "__main__":
    sys.exit(main())
