"""The end of a budget's search: its best feasible candidates rescored end to end, its feasible Pareto
front and the student it yields, one row per architecture.
"""

from __future__ import annotations

import math
from typing import ClassVar

import optuna
from optuna.trial import TrialState
from pydantic import RootModel
from sqlalchemy import select
from tqdm.auto import tqdm

from nas_bert.errors import NasBertError
from nas_bert.record import Record
from nas_bert.search.context import SearchContext
from nas_bert.search.scoring import kendall_tau
from nas_bert.search.storage import optuna_study_name, storage_for
from nas_bert.space import Architecture, Embeddings, families
from nas_bert.store import ArchitectureRow, Database
from nas_bert.study import Study


class FrontRow(Record):
    """One architecture of a budget's search, named by its first trial."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"seed"})

    trial: int
    hash: str
    params: int
    flops: int
    predicted_ms: float
    approx_loss: float
    rescored_loss: float | None
    measured_ms: float | None  # timed by an export
    architecture: str
    seed: str | None = None  # a seed student's name (the fastest, the teacher's first layers); absent otherwise


class Fronts(RootModel[dict[str, list[FrontRow]]]):
    """`nas-bert pareto`'s result: each searched budget's feasible front, keyed by the budget in ms ("5")."""


class SearchResult(Record):
    """Stage 4's result for one budget: the trials' counts, the feasible front and the student it yields."""

    study: str
    optuna_study: str
    budget_ms: float
    trials: dict[str, int]  # trial state (complete, fail, pruned, running, waiting) -> count
    feasible: int
    front: list[FrontRow]
    chosen: FrontRow | None  # None: no feasible trial
    kendall_tau: float | None  # approximate vs rescored loss; None with fewer than two rescored
    rescored: int
    block_scores_computed: int
    seconds: float


def finish_search(ctx: SearchContext, budget_ms: float, seconds: float) -> SearchResult:
    """The end of stage 4: rescore the best feasible candidates end to end; summarise the study (`seconds`: how
    long the search ran)."""
    study, cfg = ctx.study, ctx.study.cfg.search
    name = optuna_study_name(study, budget_ms)
    study_ = optuna.load_study(study_name=name, storage=storage_for(study))
    trials = study_.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if t.values[1] <= budget_ms]
    # the best T distinct feasible architectures by approximate loss (in a space made from the teacher, T besides
    # its hand-designed points, which the finalists judge as their families), and every member of the front
    recipes = recipe_hashes(study, ctx.teacher.embeddings_spec())
    best: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(feasible, key=lambda t: t.values[0]):
        if len(best) == cfg.rescore_top:
            break
        if t.user_attrs["arch_hash"] not in recipes:
            best.setdefault(t.user_attrs["arch_hash"], t)
    for t in [*study_.best_trials, *(t for t in feasible if "seed" in t.user_attrs)]:
        if t.values[1] <= budget_ms:
            best.setdefault(t.user_attrs["arch_hash"], t)
    approx, rescored = [], []
    for h in tqdm(best, desc="rescore", leave=False):
        with ctx.db.session() as s:
            row = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name, ArchitectureRow.hash == h)).one()
            if row.rescored_loss is None:
                row.rescored_loss = ctx.rescore(Architecture.from_json(row.arch_json))
            approx.append(row.approx_loss)
            rescored.append(row.rescored_loss)
    front = pareto_rows(ctx.db, study, budget_ms)
    chosen = chosen_row(ctx.db, study, budget_ms)
    return SearchResult(
        study=study.name, optuna_study=name, budget_ms=budget_ms,
        trials={s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        feasible=len(feasible), front=front, chosen=chosen,
        kendall_tau=kendall_tau(approx, rescored), rescored=len(rescored),
        block_scores_computed=ctx.scorer.computed, seconds=round(seconds, 1),
    )


def recipe_hashes(study: Study, emb: Embeddings) -> set[str]:
    """The hashes of the hand-designed points of a space made from the teacher (empty for another space)."""
    return {arch.hash() for _, arch in families(study.space, emb).values()}


def _load(study: Study, budget_ms: float) -> optuna.Study:
    try:
        return optuna.load_study(study_name=optuna_study_name(study, budget_ms), storage=storage_for(study))
    except KeyError:
        raise NasBertError(f"no search for budget {budget_ms:g} ms in study '{study.name}'; run `nas-bert search "
                           f"--config {study.file} --latency-budget-ms {budget_ms:g}`") from None


def _arch_rows(db: Database, study: Study, trials: list[optuna.trial.FrozenTrial]) -> list[FrontRow]:
    """One row per distinct architecture, in the trials' order (its first trial names it)."""
    with db.session() as s:
        rows = {r.hash: r for r in s.scalars(select(ArchitectureRow).where(
            ArchitectureRow.study == study.name, ArchitectureRow.hash.in_({t.user_attrs["arch_hash"] for t in trials})))}
        seen: dict[str, FrontRow] = {}
        for t in trials:
            h = t.user_attrs["arch_hash"]
            if h not in seen:
                row = rows[h]
                seen[h] = FrontRow(trial=t.number, hash=h, params=row.params, flops=row.flops,
                                   predicted_ms=row.predicted_ms, approx_loss=row.approx_loss,
                                   rescored_loss=row.rescored_loss, measured_ms=row.measured_ms,
                                   architecture=str(Architecture.from_json(row.arch_json)),
                                   **({"seed": t.user_attrs["seed"]} if "seed" in t.user_attrs else {}))
    return list(seen.values())


def pareto_rows(db: Database, study: Study, budget_ms: float) -> list[FrontRow]:
    """The feasible Pareto front (approximate loss vs predicted latency), one row per architecture."""
    front = sorted(_load(study, budget_ms).best_trials, key=lambda t: t.values[1])
    return _arch_rows(db, study, [t for t in front if t.values[1] <= budget_ms])


def chosen_row(db: Database, study: Study, budget_ms: float) -> FrontRow | None:
    """The student a budget yields: the lowest rescored loss among the feasible candidates rescoring saw
    (the best by approximate loss, the front, the seed students); before rescoring, the front's best."""
    done = _load(study, budget_ms).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rescored = [r for r in _arch_rows(db, study, [t for t in done if t.values[1] <= budget_ms])
                if r.rescored_loss is not None]
    return min(rescored or pareto_rows(db, study, budget_ms), default=None, key=lambda r: (
        r.rescored_loss if r.rescored_loss is not None else math.inf, r.approx_loss))
