"""One exception type for every user-facing problem, and one-line formatting of pydantic errors."""

from __future__ import annotations

from pydantic import ValidationError


class NasBertError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits with status 2."""


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's multi-line report into one line naming the key, the problem and the value."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (remove it or check its spelling)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        value = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"key '{key}': {msg}{shown}")
    return f"{source}: " + "; ".join(parts)
