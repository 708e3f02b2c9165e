"""The studies: the study files of the service's folder, listed, created or updated from posted YAML
(validated by the same pydantic models as the command line), and shown with their stages and jobs."""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from sqlalchemy import func, select

from nas_bert.errors import NasBertError
from nas_bert.service import jobs, results
from nas_bert.service.errors import ApiError, field_of
from nas_bert.service.state import NAME, ServiceState, State, read, write
from nas_bert.service.worker import redact
from nas_bert.store import JobRow, parse_mapping
from nas_bert.study import Study, load_study

router = APIRouter()


def job_counts(state: ServiceState) -> dict[str, dict[str, int]]:
    """study -> status -> how many jobs."""
    with state.db.session() as s:
        rows = s.execute(select(JobRow.study, JobRow.status, func.count()).group_by(JobRow.study, JobRow.status))
        out: dict[str, dict[str, int]] = {}
        for study, status, n in rows:
            out.setdefault(study, {})[status] = n
    return out


def study_summary(state: ServiceState, study: Study, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    index = results.students(study)
    return {"name": study.name, "file": str(study.file), "teacher": study.cfg.teacher,
            "search_space": study.cfg.search_space, "budgets_ms": study.cfg.search.budgets_ms,
            "trials": study.cfg.search.trials, "searched_budgets_ms": state.searched(study),
            "jobs": counts.get(study.name, {}), "students": len(index["students"]) if index else 0}


def study_yaml(text: str, name: str | None) -> tuple[str, str]:
    """The posted study file's name and text: the YAML parsed, its `name` checked against `?name=`, and a
    `name:` line added when only `?name=` gives it. Validation proper is `load_study`'s."""
    try:
        data = parse_mapping(text, "study YAML")
    except NasBertError as e:
        raise ApiError(422, str(e), "(body)") from None
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
    return name, text


@router.get("/v1/studies", dependencies=read, tags=["studies"])
def list_studies(state: State) -> list[dict[str, Any]]:
    """Every study file of the service's folder, with its budgets, searches, jobs and exported students."""
    counts, out = job_counts(state), []
    for path in sorted(state.studies_dir.glob("*.yaml")):
        try:
            out.append(study_summary(state, state.get_study(path.stem), counts))
        except ApiError as e:  # a file someone broke by hand: listed with its error, not hidden
            out.append({"name": path.stem, "file": str(path), "error": e.message})
    return out


@router.post("/v1/studies", dependencies=write, status_code=201, tags=["studies"])
def create_study(state: State, response: Response,
                 text: Annotated[str, Body(media_type="application/yaml", description="the study file (YAML)")],
                 name: Annotated[str | None, Query(description="the study's name, if the YAML has none")] = None
                 ) -> dict[str, Any]:
    """Create (or update) a study from a study file, validated like `nas-bert --config`."""
    name, text = study_yaml(text, name)
    path = state.study_path(name)
    tmp = state.studies_dir / f".{name}.yaml.{uuid.uuid4().hex[:8]}.new"
    try:
        tmp.write_text(text)
        try:
            study = load_study(tmp, state.db_url)  # the same validation as the command line's
        except NasBertError as e:
            msg = str(e).replace(f"study file {tmp}", "study YAML").replace(str(tmp), "study YAML")
            raise ApiError(422, msg, field_of(msg)) from None
        if path.is_file() and path.read_text() == text:
            response.status_code = 200
            return {**study_summary(state, study, job_counts(state)), "created": False}
        active = [j for j in jobs.list_jobs(state.db, name) if j.status in jobs.ACTIVE]
        if path.is_file() and active:
            raise ApiError(409, f"study '{name}' has {len(active)} queued or running job(s) (first: {active[0].id});"
                                " stop them before changing the study file", "name")
        existed = path.is_file()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    state.loaded.pop(name, None)
    if existed:
        response.status_code = 200
    return {**study_summary(state, state.get_study(name), job_counts(state)), "created": not existed}


@router.get("/v1/studies/{name}", dependencies=read, tags=["studies"])
def show_study(state: State, name: str) -> dict[str, Any]:
    """A study: its settings, searches, jobs, exported students and each `nas-bert run` stage's state."""
    from nas_bert.pipeline import stage_status  # deferred: the pipeline imports datasets (seconds)

    study = state.get_study(name)
    out = study_summary(state, study, job_counts(state))
    out["config"] = study.cfg.model_dump(mode="json")
    if out["config"].get("db_url"):  # a PostgreSQL URL in a study file may hold a password
        out["config"]["db_url"] = redact(out["config"]["db_url"])
    out["stages"] = state.fronts_cache.get(("stages", name),
                                           lambda: [r.model_dump(mode="json") for r in stage_status(study)])
    out["jobs_list"] = [jobs.as_dict(j) for j in jobs.list_jobs(state.db, name)]
    return out
