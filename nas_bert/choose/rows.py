"""The finalists' rows: each finalist's short distillation stored per study, budget and protocol, so a killed choice
continues and a result computed for one budget is not computed again for another."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nas_bert.choose.candidates import Candidate
from nas_bert.choose.ranking import SCORE_KEYS, Finalist, FinalistsResult, criterion, summarise, tie_to_recipe
from nas_bert.choose.seeds import RUN_KEYS, seed_interval, term_intervals
from nas_bert.store import Database, FinalistRow
from nas_bert.study import Study


def continued(r: dict[str, Any]) -> bool:
    """A later round's result that continued its earlier round's weights (one distilled from the start again, as
    before nas-bert trained survivors on, is scored again: a round compares finalists trained alike)."""
    return "continued_from" in r


def _same_student(db: Database, study: Study, c: Candidate, protocol: str) -> list[FinalistRow]:
    """The study's rows of this student (architecture and starting weights) under `protocol`, at any budget."""
    with db.session() as s:
        return list(s.scalars(select(FinalistRow).where(
            FinalistRow.study == study.name, FinalistRow.arch_hash == c.arch.hash(), FinalistRow.origin == c.origin,
            FinalistRow.protocol_hash == protocol).order_by(FinalistRow.id)))


def round_elsewhere(db: Database, study: Study, c: Candidate, protocol: str, steps: int,
                     usable: Callable[[dict[str, Any]], bool] = bool) -> dict[str, Any] | None:
    """The same round (student, start, protocol, steps) run at another budget of the study, the first that is
    `usable` (its fine-tuning measured as this round's is): not run twice."""
    for row in _same_student(db, study, c, protocol):
        for r in json.loads(row.metrics_json).get("rounds") or []:
            if r.get("steps") == steps and "fidelity" in r and continued(r) and usable(r):
                return {**r, "scored_at_budget_ms": row.budget_ms}
    return None


def update(db: Database, study: Study, budget_ms: float, name: str, protocol: str, extra: dict[str, Any]) -> None:
    with db.session() as s:
        row = s.scalars(select(FinalistRow).where(FinalistRow.study == study.name, FinalistRow.budget_ms == budget_ms,
                                                  FinalistRow.name == name, FinalistRow.protocol_hash == protocol)).one()
        row.metrics_json = json.dumps({**json.loads(row.metrics_json), **extra})


def stored(db: Database, study: Study, budget_ms: float, name: str, protocol: str) -> dict[str, Any] | None:
    with db.session() as s:
        row = s.scalars(select(FinalistRow).where(FinalistRow.study == study.name, FinalistRow.budget_ms == budget_ms,
                                                  FinalistRow.name == name, FinalistRow.protocol_hash == protocol)).first()
        return json.loads(row.metrics_json) if row is not None else None


def stored_rounds(db: Database, study: Study, budget_ms: float, protocol: str,
                  rounds: dict[str, list[dict[str, Any]] | None]) -> dict[str, dict[str, Any]]:
    """Each finalist's latest round (`rounds`: name -> its rounds as ranked; none: its row's figures) as its row
    keeps it, its runs and per-example records; a finalist whose row has no result there (a row another process is
    rewriting) is left out."""
    out = {}
    for name, mine in rounds.items():
        row = stored(db, study, budget_ms, name, protocol) or {}
        if mine:
            row = next((x for x in row.get("rounds") or [] if x["steps"] == mine[-1]["steps"]
                        and x.get("measured_as") == mine[-1].get("measured_as")), {})
        if "fidelity" in row:
            out[name] = row
    return out


