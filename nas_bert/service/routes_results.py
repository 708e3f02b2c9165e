"""A study's results: each searched budget's Pareto front (JSON, or drawn as a PNG), and the exported
students with their model cards and archives, read with the stages' own functions (see `results`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, PlainTextResponse

from nas_bert.service import results
from nas_bert.service.errors import ApiError
from nas_bert.service.state import ServiceState, State, read
from nas_bert.study import Study

router = APIRouter()


def budgets_of(state: ServiceState, study: Study, budget: float | None) -> list[float]:
    """The searched budgets, or `budget` alone when it was searched."""
    known = state.searched(study)
    if budget is None:
        return known
    if not any(f"{b:g}" == f"{budget:g}" for b in known):
        listed = ", ".join(f"{b:g}" for b in known) or "none yet"
        raise ApiError(404, f"no search for budget {budget:g} ms in study '{study.name}' (searched: {listed}); "
                            "launch one with POST /v1/studies/{name}/jobs", "budget")
    return [budget]


@router.get("/v1/studies/{name}/fronts", dependencies=read, tags=["results"])
def fronts(state: State, name: str, budget: float | None = None) -> dict[str, Any]:
    """Each searched budget's feasible Pareto front (approximate loss vs predicted latency, with measured
    latencies where timed), its chosen student, finalists and trial counts."""
    study = state.get_study(name)
    return {f"{b:g}": state.fronts_cache.get((name, b), lambda b=b: state.computer.front(study, b))
            for b in budgets_of(state, study, budget)}


@router.get("/v1/studies/{name}/front.png", dependencies=read, tags=["results"],
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def front_png(state: State, name: str, budget: float | None = None) -> Response:
    """The fronts as `nas-bert pareto --plot` draws them."""
    study = state.get_study(name)
    budgets = budgets_of(state, study, budget)
    if not budgets:
        raise ApiError(404, f"study '{name}' has no search yet; launch one with POST /v1/studies/{name}/jobs",
                       "budget")
    png = state.fronts_cache.get(("png", name, tuple(budgets)),
                                 lambda: state.computer.png(study, budgets, state.studies_dir))
    return Response(png, media_type="image/png")


def student_links(name: str, s: dict[str, Any]) -> dict[str, Any]:
    return {**s, "card_url": f"/v1/studies/{name}/students/{s['name']}/card",
            "download_url": f"/v1/studies/{name}/students/{s['name']}/download"}


@router.get("/v1/studies/{name}/students", dependencies=read, tags=["results"])
def list_students(state: State, name: str) -> dict[str, Any]:
    """The exported students (the export's index.json), with links to each card and archive."""
    study = state.get_study(name)
    index = results.students(study)
    if index is None:
        return {"study": name, "students": [], "note": "nothing exported yet: launch a run or an export job"}
    return {**index, "students": [student_links(name, s) for s in index["students"]]}


def folder_of(state: ServiceState, name: str, student: str) -> tuple[Study, Path]:
    study = state.get_study(name)
    folder = results.student_folder(study, student)
    if folder is None:
        raise ApiError(404, f"no exported student '{student}' in study '{name}'; GET /v1/studies/{name}/students "
                            "lists them", "student")
    return study, folder


@router.get("/v1/studies/{name}/students/{student}/card", dependencies=read, tags=["results"],
            response_class=PlainTextResponse)
def card(state: State, name: str, student: str) -> PlainTextResponse:
    """The student's model card (README.md, Markdown)."""
    _, folder = folder_of(state, name, student)
    return PlainTextResponse((folder / "README.md").read_text(), media_type="text/markdown; charset=utf-8")


@router.get("/v1/studies/{name}/students/{student}/download", dependencies=read, tags=["results"],
            response_class=FileResponse)
def download(state: State, name: str, student: str) -> FileResponse:
    """The exported student folder as one .tar.gz (weights, ONNX, tokenizer, card)."""
    study, folder = folder_of(state, name, student)
    return FileResponse(results.archive(study, student, folder), media_type="application/gzip",
                        filename=f"{student}.tar.gz")
