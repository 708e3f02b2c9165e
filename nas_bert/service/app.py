"""`nas-bert serve`'s HTTP API (FastAPI; OpenAPI docs at /docs), its page at /, and Optuna's dashboard.

Studies are the study files of one folder (`--studies`), validated by the same pydantic models as the
command line; jobs are rows of `nasbert_jobs` in the study database, run by `nas-bert worker`
processes; results are read with the stages' own functions (see `results`).

Auth: a request that changes anything needs `Authorization: Bearer <token>`; reads are open to clients
on this machine (loopback) and need the token (the header, or the `nas_bert_token` cookie the page
sets) from anywhere else.

Optuna's dashboard (optuna-dashboard's WSGI app) is served beside the API: its page loads its script
and data from fixed root paths (/dashboard, /api/..., /static/...), so it lives at those paths, and
/optuna leads there. Through it, reads follow the rules above and writes need the bearer header.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from nas_bert.errors import NasBertError
from nas_bert.service import jobs, results
from nas_bert.service.worker import redact
from nas_bert.store import Database, JobRow
from nas_bert.study import Study, load_study

PAGE = Path(__file__).with_name("page.html")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DASHBOARD_PATHS = ("/dashboard", "/api/", "/static/")
TOKEN_COOKIE = "nas_bert_token"


class ApiError(Exception):
    """A 4xx answer: one line saying what is wrong and how to fix it, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class JobIn(BaseModel):
    """A launch: `search` one budget, `run` the whole study (its search.budgets_ms), or `export` students."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal["search", "run", "export"] = "search"
    budget_ms: float | None = Field(default=None, gt=0, description="search: the latency budget (ms)")
    trials: int | None = Field(default=None, ge=1, description="search: complete trials wanted (default: the study's)")
    budgets_ms: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="export: the best student of each of these budgets (default: every front)")


class ResumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: int | None = Field(default=None, ge=1, description="search: complete trials wanted from now on")


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


class Auth:
    def __init__(self, token: str) -> None:
        self.token = token

    def _bearer(self, headers: Any) -> str | None:
        value = headers.get("authorization") or ""
        return value[7:].strip() if value[:7].lower() == "bearer " else None

    def _ok(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    def check(self, method: str, client: str | None, headers: Any, cookies: dict[str, str]) -> None:
        bearer = self._bearer(headers)
        if method in ("GET", "HEAD", "OPTIONS"):
            if is_loopback(client) or self._ok(bearer) or self._ok(cookies.get(TOKEN_COOKIE)):
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
                import optuna_dashboard
                from a2wsgi import WSGIMiddleware
                from optuna.storages import RDBStorage

                kwargs = {"connect_args": {"timeout": 60}} if self.db_url.startswith("sqlite") else {"pool_pre_ping": True}
                self._dashboard = WSGIMiddleware(optuna_dashboard.wsgi(RDBStorage(self.db_url, engine_kwargs=kwargs)))
            return self._dashboard

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(DASHBOARD_PATHS):
            return await self.app(scope, receive, send)
        from starlette.requests import Request as StarletteRequest

        req = StarletteRequest(scope)
        try:
            self.auth.check(req.method, req.client.host if req.client else None, req.headers, req.cookies)
        except ApiError as e:
            return await JSONResponse({"detail": e.message}, e.status)(scope, receive, send)
        return await self.dashboard()(scope, receive, send)


def _field_of(message: str) -> str | None:
    keys = re.findall(r"key '([^']+)'", message)
    return keys[0] if keys else None


def create_app(db_url: str, studies_dir: str | Path, token: str) -> FastAPI:
    """The service over one study database and one folder of study files."""
    studies_dir = Path(studies_dir).resolve()
    studies_dir.mkdir(parents=True, exist_ok=True)
    db = Database(db_url)
    auth = Auth(token)
    fronts_cache, names_cache = results.TTLCache(2.0), results.TTLCache(2.0)
    computer = results.FrontProcess(db_url)
    fastest_cache = results.TTLCache(30.0)
    loaded: dict[str, tuple[float, Study]] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        computer.close()

    app = FastAPI(title="nas-bert", version="1", lifespan=lifespan,
                  description="Launch, watch and collect neural architecture searches of small BERT students. "
                              "Writes need `Authorization: Bearer <token>`.")
    app.state.db = db
    app.add_middleware(Dashboard, db_url=db_url, auth=auth)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"detail": e.message, "field": e.field}, e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts, fields = [], []
        for err in e.errors():
            loc = [str(p) for p in err["loc"] if p not in ("body", "query", "path")]
            key = ".".join(loc) or "(body)"
            fields.append(key)
            msg = "unknown field (remove it or check its spelling)" if err["type"] == "extra_forbidden" else err["msg"]
            shown = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
            parts.append(f"field '{key}': {msg}{shown}")
        return JSONResponse({"detail": "; ".join(parts), "field": fields[0] if fields else None}, 422)

    # one check for all: reads (GET) open on loopback, else the token; writes always the bearer token
    read = write = [Depends(auth)]

    # -- studies --------------------------------------------------------------------------------
    def study_path(name: str) -> Path:
        if not NAME.fullmatch(name):
            raise ApiError(404, f"unknown study '{name}': study names use letters, digits, '_', '-' and '.'", "name")
        return studies_dir / f"{name}.yaml"

    def get_study(name: str) -> Study:
        path = study_path(name)
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in studies_dir.glob("*.yaml"))) or "none yet"
            raise ApiError(404, f"unknown study '{name}'; create it with POST /v1/studies (known: {known})", "name")
        mtime = path.stat().st_mtime
        hit = loaded.get(name)
        if hit is None or hit[0] != mtime:
            try:
                hit = (mtime, load_study(path, db_url))
            except NasBertError as e:
                raise ApiError(422, str(e), _field_of(str(e))) from None
            if hit[1].name != name:  # the service knows a study by its file's name
                raise ApiError(422, f"study file {path} names its study '{hit[1].name}'; rename the file to "
                                    f"{hit[1].name}.yaml or set name: {name}", "name")
            loaded[name] = hit
        return hit[1]

    def searched(study: Study) -> list[float]:
        from optuna import get_all_study_names

        from nas_bert.search import storage_for

        def compute() -> list[float]:
            out, prefix = [], f"{study.name}-"
            for n in get_all_study_names(storage_for(study)):
                if n.startswith(prefix) and n.endswith("ms"):
                    try:
                        out.append(float(n[len(prefix):-2]))
                    except ValueError:
                        continue
            return sorted(out)

        return names_cache.get(study.name, compute)

    def job_counts() -> dict[str, dict[str, int]]:
        with db.session() as s:
            rows = s.execute(select(JobRow.study, JobRow.status, func.count()).group_by(JobRow.study, JobRow.status))
            out: dict[str, dict[str, int]] = {}
            for study, status, n in rows:
                out.setdefault(study, {})[status] = n
        return out

    def study_summary(study: Study, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        index = results.students(study)
        return {"name": study.name, "file": str(study.file), "teacher": study.cfg.teacher,
                "search_space": study.cfg.search_space, "budgets_ms": study.cfg.search.budgets_ms,
                "trials": study.cfg.search.trials, "searched_budgets_ms": searched(study),
                "jobs": counts.get(study.name, {}), "students": len(index["students"]) if index else 0}

    @app.get("/v1/studies", dependencies=read, tags=["studies"])
    def list_studies() -> list[dict[str, Any]]:
        """Every study file of the service's folder, with its budgets, searches, jobs and exported students."""
        counts, out = job_counts(), []
        for path in sorted(studies_dir.glob("*.yaml")):
            try:
                out.append(study_summary(get_study(path.stem), counts))
            except ApiError as e:  # a file someone broke by hand: listed with its error, not hidden
                out.append({"name": path.stem, "file": str(path), "error": e.message})
        return out

    @app.post("/v1/studies", dependencies=write, status_code=201, tags=["studies"])
    def create_study(response: Response, text: Annotated[str, Body(media_type="application/yaml",
                                                                    description="the study file (YAML)")],
                     name: Annotated[str | None, Query(description="the study's name, if the YAML has none")] = None
                     ) -> dict[str, Any]:
        """Create (or update) a study from a study file, validated like `nas-bert --config`."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ApiError(422, f"study YAML: not valid YAML ({str(e).splitlines()[0]})", "(body)") from None
        if not isinstance(data, dict):
            raise ApiError(422, f"study YAML: expected a mapping of keys, got {type(data).__name__}", "(body)")
        given = data.get("name")
        if given is not None and name is not None and str(given) != name:
            raise ApiError(422, f"study YAML: key 'name' is '{given}' but ?name= says '{name}'; make them agree", "name")
        name = str(given) if given is not None else name
        if name is None:
            raise ApiError(422, "study YAML: key 'name': required key is missing (add `name: <study>` or pass ?name=)",
                           "name")
        if not NAME.fullmatch(name):
            raise ApiError(422, f"study YAML: key 'name': use letters, digits, '_', '-' and '.' only (got {name!r})",
                           "name")
        if given is None:
            text = f"name: {name}\n{text}"
        path = study_path(name)
        tmp = studies_dir / f".{name}.yaml.{uuid.uuid4().hex[:8]}.new"
        try:
            tmp.write_text(text)
            try:
                study = load_study(tmp, db_url)  # the same validation as the command line's
            except NasBertError as e:
                msg = str(e).replace(f"study file {tmp}", "study YAML").replace(str(tmp), "study YAML")
                raise ApiError(422, msg, _field_of(msg)) from None
            if path.is_file() and path.read_text() == text:
                response.status_code = 200
                return {**study_summary(study, job_counts()), "created": False}
            active = [j for j in jobs.list_jobs(db, name) if j.status in jobs.ACTIVE]
            if path.is_file() and active:
                raise ApiError(409, f"study '{name}' has {len(active)} queued or running job(s) (first: {active[0].id});"
                                    " stop them before changing the study file", "name")
            existed = path.is_file()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        loaded.pop(name, None)
        if existed:
            response.status_code = 200
        return {**study_summary(get_study(name), job_counts()), "created": not existed}

    @app.get("/v1/studies/{name}", dependencies=read, tags=["studies"])
    def show_study(name: str) -> dict[str, Any]:
        """A study: its settings, searches, jobs, exported students and each `nas-bert run` stage's state."""
        from nas_bert.pipeline import stage_status

        study = get_study(name)
        out = study_summary(study, job_counts())
        out["config"] = study.cfg.model_dump(mode="json")
        out["stages"] = fronts_cache.get(("stages", name), lambda: stage_status(study))
        out["jobs_list"] = [jobs.as_dict(j) for j in jobs.list_jobs(db, name)]
        return out

    # -- jobs -----------------------------------------------------------------------------------
    def get_job(job_id: int) -> JobRow:
        row = jobs.get(db, job_id)
        if row is None:
            raise ApiError(404, f"unknown job {job_id}; GET /v1/jobs lists them", "job_id")
        return row

    def check_budget(study: Study, budget: float, field: str) -> None:
        if not math.isfinite(budget) or budget <= 0:
            raise ApiError(422, f"field '{field}': budget must be a finite number of ms > 0 (got {budget!r})", field)
        fastest = fastest_cache.get(("fastest", study.name), lambda: results.fastest_ms(db, study))
        if fastest is not None and budget < fastest:
            least = math.ceil(fastest * 100) / 100
            raise ApiError(422, f"field '{field}': budget {budget:g} ms is below the fastest student of this space "
                                f"({fastest:.2f} ms predicted on this device); the minimum is {least:g} ms", field)

    @app.post("/v1/studies/{name}/jobs", dependencies=write, status_code=201, tags=["jobs"])
    def launch(name: str, job: JobIn, response: Response) -> dict[str, Any]:
        """Queue a search of one budget, a `run` of the whole study, or an export. Launching a job that
        exists already (the same search) answers that job (200), never a second one."""
        study = get_study(name)
        params: dict[str, Any] = {}
        if job.kind == "search":
            if job.budget_ms is None:
                raise ApiError(422, "field 'budget_ms': required for a search (the latency budget in ms)", "budget_ms")
            check_budget(study, job.budget_ms, "budget_ms")
            if job.trials:
                params["trials"] = job.trials
        elif job.budget_ms is not None or job.trials is not None:
            raise ApiError(422, f"field '{'budget_ms' if job.budget_ms is not None else 'trials'}': only for a search; "
                                f"a {job.kind} takes the study's budgets", "budget_ms" if job.budget_ms else "trials")
        if job.kind == "run":
            if not study.cfg.search.budgets_ms:
                raise ApiError(422, f"study '{name}' lists no budgets: set search.budgets_ms in its study file "
                                    "(e.g. [8, 12]) or launch a search of one budget", "search.budgets_ms")
            for b in study.cfg.search.budgets_ms:
                check_budget(study, b, "search.budgets_ms")
        if job.kind == "export" and job.budgets_ms:
            params["budgets_ms"] = sorted(set(job.budgets_ms))
        elif job.budgets_ms is not None:
            raise ApiError(422, "field 'budgets_ms': only for an export", "budgets_ms")
        row, created = jobs.enqueue(db, name, job.kind, job.budget_ms, params)
        if not created:
            response.status_code = 200
        response.headers["Location"] = f"/v1/jobs/{row.id}"
        return {**jobs.as_dict(row), "created": created}

    @app.get("/v1/jobs", dependencies=read, tags=["jobs"])
    def list_all_jobs(study: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Every job (of one study, in one status), oldest first."""
        return [jobs.as_dict(j) for j in jobs.list_jobs(db, study, status)]

    @app.get("/v1/jobs/{job_id}", dependencies=read, tags=["jobs"])
    def show_job(job_id: int) -> dict[str, Any]:
        """A job: status, stage, progress, ETA, the tail of its log and, once finished, its summary."""
        return jobs.as_dict(get_job(job_id), with_log=True)

    @app.post("/v1/jobs/{job_id}/stop", dependencies=write, tags=["jobs"])
    def stop_job(job_id: int) -> dict[str, Any]:
        """Stop a queued or running job (its worker ends the job's process within a heartbeat)."""
        row = get_job(job_id)
        if not jobs.stop(db, job_id):
            raise ApiError(409, f"job {job_id} is {row.status}, not queued or running; nothing to stop", "job_id")
        return jobs.as_dict(get_job(job_id))

    @app.post("/v1/jobs/{job_id}/resume", dependencies=write, tags=["jobs"])
    def resume_job(job_id: int, body: ResumeIn | None = None) -> dict[str, Any]:
        """Queue a stopped, failed or finished job again: it continues from its finished stages and trials."""
        row = get_job(job_id)
        params = {"trials": body.trials} if body and body.trials else None
        if params and row.kind != "search":
            raise ApiError(422, "field 'trials': only for a search", "trials")
        if not jobs.resume(db, job_id, params):
            raise ApiError(409, f"job {job_id} is {row.status} already; resume a stopped, failed or finished job",
                           "job_id")
        return jobs.as_dict(get_job(job_id))

    # -- results --------------------------------------------------------------------------------
    def budgets_of(study: Study, budget: float | None) -> list[float]:
        known = searched(study)
        if budget is None:
            return known
        if not any(f"{b:g}" == f"{budget:g}" for b in known):
            listed = ", ".join(f"{b:g}" for b in known) or "none yet"
            raise ApiError(404, f"no search for budget {budget:g} ms in study '{study.name}' (searched: {listed}); "
                                "launch one with POST /v1/studies/{name}/jobs", "budget")
        return [budget]

    @app.get("/v1/studies/{name}/fronts", dependencies=read, tags=["results"])
    def fronts(name: str, budget: float | None = None) -> dict[str, Any]:
        """Each searched budget's feasible Pareto front (approximate loss vs predicted latency, with measured
        latencies where timed), its chosen student, finalists and trial counts."""
        study = get_study(name)
        return {f"{b:g}": fronts_cache.get((name, b), lambda b=b: computer.front(study, b))
                for b in budgets_of(study, budget)}

    @app.get("/v1/studies/{name}/front.png", dependencies=read, tags=["results"],
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def front_png(name: str, budget: float | None = None) -> Response:
        """The fronts as `nas-bert pareto --plot` draws them."""
        study = get_study(name)
        budgets = budgets_of(study, budget)
        if not budgets:
            raise ApiError(404, f"study '{name}' has no search yet; launch one with POST /v1/studies/{name}/jobs",
                           "budget")
        png = fronts_cache.get(("png", name, tuple(budgets)),
                               lambda: computer.png(study, budgets, studies_dir))
        return Response(png, media_type="image/png")

    def student_links(name: str, s: dict[str, Any]) -> dict[str, Any]:
        return {**s, "card_url": f"/v1/studies/{name}/students/{s['name']}/card",
                "download_url": f"/v1/studies/{name}/students/{s['name']}/download"}

    @app.get("/v1/studies/{name}/students", dependencies=read, tags=["results"])
    def list_students(name: str) -> dict[str, Any]:
        """The exported students (the export's index.json), with links to each card and archive."""
        study = get_study(name)
        index = results.students(study)
        if index is None:
            return {"study": name, "students": [], "note": "nothing exported yet: launch a run or an export job"}
        return {**index, "students": [student_links(name, s) for s in index["students"]]}

    def folder_of(name: str, student: str) -> tuple[Study, Path]:
        study = get_study(name)
        folder = results.student_folder(study, student)
        if folder is None:
            raise ApiError(404, f"no exported student '{student}' in study '{name}'; GET /v1/studies/{name}/students "
                                "lists them", "student")
        return study, folder

    @app.get("/v1/studies/{name}/students/{student}/card", dependencies=read, tags=["results"],
             response_class=PlainTextResponse)
    def card(name: str, student: str) -> PlainTextResponse:
        """The student's model card (README.md, Markdown)."""
        _, folder = folder_of(name, student)
        return PlainTextResponse((folder / "README.md").read_text(), media_type="text/markdown; charset=utf-8")

    @app.get("/v1/studies/{name}/students/{student}/download", dependencies=read, tags=["results"],
             response_class=FileResponse)
    def download(name: str, student: str) -> FileResponse:
        """The exported student folder as one .tar.gz (weights, ONNX, tokenizer, card)."""
        study, folder = folder_of(name, student)
        return FileResponse(results.archive(study, student, folder), media_type="application/gzip",
                            filename=f"{student}.tar.gz")

    # -- the page, health, Optuna ------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/optuna", include_in_schema=False)
    def optuna_dashboard() -> RedirectResponse:
        return RedirectResponse("/dashboard", 307)

    @app.get("/v1/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness, and the workers that heartbeat a job now."""
        running = jobs.list_jobs(db, status="running")
        return {"ok": True, "db": redact(db_url), "studies_dir": str(studies_dir),
                "running": [{"job": j.id, "worker": j.worker} for j in running],
                "queued": len(jobs.list_jobs(db, status="queued"))}

    return app


def serve(db_url: str, studies_dir: Path, host: str, port: int, token: str, workers: int = 1,
          worker_args: list[str] | None = None, echo: Any = print) -> None:
    """uvicorn on the app, with `workers` `nas-bert worker` processes that die with it; a worker that dies
    (killed, out of memory) is started again, and takes over the job it held at once."""
    import signal

    import uvicorn

    from nas_bert.service.worker import spawn

    app = create_app(db_url, studies_dir, token)
    args = ["worker", "--db", db_url, "--studies", str(studies_dir), *(worker_args or [])]
    procs = [spawn(args) for _ in range(workers)]
    done = threading.Event()

    def supervise() -> None:
        while not done.wait(2.0):
            for i, p in enumerate(procs):
                if p.poll() is not None and not done.is_set():
                    echo(f"nas-bert serve: worker {p.pid} exited with status {p.returncode}; starting another")
                    procs[i] = spawn(args)

    threading.Thread(target=supervise, daemon=True).start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
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
