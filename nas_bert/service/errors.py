"""The service's 4xx answers: `ApiError`, and the handlers that write it (and FastAPI's own validation
errors) as `{"detail": <one line>, "field": <the field at fault>}`."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A 4xx answer: one line saying what is wrong and how to fix it, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def field_of(message: str) -> str | None:
    """The first `key '...'` a study loader's message names: the field at fault."""
    keys = re.findall(r"key '([^']+)'", message)
    return keys[0] if keys else None


async def api_error(_: Request, e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse({"detail": e.message, "field": e.field}, e.status, headers=headers)


async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in the same one-line shape as `ApiError`'s."""
    parts, fields = [], []
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if p not in ("body", "query", "path")]
        key = ".".join(loc) or "(body)"
        fields.append(key)
        msg = "unknown field (remove it or check its spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        shown = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        parts.append(f"field '{key}': {msg}{shown}")
    return JSONResponse({"detail": "; ".join(parts), "field": fields[0] if fields else None}, 422)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
