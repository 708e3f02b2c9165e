"""`nas-bert serve`'s HTTP API (FastAPI; OpenAPI docs at /docs), its page at /, and Optuna's dashboard.

Studies are the study files of one folder (`--studies`), validated by the same pydantic models as the
command line (`routes_studies`); jobs are rows of `nasbert_jobs` in the study database, run by
`nas-bert worker` processes (`routes_jobs`); results are read with the stages' own functions
(`routes_results`, `results`). The routes share one `ServiceState` (`state`) on `app.state.service`.

Auth (`auth`): a request that changes anything needs `Authorization: Bearer <token>`; reads are open to
clients on this machine (loopback, addressing it by a loopback name) and need the token (the header, or
the `nas_bert_token` cookie the page sets) from anywhere else. In front of all of it (`guard`): the Host
header against the names served, a write's token before its body is read, and a limit on the body.

Optuna's dashboard (optuna-dashboard's WSGI app) is served beside the API: its page loads its script
and data from fixed root paths (/dashboard, /api/..., /static/...), so it lives at those paths, and
/optuna leads there. Through it, reads follow the rules above and writes need the bearer header.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from nas_bert.service import routes_jobs, routes_results, routes_service, routes_studies
from nas_bert.service.auth import Auth, read_token
from nas_bert.service.errors import ApiError, add_error_handlers
from nas_bert.service.guard import DEFAULT_MAX_BODY, Guard, allowed_hosts
from nas_bert.service.state import ServiceState
from nas_bert.service.worker import spawn
from nas_bert.store import DB_ENV

__all__ = ["Dashboard", "create_app", "read_token", "serve"]

DASHBOARD_PATHS = ("/dashboard", "/api/", "/static/")


class Dashboard:
    """Optuna's dashboard (optuna-dashboard's WSGI app over the study database) at its own root paths,
    behind the service's auth; built at its first request."""

    def __init__(self, app: Any, db_url: str, auth: Auth) -> None:
        self.app, self.db_url, self.auth = app, db_url, auth
        self._dashboard: Any = None
        self._lock = threading.Lock()

    def dashboard(self) -> Any:
        with self._lock:
            if self._dashboard is None:
                # deferred: most runs of the service never open the dashboard
                import optuna_dashboard
                from a2wsgi import WSGIMiddleware
                from optuna.storages import RDBStorage

                sqlite = self.db_url.startswith("sqlite")
                kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
                self._dashboard = WSGIMiddleware(optuna_dashboard.wsgi(RDBStorage(self.db_url, engine_kwargs=kwargs)))
            return self._dashboard

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(DASHBOARD_PATHS):
            return await self.app(scope, receive, send)
        req = Request(scope)
        try:
            self.auth.check(req.method, req.client.host if req.client else None, req.headers, req.cookies)
        except ApiError as e:
            return await JSONResponse({"detail": e.message}, e.status)(scope, receive, send)
        return await self.dashboard()(scope, receive, send)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.service.computer.close()


def create_app(db_url: str, studies_dir: str | Path, token: str, hosts: frozenset[str] | None = None,
               max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The service over one study database and one folder of study files; `hosts`: the Host names it
    answers to (None: any), `max_body`: the largest request body in bytes (see `guard`)."""
    state = ServiceState.open(db_url, studies_dir, token)
    app = FastAPI(title="nas-bert", version="1", lifespan=lifespan,
                  description="Launch, watch and collect neural architecture searches of small BERT students. "
                              "Writes need `Authorization: Bearer <token>`.")
    app.state.service = state
    app.state.db = state.db
    app.add_middleware(Dashboard, db_url=db_url, auth=state.auth)
    app.add_middleware(Guard, auth=state.auth, hosts=hosts, max_body=max_body)  # added last: runs first
    add_error_handlers(app)
    for routes in (routes_studies, routes_jobs, routes_results, routes_service):
        app.include_router(routes.router)
    return app


def serve(db_url: str, studies_dir: Path, host: str, port: int, token: str, workers: int = 1,
          worker_args: list[str] | None = None, echo: Any = print, hosts: list[str] | None = None,
          max_body: int = DEFAULT_MAX_BODY, forwarded_allow_ips: str | None = None) -> None:
    """uvicorn on the app, with `workers` `nas-bert worker` processes that die with it; a worker that dies
    (killed, out of memory) is started again, and takes over the job it held at once. Proxy headers
    (X-Forwarded-For, -Proto) are believed only from `forwarded_allow_ips` (a reverse proxy's address)."""
    app = create_app(db_url, studies_dir, token, allowed_hosts(host, hosts), max_body)
    args = ["worker", "--studies", str(studies_dir), *(worker_args or [])]
    env = {**os.environ, DB_ENV: db_url}  # the URL (and its password) out of the workers' argument lists

    def start() -> subprocess.Popen:
        return spawn(args, env=env)

    procs = [start() for _ in range(workers)]
    done = threading.Event()

    def supervise() -> None:
        while not done.wait(2.0):
            for i, p in enumerate(procs):
                if p.poll() is not None and not done.is_set():
                    echo(f"nas-bert serve: worker {p.pid} exited with status {p.returncode}; starting another")
                    procs[i] = start()

    threading.Thread(target=supervise, daemon=True).start()
    try:
        # uvicorn trusts proxy headers from 127.0.0.1 by default: any local process could then pose as
        # another client; here nothing is trusted unless a proxy's address is named
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=forwarded_allow_ips is not None,
                    forwarded_allow_ips=forwarded_allow_ips or "")
    finally:
        done.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # the worker hands its job back to the queue and exits
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
