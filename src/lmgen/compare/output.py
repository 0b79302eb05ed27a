"""`--out DIR`: the numbers (compare.json) and the texts themselves (samples/*.jsonl).

The folder is written under a temporary name beside DIR and renamed into place at the end,
so an interrupted run leaves no folder that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from lmgen.atomic_dir import swap_in
from lmgen.errors import ConfigError

RESULT = "compare.json"
SAMPLES = "samples"


def check_out(out: str | Path, force: bool = False) -> Path:
    """Refuses, before any work, a DIR that cannot be written, or one that already holds
    something (an earlier comparison is replaced only with `force`)."""
    from lmgen.training.data import check_writable

    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / RESULT).is_file():
            raise ConfigError(f"{out}: exists and is not a compare folder; choose another --out")
        if not force:
            raise ConfigError(
                f"{out}: already holds a comparison; pass --force to replace it, or choose "
                "another --out"
            )
    check_writable(out, beside=True)
    return out


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "row"


def write_json(path: Path, data: dict) -> None:
    """`data` as JSON at `path`, through a temporary file renamed into place."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_outputs(result, out: str | Path, force: bool = False) -> Path:
    out = check_out(out, force)
    data = result.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / SAMPLES).mkdir()
        for k, row in enumerate(result.rows):
            lines = []
            for s in row.samples:
                p = result.passages[s.passage]
                lines.append(
                    json.dumps(
                        {
                            "passage": s.passage,
                            "source": p.source,
                            "prompt": p.prompt,
                            "prompt_token_ids": p.prompt_ids,
                            "continuation": s.text,
                            "token_ids": s.token_ids,
                            "finish_reason": s.finish_reason,
                            "nll": [round(float(x), 5) for x in s.nll]
                            if s.nll is not None
                            else None,
                        },
                        ensure_ascii=False,
                    )
                )
            name = f"{k:02d}-{slug(row.name)}.jsonl"
            (tmp / SAMPLES / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        write_json(tmp / RESULT, data)
        swap_in(tmp, out, lambda: check_out(out, force))  # it may have changed meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
