"""A study database that cannot be used, as one line: damaged (SQLite's corrupt or not-a-database file), or
unreachable; and the file behind a SQLite URL."""

from __future__ import annotations

from sqlalchemy.exc import DatabaseError, IntegrityError

from nas_bert.errors import NasBertError


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (None: in memory, or not SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return path if path and path != ":memory:" else None


def describe_url(url: str) -> str:
    f = sqlite_file(url)
    return f"study database {f}" if f else f"database '{url}'"


# SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB
_CORRUPT_CODES = (11, 26)


def is_corrupt(e: BaseException) -> bool:
    """Whether a SQLAlchemy error says the database file is damaged or not a database at all."""
    if isinstance(e, IntegrityError) or not isinstance(e, DatabaseError):
        return False
    code = getattr(e.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(e.orig).lower()
    return "not a database" in text or "malformed" in text


def database_error(url: str, e: DatabaseError) -> NasBertError:
    """The one-line error for a database that cannot be used: damaged, or unreachable."""
    if is_corrupt(e):
        f = sqlite_file(url)
        if f:
            return NasBertError(f"study database {f} is not a SQLite database or is corrupt; "
                                "restore it from a backup or move it away to start afresh")
        return NasBertError(f"database '{url}' reports damaged data; restore it from a backup")
    reason = " ".join(str(e.orig).split())  # drivers' messages span lines; ours is one
    if sqlite_file(url):
        return NasBertError(f"study database {sqlite_file(url)} cannot be opened ({reason}); "
                            "check the path and its permissions")
    return NasBertError(f"database '{url}' is unreachable ({reason}); check the URL and that the server runs")
