"""The service itself: its page at /, /optuna (leading to Optuna's dashboard) and /v1/health."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

from nas_bert.service import jobs
from nas_bert.service.state import State
from nas_bert.service.worker import redact

PAGE = Path(__file__).with_name("page.html")

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


@router.get("/optuna", include_in_schema=False)
def optuna_dashboard() -> RedirectResponse:
    return RedirectResponse("/dashboard", 307)


@router.get("/v1/health", tags=["service"])
def health(state: State) -> dict[str, Any]:
    """Liveness, and the workers that heartbeat a job now."""
    running = jobs.list_jobs(state.db, status="running")
    return {"ok": True, "db": redact(state.db_url), "studies_dir": str(state.studies_dir),
            "running": [{"job": j.id, "worker": j.worker} for j in running],
            "queued": len(jobs.list_jobs(state.db, status="queued"))}
