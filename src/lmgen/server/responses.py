"""JSON as the API writes it: no NaN or infinity (they become null), UTF-8 as is."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.responses import JSONResponse


def finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: such floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps(payload: Any) -> str:
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(finite(payload), ensure_ascii=False, allow_nan=False)


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def sse_event(payload: Any) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {dumps(payload)}\n\n"
