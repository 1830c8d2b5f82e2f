"""Error bodies that are small and safe: the field and the rule, never a copy of the input.

FastAPI's default 422 echoes each offending value back. A megabyte prompt then comes back whole,
and a NaN or a lone surrogate cannot be written as JSON at all, so the 422 became a 500. Here each
error keeps only `type`, `loc` and `msg`, every string made ASCII-safe and cut short.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_ERRORS = 8
"""Errors reported per response; a body can break thousands of rules at once."""
MAX_CHARS = 200
"""Longest string in an error body (a `loc` entry can be a key the client chose)."""


def safe_text(text: object, limit: int = MAX_CHARS) -> str:
    """`text` as a short string JSON can always encode (lone surrogates become `\\udXXX` escapes)."""
    out = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic/FastAPI error dicts reduced to `type`, `loc` and `msg`, without `input` or `ctx`."""
    safe = []
    for error in errors[:MAX_ERRORS]:
        msg = safe_text(error.get("msg", ""))
        reason = (error.get("ctx") or {}).get("error")
        if error.get("type") == "json_invalid" and isinstance(reason, str):
            msg = safe_text(f"{msg}: {reason}")
        loc = [item if isinstance(item, int) else safe_text(item, 64) for item in error.get("loc", ())]
        safe.append({"type": safe_text(error.get("type", ""), 64), "loc": loc, "msg": msg})
    return safe


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """The app's 422: FastAPI's shape (`{"detail": [{"loc", "msg", "type"}]}`), minus the input."""
    return JSONResponse({"detail": safe_errors(exc.errors())}, status_code=422)
