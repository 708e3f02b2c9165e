"""The jobs: launched on a study (a search of one budget, a `run` of the whole study, an export), listed,
shown, stopped and resumed; `nas-bert worker` processes run them (see `jobs` and `worker`)."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from nas_bert.service import jobs, results
from nas_bert.service.errors import ApiError
from nas_bert.service.state import ServiceState, State, read, write
from nas_bert.store import JobRow
from nas_bert.study import Study

RESUME_WAIT_S = 20.0

router = APIRouter()


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


def get_job(state: ServiceState, job_id: int) -> JobRow:
    row = jobs.get(state.db, job_id)
    if row is None:
        raise ApiError(404, f"unknown job {job_id}; GET /v1/jobs lists them", "job_id")
    return row


def check_budget(state: ServiceState, study: Study, budget: float, field: str) -> None:
    """A budget no student of the space can meet is refused before a search is queued for it."""
    if not math.isfinite(budget) or budget <= 0:
        raise ApiError(422, f"field '{field}': budget must be a finite number of ms > 0 (got {budget!r})", field)
    fastest = state.fastest_cache.get(("fastest", study.name), lambda: results.fastest_ms(state.db, study))
    if fastest is not None and budget < fastest:
        least = math.ceil(fastest * 100) / 100
        raise ApiError(422, f"field '{field}': budget {budget:g} ms is below the fastest student of this space "
                            f"({fastest:.2f} ms predicted on this device); the minimum is {least:g} ms", field)


@router.post("/v1/studies/{name}/jobs", dependencies=write, status_code=201, tags=["jobs"])
def launch(state: State, name: str, job: JobIn, response: Response) -> dict[str, Any]:
    """Queue a search of one budget, a `run` of the whole study, or an export. Launching a job that
    exists already (the same search) answers that job (200), never a second one."""
    study = state.get_study(name)
    params: dict[str, Any] = {}
    if job.kind == "search":
        if job.budget_ms is None:
            raise ApiError(422, "field 'budget_ms': required for a search (the latency budget in ms)", "budget_ms")
        check_budget(state, study, job.budget_ms, "budget_ms")
        if job.trials:
            params["trials"] = job.trials
    elif job.budget_ms is not None or job.trials is not None:
        raise ApiError(422, f"field '{'budget_ms' if job.budget_ms is not None else 'trials'}': only for a search; "
                            f"a {job.kind} takes the study's budgets", "budget_ms" if job.budget_ms else "trials")
    if job.kind == "run":
        if not study.cfg.search.budgets_ms and not study.cfg.search.budgets_x:
            raise ApiError(422, f"study '{name}' lists no budgets: set search.budgets_ms (e.g. [8, 12]) or "
                                "search.budgets_x (e.g. [0.25, 0.5]) in its study file, or launch a search of one "
                                "budget", "search.budgets_ms")
        for b in study.cfg.search.budgets_ms:
            check_budget(state, study, b, "search.budgets_ms")
    if job.kind == "export" and job.budgets_ms:
        params["budgets_ms"] = sorted(set(job.budgets_ms))
    elif job.budgets_ms is not None:
        raise ApiError(422, "field 'budgets_ms': only for an export", "budgets_ms")
    row, created = jobs.enqueue(state.db, name, job.kind, job.budget_ms, params)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{row.id}"
    return {**jobs.as_dict(row), "created": created}


@router.get("/v1/jobs", dependencies=read, tags=["jobs"])
def list_all_jobs(state: State, study: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Every job (of one study, in one status), oldest first."""
    return [jobs.as_dict(j) for j in jobs.list_jobs(state.db, study, status)]


@router.get("/v1/jobs/{job_id}", dependencies=read, tags=["jobs"])
def show_job(state: State, job_id: int) -> dict[str, Any]:
    """A job: status, stage, progress, ETA, the tail of its log and, once finished, its summary."""
    return jobs.as_dict(get_job(state, job_id), with_log=True)


@router.post("/v1/jobs/{job_id}/stop", dependencies=write, tags=["jobs"])
def stop_job(state: State, job_id: int) -> dict[str, Any]:
    """Stop a queued or running job (its worker ends the job's process within a heartbeat)."""
    row = get_job(state, job_id)
    if not jobs.stop(state.db, job_id):
        raise ApiError(409, f"job {job_id} is {row.status}, not queued or running; nothing to stop", "job_id")
    return jobs.as_dict(get_job(state, job_id))


@router.post("/v1/jobs/{job_id}/resume", dependencies=write, tags=["jobs"])
def resume_job(state: State, job_id: int, body: ResumeIn | None = None) -> dict[str, Any]:
    """Queue a stopped, failed or finished job again: it continues from its finished stages and trials. Right
    after a stop it waits (up to RESUME_WAIT_S) until the job's old processes have ended: never two runs."""
    row = get_job(state, job_id)
    params = {"trials": body.trials} if body and body.trials else None
    if params and row.kind != "search":
        raise ApiError(422, "field 'trials': only for a search", "trials")
    deadline = time.monotonic() + RESUME_WAIT_S
    while not jobs.resume(state.db, job_id, params):
        row = get_job(state, job_id)
        if row.status not in jobs.DONE:
            raise ApiError(409, f"job {job_id} is {row.status} already; resume a stopped, failed or finished job",
                           "job_id")
        if time.monotonic() > deadline:  # stopped, and its worker is still ending the job's processes
            raise ApiError(409, f"job {job_id} is still stopping (its worker ends its processes within a heartbeat "
                                "and a grace period); resume it again in a few seconds", "job_id")
        time.sleep(0.5)
    return jobs.as_dict(get_job(state, job_id))
