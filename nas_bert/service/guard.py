"""What every request meets before the app reads it: the Host it names, a write's token, its body's size.

- Host: only the names the service answers to (`--allowed-hosts`; by default this machine's loopback
  names and the `--host` it listens on). A request naming another host is a 400 (DNS rebinding).
- A write's bearer token is checked before its body is read: an unauthenticated upload costs nothing.
- A body over `max_body` bytes is a 413 before the app sees a byte of it: by its Content-Length when
  given, else counted as it arrives (a chunked upload is read up to the limit, then refused).

Starlette's TrustedHostMiddleware is not used: it cuts the Host header at its first ':', which turns
every IPv6 address into '['.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from nas_bert.service.auth import READS, Auth, host_name
from nas_bert.service.errors import ApiError

DEFAULT_MAX_BODY = 1 << 20  # a study file is a few kB: 1 MiB leaves room and bounds what a client can make us hold


def allowed_hosts(host: str, extra: list[str] | None = None) -> frozenset[str] | None:
    """The names a service listening on `host` answers to; None (any) when it listens on every address and
    no names are given (then reads still need a loopback name or the token: see `auth`)."""
    names = {host_name(h) for h in extra or [] if h.strip()}
    if "*" in names:
        return None
    if host in ("0.0.0.0", "::", ""):
        return frozenset(names | {"localhost", "127.0.0.1", "::1"}) if names else None
    return frozenset(names | {"localhost", "127.0.0.1", "::1", host_name(host)})


class Guard:
    """ASGI middleware: the three checks of the module's docstring, in that order."""

    def __init__(self, app: Any, auth: Auth, hosts: frozenset[str] | None = None,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app, self.auth, self.hosts, self.max_body = app, auth, hosts, max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            self._check(scope, headers)
        except ApiError as e:
            return await _answer(e, scope, receive, send)
        if scope["method"] in READS and "content-length" not in headers and "transfer-encoding" not in headers:
            return await self.app(scope, receive, send)
        if "content-length" not in headers:  # chunked: read it here up to the limit, then hand it on
            body, more = [], True
            size = 0
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    return await _answer(_too_large(self.max_body), scope, receive, send)
                body.append(chunk)
                more = message.get("more_body", False)
            replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

            async def receive_again() -> Any:
                return replay.pop() if replay else await receive()

            return await self.app(scope, receive_again, send)
        return await self.app(scope, receive, send)

    def _check(self, scope: Any, headers: Headers) -> None:
        name = host_name(headers.get("host"))
        if self.hosts is not None and name not in self.hosts:
            raise ApiError(400, f"host '{name}' is not one this service answers to ({', '.join(sorted(self.hosts))}); "
                                "address it by one of those, or start it with --allowed-hosts NAME", "host")
        if scope["method"] not in READS:
            client = scope.get("client")
            self.auth.check(scope["method"], client[0] if client else None, headers, {})
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ApiError(400, f"Content-Length '{length}' is not a number of bytes", "(body)")
            if int(length) > self.max_body:
                raise _too_large(self.max_body)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over the service's limit of {limit:,} bytes; send a smaller one "
                         "(a study file is a few kB), or start the service with a larger --max-body-mb", "(body)")


async def _answer(e: ApiError, scope: Any, receive: Any, send: Any) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
    if e.status in (400, 413):
        headers["Connection"] = "close"  # the unread body is not drained: the connection ends with the answer
    await JSONResponse({"detail": e.message, "field": e.field}, e.status, headers=headers)(scope, receive, send)
