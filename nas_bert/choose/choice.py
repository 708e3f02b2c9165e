"""The budget's choice as recorded: the latest finalists' run (`choose` writes it), its student for the export,
`nas-bert distill` and the service."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nas_bert.choose.candidates import Candidate
from nas_bert.choose.ranking import BEFORE_KEYS, SCORE_KEYS, Finalist, FinalistsResult, summarise
from nas_bert.distill import DistillResult, distill_student, resolve_budget
from nas_bert.errors import NasBertError
from nas_bert.space import Architecture
from nas_bert.store import ChoiceRow, Database, FinalistRow, StageRow
from nas_bert.study import Study


def _choice_row(s: Any, study: Study, budget_ms: float) -> ChoiceRow | None:
    return s.scalars(select(ChoiceRow).where(ChoiceRow.study == study.name, ChoiceRow.budget_ms == budget_ms)).first()


def record_choice(db: Database, study: Study, budget_ms: float, protocol: str, result: FinalistsResult) -> None:
    """Record a finalists' run's result as the budget's choice, over any earlier run's."""
    for _ in range(2):
        try:
            with db.session() as s:
                if (row := _choice_row(s, study, budget_ms)) is None:
                    row = ChoiceRow(study=study.name, budget_ms=budget_ms)
                    s.add(row)
                row.protocol_hash, row.result_json = protocol, result.model_dump_json()
            return
        except IntegrityError:  # another process sharing the study recorded it first: this run's is written over it
            continue


def latest_choice(db: Database, study: Study, budget_ms: float) -> FinalistsResult | None:
    """The budget's latest finalists' run as `choose` returned it (None before stage 5 ran; for a database whose
    choice predates its record, `nas-bert run`'s record of the stage, if any)."""
    with db.session() as s:
        row = _choice_row(s, study, budget_ms)
        stage = None if row is not None else s.scalars(select(StageRow).where(
            StageRow.study == study.name, StageRow.stage == "finalists", StageRow.key == f"{budget_ms:g}ms")).first()
        blob = row.result_json if row is not None else stage.summary_json if stage is not None else None
    if blob is None:
        return None
    data = json.loads(blob)
    try:
        return FinalistsResult.model_validate(data["summary"] if row is None else data)
    except (KeyError, TypeError, ValidationError):  # recorded by an older nas-bert in another form
        return None


def tied_with(db: Database, study: Study, budget_ms: float, recipe: str) -> list[str] | None:
    """The searched finalists the budget's latest choice passed over for `recipe` on a tie (None: none)."""
    choice = latest_choice(db, study, budget_ms)
    return [n for n, r in ((choice and choice.tied_with_recipe) or {}).items() if r == recipe] or None


def chosen_finalist(db: Database, study: Study, budget_ms: float) -> Finalist | None:
    """The budget's student chosen by the latest finalists' run (None before stage 5 ran). The finalists' rows
    alone decide only for a database that recorded no choice: a student of an earlier run that the latest timed
    over the budget, or did not time, would stand there with its old figures."""
    if (choice := latest_choice(db, study, budget_ms)) is not None:
        return choice.chosen
    with db.session() as s:
        rows = s.scalars(select(FinalistRow).where(FinalistRow.study == study.name, FinalistRow.budget_ms == budget_ms)
                         .order_by(FinalistRow.id)).all()
    if not rows:
        return None
    latest = rows[-1].protocol_hash
    found = []
    for r in rows:
        if r.protocol_hash != latest:
            continue
        m = json.loads(r.metrics_json)
        if m.get("rounds"):  # the row's own figures are its first round's: the choice ranked by its last
            last = m["rounds"][-1]
            m = {**m, **{k: last[k] for k in SCORE_KEYS if k in last and k not in BEFORE_KEYS}}
        cand = Candidate(r.name, r.origin, Architecture.from_json(r.arch_json), r.trial_number)
        found.append({**cand.to_dict(), **m, "measured_ms": r.measured_ms,
                      "over_budget": bool(m.get("over_budget"))})
    return summarise(study, budget_ms, found).chosen if found else None


def distill_chosen(study: Study, budget: float | None = None, steps: int | None = None,
                   mapping: list[int] | None = None) -> DistillResult:
    """Stage 7 for the budget's chosen student (the finalists' choice, searched or hand-designed: what `nas-bert
    run` distils and exports), e.g. again with more steps (a finished one continues); see `distill_student`."""
    budget = resolve_budget(study, budget)
    fin = chosen_finalist(Database(study.db_url), study, budget)
    if fin is None:
        raise NasBertError(f"the {budget:g} ms budget of study '{study.name}' has no finalists' choice yet; run "
                           f"`nas-bert run --config {study.file}` first, or pass --trial N (see `nas-bert pareto`)")
    return distill_student(study, Architecture.from_json(fin.arch_json), fin.origin, budget, fin.trial, steps, mapping)


__all__ = ["chosen_finalist", "distill_chosen", "latest_choice", "record_choice"]
