"""`nas-bert status`: what the study database holds, stage by stage."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import func, select

from nas_bert.latency import device_fingerprint
from nas_bert.pipeline import StageState, stage_status
from nas_bert.record import Record
from nas_bert.search import budgets_in_db, optuna_study_name, storage_for
from nas_bert.store import ArchitectureRow, BlockScore, Checkpoint, Database, LatencyRow
from nas_bert.store.failures import sqlite_file
from nas_bert.study import Study
from nas_bert.supernet import find_run


class SupernetStatus(Record):
    """The supernet of the study's current inputs and its latest checkpoint."""

    status: str  # "running" or "finished"
    target_steps: int
    step: int  # 0: no checkpoint yet
    checkpoint: str | None
    sha256: str | None
    val_losses: dict[str, Any]  # the checkpoint's validation report


class LatencyStatus(Record):
    """The latency table of this device."""

    fingerprint: str
    entries: int
    runtime: str = "torch"  # the runtime the budgets are for (`latency.runtime`)


class BestTrial(Record):
    """A search's best feasible trial by approximate loss."""

    trial: int
    approx_loss: float
    predicted_ms: float


class SearchStatus(Record):
    """One budget's search."""

    budget_ms: float
    trials: dict[str, int]  # trial state (running, complete, pruned, fail, waiting) -> count
    feasible: int
    best: BestTrial | None  # None: no feasible trial


class StudyStatus(Record):
    """What a study holds, stage by stage, and which of `nas-bert run`'s stages are current."""

    study: str
    db: str
    supernet: SupernetStatus | None  # None: not trained
    latency: LatencyStatus
    block_scores: int  # memoised block scores (every study of the database)
    architectures: int  # architectures scored in this study
    searches: list[SearchStatus]
    stages: list[StageState]


def study_status(study: Study) -> StudyStatus:
    """The study's supernet, latency table, block scores, searches and `nas-bert run` stages, as its database holds
    them (nothing is trained or timed). A study whose SQLite database does not exist yet reads as empty, and no file
    is left behind (a status is no reason to make a database)."""
    path = sqlite_file(study.db_url)
    if path and not Path(path).exists():
        with tempfile.TemporaryDirectory() as folder:
            (empty := Path(folder) / "empty.db").touch()  # an empty file is an empty SQLite database
            blank = study_status(dataclasses.replace(study, db_url=f"sqlite:///{empty}"))
        return blank.model_copy(update={"db": study.db_url})
    db = Database(study.db_url)
    with db.session() as s:
        run = find_run(s, study)
        supernet = None
        if run is not None:
            ckpt = Checkpoint.latest(s, run.id)
            supernet = SupernetStatus(status=run.status, target_steps=run.target_steps,
                                      step=ckpt.step if ckpt else 0, checkpoint=ckpt.path if ckpt else None,
                                      sha256=ckpt.sha256 if ckpt else None, val_losses=ckpt.val_losses if ckpt else {})
        fp = device_fingerprint(study.cfg.latency)
        latency_rows = s.scalar(select(func.count()).select_from(LatencyRow).where(LatencyRow.fingerprint == fp))
        block_scores = s.scalar(select(func.count()).select_from(BlockScore))
        architectures = s.scalar(select(func.count()).select_from(ArchitectureRow).where(ArchitectureRow.study == study.name))
    searches = []
    for budget in budgets_in_db(study):
        st = optuna.load_study(study_name=optuna_study_name(study, budget), storage=storage_for(study))
        trials = st.get_trials(deepcopy=False)
        counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
        feasible = [t for t in trials if t.state == TrialState.COMPLETE and t.values[1] <= budget]
        best = min(feasible, key=lambda t: t.values[0], default=None)
        searches.append(SearchStatus(budget_ms=budget, trials=counts, feasible=len(feasible),
                                     best=None if best is None else BestTrial(trial=best.number,
                                                                              approx_loss=best.values[0],
                                                                              predicted_ms=best.values[1])))
    db.dispose()
    return StudyStatus(study=study.name, db=study.db_url, supernet=supernet,
                       latency=LatencyStatus(fingerprint=fp, entries=latency_rows, runtime=study.cfg.latency.runtime), block_scores=block_scores,
                       architectures=architectures, searches=searches, stages=stage_status(study))