def seeded(db: Database, study: Study, budget_ms: float, protocol: str, result: FinalistsResult) -> dict[str, Any]:
    """Where the last round ran several times (search.choose_protocol.last_round_seeds), what its runs add to the
    choice's result (an update of it): the chosen student against the runner-up (`seeded`, and `separated` by that
    interval) and against the margin's rival (`Margin.seeded`: the score and each of its terms), with intervals
    that hold the runs' spread beside the texts' (`seed_interval`)."""
    chosen = result.chosen
    if study.cfg.search.choose_protocol.last_round_seeds < 2 or not chosen.seed_figures:
        return {}
    top = len(chosen.rounds or [])
    pool = [r for r in result.finalists if not r.over_budget and len(r.rounds or []) == top and r.seed_figures]
    rows = stored_rounds(db, study, budget_ms, protocol, {r.name: r.rounds for r in pool})
    if len(rows) < len(pool) or chosen.name not in rows:  # a row another process is rewriting
        return {}
    by, out = criterion(study), {}
    if (runner := result.runner_up) in rows and (sd := seed_interval(
            rows[chosen.name], rows[runner], list(rows.values()), by, runner)) is not None:
        out = {"seeded": sd, "separated": sd.interval[0] > 0}
    m = result.margin
    if m is not None and m.rival in rows and (terms := term_intervals(
            rows[chosen.name], rows[m.rival], list(rows.values()), by, m.rival)) is not None:
        out["margin"] = m.model_copy(update={"seeded": terms})
    return out


def ranked(db: Database, study: Study, budget_ms: float, protocol: str, rows: list[Finalist | dict[str, Any]],
           update: dict[str, Any], spare: float = 0.0) -> FinalistsResult:
    """The choice among the finalists' `rows` (`summarise`, `update` added, then what their seeds add: `seeded`);
    with search.choose_protocol.ties "recipe", a searched choice that ties the best recipe (`tie_to_recipe`) is
    passed over, and the next searched one is judged alike, until a recipe or one beating it beyond noise. A
    recipe takes a tie only where the budget holds it with `spare` (the latency model's error, a fraction) to
    spare: one judged at the budget's edge may be over it at export, where a searched point as good is not."""
    tied: dict[str, str] = {}
    while True:
        result = summarise(study, budget_ms, rows, tied).model_copy(update=update)
        result = result.model_copy(update=seeded(db, study, budget_ms, protocol, result))
        if study.cfg.search.choose_protocol.ties != "recipe" or (recipe := tie_to_recipe(result, criterion(study))) is None:
            return result
        if next(f for f in result.finalists if f.name == recipe).judged_time() > budget_ms * (1 - spare):
            return result.model_copy(update={"tie_at_edge": {result.chosen.name: recipe}})
        tied[result.chosen.name] = recipe


def scored_elsewhere(db: Database, study: Study, c: Candidate, protocol: str,
                      usable: Callable[[dict[str, Any]], bool] = bool) -> dict[str, Any] | None:
    """The short distillation's result for the same student (architecture and starting weights) under the
    same protocol at another budget of the study, the first that is `usable`: the same computation, so it is not run
    twice."""
    for row in _same_student(db, study, c, protocol):
        m = json.loads(row.metrics_json)
        if "fidelity" in m and usable(m):
            return {**{k: m[k] for k in (*SCORE_KEYS, *RUN_KEYS) if k in m}, "scored_at_budget_ms": row.budget_ms}
    return None


def store(db: Database, study: Study, budget_ms: float, c: Candidate, protocol: str, ms: float,
           metrics: dict[str, Any]) -> None:
    blob = json.dumps({**c.proxies, **metrics})
    try:
        with db.session() as s:
            row = s.scalars(select(FinalistRow).where(
                FinalistRow.study == study.name, FinalistRow.budget_ms == budget_ms, FinalistRow.name == c.name,
                FinalistRow.protocol_hash == protocol)).first()
            if row is None:
                s.add(FinalistRow(study=study.name, budget_ms=budget_ms, name=c.name, origin=c.origin,
                                  arch_hash=c.arch.hash(), arch_json=c.arch.canonical_json(), trial_number=c.trial,
                                  protocol_hash=protocol, measured_ms=ms, metrics_json=blob))
            elif "fidelity" in metrics and ("fidelity" not in (old := json.loads(row.metrics_json))
                                            or set(metrics.get("probe") or {}) > set(old.get("probe") or {})
                                            or metrics.get("measured_as") != old.get("measured_as")):
                row.metrics_json = blob  # a finalist once dropped over budget, which the budget now holds, or
                # scored before its fine-tuning was due (a round more was planned then) or by another fine-tuning
    except IntegrityError:  # another process stored this finalist first (two searches sharing one database)
        pass
