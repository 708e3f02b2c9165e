"""The service's token and who may do what with it.

A request that changes anything needs `Authorization: Bearer <token>`; reads are open to clients on
this machine (loopback) that address it by a loopback name, and need the token (the header, or the
`nas_bert_token` cookie the page sets) from anywhere else. The Host rule stops DNS rebinding: a page of
another site whose name is made to resolve to 127.0.0.1 reaches the service from this machine, but
sends its own name as Host, so it reads nothing without the token.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import Request

from nas_bert.errors import NasBertError
from nas_bert.service.errors import ApiError

TOKEN_COOKIE = "nas_bert_token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str | None) -> str:
    """The name in a Host header, without its port and IPv6 brackets, lower-case ("[::1]:8000" -> "::1")."""
    value = (host_header or "").strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_local_request(client: str | None, host_header: str | None) -> bool:
    """A client on this machine that addresses the service by a loopback name (see the module's docstring)."""
    name = host_name(host_header)
    return is_loopback(client) and (name in LOOPBACK_NAMES or is_loopback(name))


def default_token_file() -> Path:
    """Outside any repository, so the secret is never committed by accident."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "nas-bert" / "token"


def read_token(token_file: str | Path | None = None) -> tuple[str, str]:
    """The service token and where it came from: $NAS_BERT_TOKEN, else `token_file`, else the default token
    file (created, mode 600, with a random token when it does not exist)."""
    env = os.environ.get("NAS_BERT_TOKEN", "").strip()
    if env:
        return env, "$NAS_BERT_TOKEN"
    path = Path(token_file) if token_file else default_token_file()
    if not path.is_file():
        if token_file:
            raise NasBertError(f"token file {path} not found; create it with one secret line, or set NAS_BERT_TOKEN")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    token = path.read_text().strip()
    if not token:
        raise NasBertError(f"token file {path} is empty; write one secret line into it")
    return token, str(path)


READS = ("GET", "HEAD", "OPTIONS")


class Auth:
    """The one check for all requests: reads (GET) open on loopback, else the token; writes always the bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _bearer(self, headers: Any) -> str | None:
        value = headers.get("authorization") or ""
        return value[7:].strip() if value[:7].lower() == "bearer " else None

    def _ok(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    def check(self, method: str, client: str | None, headers: Any, cookies: dict[str, str]) -> None:
        bearer = self._bearer(headers)
        if method in READS:
            if is_local_request(client, headers.get("host")) or self._ok(bearer) or self._ok(cookies.get(TOKEN_COOKIE)):
                return
            raise ApiError(401, "reading from another machine needs the service token: send "
                                "`Authorization: Bearer <token>` (the token: $NAS_BERT_TOKEN or the token file)")
        if bearer is None:
            raise ApiError(401, "this request changes something and needs the service token: send "
                                "`Authorization: Bearer <token>` (the token: $NAS_BERT_TOKEN or the token file)")
        if not self._ok(bearer):
            raise ApiError(403, "the bearer token is not the service's; use the value of $NAS_BERT_TOKEN or "
                                "of the token file `nas-bert serve` printed")

    def __call__(self, request: Request) -> None:
        self.check(request.method, request.client.host if request.client else None, request.headers,
                   request.cookies)
