"""`nas-bert run`: every stage for the budgets in the study file, resumable stage by stage.

Each stage is itself resumable (a killed stage continues) and records its completion in
`nasbert_stages` with its identity: the fingerprint of every input it was made from (teacher, the
space file's content, corpus, its study sections, the latency device where it times anything, and
the identities of the stages upstream). A rerun skips a stage whose inputs are unchanged without even
loading them, and redoes a stage whose inputs changed and every stage downstream of it;
`nas-bert status` says which and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from nas_bert.choose import Finalist, FinalistsResult, TruncatedReference, choose, truncated_reference
from nas_bert.choose.ranking import ZERO_STEP, rounds_seen, zero_step_proxy
from nas_bert.data import corpus_identity
from nas_bert.data.tasks import check_study_data, data_identity
from nas_bert.distill import DistillResult, MappingResult, distill_student, map_student_layers, mapping_summary
from nas_bert.errors import NasBertError
from nas_bert.evaluate import EvaluationResult, evaluate_path
from nas_bert.evaluation_config import STUDY_DATA_KEYS
from nas_bert.export import ExportResult, export_front
from nas_bert.latency import LatencyReport, device_fingerprint, ensure_latency_model, latency_report
from nas_bert.record import Record
from nas_bert.run_records import RunResult, RunRow, StageRecord
from nas_bert.search import SearchResult, proxy_identity, search
from nas_bert.space import Architecture
from nas_bert.store import Database, StageRow, fingerprint
from nas_bert.study import RUNTIME_LABEL, RUNTIME_VARIANT, SearchConfig, Study
from nas_bert.supernet import SupernetResult, train_supernet
from nas_bert.teacher import embeddings_spec_of, load_teacher_config, teacher_identity

# Which study sections each stage is made from and the stages upstream of it (a budget's stage depends on that
# budget's stages). A stage's identity is the fingerprint of its inputs: teacher, space file, corpus and its
# preprocessing, these sections, the latency device where it times anything, upstream stages' identities.
PLAN: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "supernet": (("supernet",), ()),
    "latency": (("latency",), ()),
    "search": (("search",), ("supernet", "latency")),
    "finalists": (("search", "distill"), ("search",)),
    "map-layers": (("mapping", "distill"), ("finalists",)),
    "distill": (("distill",), ("map-layers",)),
    "evaluate": (("evaluate",), ("distill",)),
    "export": (("latency",), ("evaluate", "finalists")),  # each budget's: its evaluation, the student it exports
    "reference": (("evaluate",), ("finalists", "latency")),
}
TIMED = {"latency", "finalists", "export", "reference"}  # their results depend on the machine


class Reference(Record):
    """The `reference` stage's result: the untouched truncated teacher beside a budget's student."""

    truncated: TruncatedReference | None  # None: no truncated teacher was timed in the finalists' run


# What each stage returns and records; a recorded summary that does not read as its type was recorded by an
# older nas-bert, and the stage is redone.
RESULTS: dict[str, type[BaseModel]] = {
    "supernet": SupernetResult, "latency": LatencyReport, "search": SearchResult, "finalists": FinalistsResult,
    "map-layers": MappingResult, "distill": DistillResult, "evaluate": EvaluationResult, "export": ExportResult,
    "reference": Reference,
}
R = TypeVar("R", bound=BaseModel)


class StageState(Record):
    """A planned stage and whether it is current, as `nas-bert status` prints it."""

    stage: str
    key: str
    state: str  # "current", "to run" or "to redo"
    why: str


def study_inputs(study: Study) -> dict[str, str]:
    """Fingerprints of what every stage shares: teacher, space content, corpus."""
    return {"teacher": teacher_identity(study.cfg.teacher), "space": study.space.fingerprint(),
            "corpus": corpus_identity(study.cfg.corpus)}


def section_inputs(study: Study, sections: tuple[str, ...], timed: bool) -> dict[str, str]:
    """Fingerprints of a stage's study sections (and of the latency device where it times anything)."""
    cfg = study.cfg.model_dump(mode="json")
    # a stage of one budget is keyed by it (adding a budget redoes nothing); reserve_grows, the screen: the finalists'
    for k in ("budgets_ms", "budgets_x", "reserve_grows", "screen_steps", "screen_pool", "grow_recipes",
              *([] if cfg["search"]["local_moves"] else ["local_moves"])):
        cfg["search"].pop(k)
    if not cfg["search"]["shrink_every"]:  # added later: off, it leaves the keys of studies made before it as they were
        cfg["search"].pop("shrink_every"), cfg["search"].pop("shrink_min_uses")
    cfg["search"]["proxy"] = proxy_identity(study)  # an auto proxy that now resolves to gain: its search is redone
    for k in STUDY_DATA_KEYS:  # the study's own tasks, pair sets and out-of-domain texts: none, no key changes
        if not cfg["evaluate"][k]:
            cfg["evaluate"].pop(k)
        else:  # an edited data file redoes what was made from it
            cfg["evaluate"][k] = [{**d, "content": data_identity(d)} for d in cfg["evaluate"][k]]
    for k in ("finalist_runs", *(["runtime"] if cfg["latency"]["runtime"] == "torch" else [])):  # PyTorch's: as they were
        cfg["latency"].pop(k)  # and the finalists' runs key the finalists alone
    by, own = cfg["search"].pop("choose_by"), cfg["search"].pop("choose_protocol")  # added later: default, no key
    for k in ("last_round", "last_round_seeds", "round_seeds", "ties"):  # the finalists' alone (`Runner.inputs`): the search
        own.pop(k, None)  # is not redone for them
    if by != "fidelity":  # the finalists are then ranked on the tasks' data too (fine-tuned: by the choice's protocol)
        ev = cfg["evaluate"] | {k: v for k, v in own.items() if v is not None}  # the evaluation's, own fields changed
        cfg["search"] |= {"choose_by": by, "choose_by_tasks": cfg["evaluate"].get("tasks", []),
                          **({"choose_by_protocol": ev} if "finetune:" in json.dumps(by) else {})}
    out = {k: fingerprint(cfg[k]) for k in sections}
    if timed:
        out["device"] = device_fingerprint(study.cfg.latency)
    return out


# search.choose_protocol.ties as the finalists' key holds it: a recipe keeps a tie only off the budget's edge since
# soon after the "recipe" rule began, so a study chosen before chooses again (`ranked`)
TIES_KEY = {"score": "score", "recipe": "recipe off the budget's edge"}


class Runner:
    """Runs stages in order, skipping those recorded as finished from the same inputs."""

    def __init__(self, study: Study, echo: Callable[[str], None] = print) -> None:
        self.study, self.echo = study, echo
        self.db = Database(study.db_url)
        self.done: list[tuple[str, str, float, bool]] = []  # stage, key, seconds, skipped
        self._shared: dict[str, str] | None = None

    def shared(self) -> dict[str, str]:
        if self._shared is None:
            self._shared = study_inputs(self.study)
        return self._shared

    def _row(self, s: Any, name: str, key: str) -> StageRow | None:
        return s.scalars(select(StageRow).where(StageRow.study == self.study.name, StageRow.stage == name,
                                                StageRow.key == key)).first()

    def recorded(self, name: str, key: str) -> tuple[str | None, dict[str, str]]:
        """The identity a stage was recorded with and its inputs (None: never finished)."""
        with self.db.session() as s:
            row = self._row(s, name, key)
            if row is None:
                return None, {}
            return row.config_hash, _unpack(row)[1]

    def inputs(self, name: str, key: str, sections: tuple[str, ...] | None = None,
               after: tuple[tuple[str, str], ...] | None = None) -> dict[str, str]:
        """Everything the stage `name` (of `key`) is made from, as fingerprints; upstream stages by the identity
        they were recorded with ("missing" when they have not run)."""
        plan_sections, upstream = PLAN.get(name, ((), ()))
        sections = plan_sections if sections is None else sections
        after = tuple((u, _key_of(u, key)) for u in upstream) if after is None else after
        out = {**self.shared(), **section_inputs(self.study, sections, name in TIMED or "latency" in sections)}
        c = self.study.cfg  # added later and read by the finalists alone: at their defaults, keys as they were
        out |= {k: str(v) for k, v, d in (("reserve_grows", c.search.reserve_grows, SearchConfig().reserve_grows),
                                          ("finalist_runs", c.latency.finalist_runs, 1),
                                          ("screen", c.search.screen_steps and (c.search.screen_steps, c.search.screen_pool), 0),
                                          ("grow_recipes", c.search.grow_recipes and "grown, shrunk at the edge", False),
                                          ("last_round", c.search.choose_protocol.last_round
                                           and section_inputs(self.study, ("evaluate",), False)["evaluate"], None),
                                          ("last_round_seeds", c.search.choose_protocol.last_round_seeds, 1),
                                          ("round_seeds", c.search.choose_protocol.round_seeds, 1),
                                          # before it, choices kept the ranking's first: a study chosen so chooses again
                                          ("ties", TIES_KEY.get(c.search.choose_protocol.ties, "score"), "score"))
                if name == "finalists" and v != d}
        for u, k in after:
            out[f"{u} {k}".rstrip()] = self.recorded(u, k)[0] or "missing"
        return out

    def result(self, name: str, key: str, kind: type[R]) -> R | None:
        """The result a stage recorded, if it reads as `kind` (None: never finished, or recorded by an older
        nas-bert in another form)."""
        with self.db.session() as s:
            return _read(kind, _unpack(self._row(s, name, key))[0])

    def stage(self, name: str, key: str, sections: tuple[str, ...] | None, fn: Callable[[], R], kind: type[R],
              after: tuple[tuple[str, str], ...] | None = None) -> R:
        """Run `fn` as the stage `name` (of `key`) unless it finished earlier from the same inputs, then read its
        recorded result back as `kind`; a recorded result that does not read as `kind` is made again."""
        inputs = self.inputs(name, key, sections, after)
        h = fingerprint(inputs)
        with self.db.session() as s:
            row = self._row(s, name, key)
            stored, was = _unpack(row)
            if row is not None and row.config_hash == h:
                result = _read(kind, stored)
                if result is not None:
                    self.echo(f"\n== {name} {key}: finished earlier ({row.seconds:.0f} s), skipped")
                    self.done.append((name, key, row.seconds, True))
                    return result
                note = " (again: recorded by an older nas-bert)"
            elif row is not None:
                note = f" (again: {', '.join(_changed(inputs, was)) or 'inputs'} changed)"
            else:
                note = ""
        self.echo(f"\n== {name} {key}{note}".rstrip())
        t0 = time.perf_counter()
        summary = fn()
        seconds = time.perf_counter() - t0
        with self.db.session() as s:
            row = self._row(s, name, key)
            if row is None:
                row = StageRow(study=self.study.name, stage=name, key=key)
                s.add(row)
            row.config_hash, row.seconds = h, seconds
            row.summary_json = json.dumps({"summary": summary.model_dump(mode="json"), "inputs": inputs}, default=str)
        self.done.append((name, key, seconds, False))
        return summary


def _read(kind: type[R], stored: dict[str, Any]) -> R | None:
    """A recorded summary as `kind` (None where it does not read as one: recorded by an older nas-bert)."""
    try:
        return kind.model_validate(stored)
    except ValidationError:
        return None


def _unpack(row: StageRow | None) -> tuple[dict[str, Any], dict[str, str]]:
    if row is None:
        return {}, {}
    data = json.loads(row.summary_json)
    if isinstance(data, dict) and set(data) == {"summary", "inputs"}:
        return data["summary"], data["inputs"]
    return data, {}  # recorded by an older nas-bert: its inputs are unknown, so it is never current


def _changed(inputs: dict[str, str], was: dict[str, str]) -> list[str]:
    """The inputs whose fingerprint differs from what the stage was recorded with."""
    return sorted(k for k in set(inputs) | set(was) if inputs.get(k) != was.get(k))


def _key_of(upstream: str, key: str) -> str:
    """The key of an upstream stage: the shared stages have none; a budget's stages share the budget's."""
    return "" if upstream in ("supernet", "latency") else key


def resolve_budgets(study: Study, teacher_ms: float | None) -> dict[float, float | None]:
    """The study's budgets in ms -> the fraction of the teacher's latency each was given as (None: in ms):
    `search.budgets_ms` as they are, `search.budgets_x` times `teacher_ms` (the space's largest student timed
    when the latency model was fitted), rounded to 0.01 ms; those are left out while `teacher_ms` is unknown."""
    out: dict[float, float | None] = {float(b): None for b in study.cfg.search.budgets_ms}
    for x in study.cfg.search.budgets_x if teacher_ms else ():
        out.setdefault(round(x * teacher_ms, 2), x)
    return out


def fitted_teacher_ms(study: Study, db: Database) -> float:
    """The teacher's latency the relative budgets are fractions of: the space's largest student, timed when the
    device's latency model was fitted (stage 2; read from the database, nothing is timed again)."""
    emb = embeddings_spec_of(load_teacher_config(study.cfg.teacher))
    ms = ensure_latency_model(db, study.space, emb, study.cfg.latency, progress=False).calibration.reference_ms
    if ms is None:
        raise NasBertError("the latency model records no time of the space's largest student, which search.budgets_x "
                           "are fractions of; give the budgets in ms (search.budgets_ms)")
    return ms


def plan(study: Study, teacher_ms: float | None = None) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """Every stage `nas-bert run` runs for this study, in order: (name, key, upstream (name, key) pairs); the
    budgets given as fractions of the teacher's latency only once `teacher_ms` is known."""
    ms = list(resolve_budgets(study, teacher_ms))
    budgets = [f"{b:g}ms" for b in sorted(ms, reverse=True)]  # as `run`: the largest first
    out = [("supernet", "", ()), ("latency", "", ())]
    for k in budgets:
        out += [(n, k, tuple((u, _key_of(u, k)) for u in PLAN[n][1]))
                for n in ("search", "finalists", "map-layers", "distill", "evaluate")]
    if budgets:
        out.append(("export", ",".join(f"{b:g}" for b in ms), tuple((u, k) for k in budgets for u in PLAN["export"][1])))
        out += [("reference", k, (("finalists", k), ("latency", ""))) for k in budgets]
    return out


def stage_status(study: Study) -> list[StageState]:
    """For each planned stage: current or not, and why (which input changed, or which upstream stage is
    not current), as `nas-bert status` prints it."""
    r = Runner(study, echo=lambda _: None)
    stale: set[tuple[str, str]] = set()
    rows = []
    teacher_ms = fitted.reference_ms if (fitted := r.result("latency", "", LatencyReport)) is not None else None
    if study.cfg.search.budgets_x and teacher_ms is None:
        rows += [StageState(stage="search", key=f"{x:g}x", state="to run",
                            why="a fraction of the teacher's latency: its ms are known once `nas-bert run` has fitted "
                                "the latency model") for x in study.cfg.search.budgets_x]
    for name, key, after in plan(study, teacher_ms):
        recorded, was = r.recorded(name, key)
        inputs = r.inputs(name, key, after=after)
        behind = [f"{u} {k}".rstrip() for u, k in after if (u, k) in stale]
        if recorded is None:
            state, why = "to run", "not finished by `nas-bert run` yet"
        elif behind:
            state, why = "to redo", "upstream not current: " + ", ".join(behind)
        elif not was:
            state, why = "to redo", "recorded by an older nas-bert (inputs unknown)"
        elif name in RESULTS and r.result(name, key, RESULTS[name]) is None:
            state, why = "to redo", "recorded by an older nas-bert (its result reads otherwise now)"
        elif changed := _changed(inputs, was):
            state, why = "to redo", "changed: " + ", ".join(changed)
        else:
            state, why = "current", "inputs unchanged"
        if state != "current":
            stale.add((name, key))
        rows.append(StageState(stage=name, key=key, state=state, why=why))
    r.db.dispose()
    return rows


def shared_stages(r: Runner, study: Study) -> None:
    """Stages 1-2, which every budget shares: the supernet and the latency model."""
    r.stage("supernet", "", None, lambda: train_supernet(study), SupernetResult)

    def latency() -> LatencyReport:
        emb = embeddings_spec_of(load_teacher_config(study.cfg.teacher))
        report = latency_report(ensure_latency_model(r.db, study.space, emb, study.cfg.latency))
        return LatencyReport.model_validate(report.model_dump(exclude={"table"}))  # the database holds the table

    r.stage("latency", "", None, latency, LatencyReport)


@dataclass(frozen=True)
class BudgetStages:
    """What stages 5-8 of one budget yield: the finalists' choice, the distilled student, its evaluation and mapping."""

    finalists: FinalistsResult
    distill: DistillResult
    evaluate: EvaluationResult
    mapping: MappingResult | None = None

    @property
    def chosen(self) -> Finalist:  # the budget's student: the finalists' choice
        return self.finalists.chosen


def student_stages(r: Runner, study: Study, budget: float) -> BudgetStages:
    """Stages 4-8 for one budget: search (with rescoring), the finalists' choice (searched and hand-designed
    students short-distilled, timed and ranked by fidelity), layer mapping, distillation, evaluation."""
    key = f"{budget:g}ms"
    if r.stage("search", key, None, lambda: search(study, budget), SearchResult).chosen is None:
        raise NasBertError(f"the {budget:g} ms search found no feasible student; raise the budget or search.trials")
    fin = r.stage("finalists", key, None, lambda: choose(study, budget), FinalistsResult)
    row = fin.chosen
    arch, start, trial = Architecture.from_json(row.arch_json), row.origin, row.trial
    m = r.stage("map-layers", key, None, lambda: map_student_layers(study, arch, start, budget, trial), MappingResult)
    d = r.stage("distill", key, None, lambda: distill_student(study, arch, start, budget, trial), DistillResult)
    e = r.stage("evaluate", key, None,
                lambda: evaluate_path(study, d.student_path, False, None, study.cfg.evaluate), EvaluationResult)
    return BudgetStages(fin, d, e, m)


def run_study(study: Study, out: Path | None = None, echo: Callable[[str], None] = print) -> RunResult:
    """Stages 1-9 for every budget in `search.budgets_ms`, each skipped where it finished earlier from the same
    inputs (`PLAN`); returns a `RunResult`: the summary table's rows and the stages."""
    if not study.cfg.search.budgets_ms and not study.cfg.search.budgets_x:
        raise NasBertError(f"study file {study.file} lists no budgets; set search.budgets_ms, e.g. [8, 12], or "
                           "search.budgets_x, fractions of the teacher's latency, e.g. [0.25, 0.5]")
    check_study_data(study.cfg.evaluate)  # a missing file or column is one line now, not after hours of training
    out, runtime = out or study.export_dir, study.cfg.latency.runtime
    t0 = time.perf_counter()
    r = Runner(study, echo)
    shared_stages(r, study)
    teacher_ms = fitted_teacher_ms(study, r.db) if study.cfg.search.budgets_x else None
    relative = resolve_budgets(study, teacher_ms)
    budgets = list(relative)
    for b, x in relative.items():
        if x is not None:
            echo(f"budget {x:g}x of the teacher's {teacher_ms:.2f} ms on {RUNTIME_LABEL[runtime]} "
                 f"(timed when the latency model was fitted): {b:g} ms")
    students = {b: student_stages(r, study, b) for b in sorted(budgets, reverse=True)}  # largest first: `carried_points`
    export_key = ",".join(f"{b:g}" for b in budgets)
    x = r.stage("export", export_key, None, lambda: export_front(study, out, budgets, overwrite=True,
                                                               command=f"nas-bert run --config {study.file}"),
                ExportResult, after=tuple((u, f"{b:g}ms") for b in budgets for u in PLAN["export"][1]))
    measured = {st.hash: st for st in x.students}
    rows = []
    for b, s in sorted(students.items(), key=lambda kv: budgets.index(kv[0])):  # rows in the file's order
        e, chosen = s.evaluate, s.chosen
        m = measured.get(s.distill.arch_hash)
        # beside each student, the untouched truncated teacher of the nearest measured latency
        ref = r.stage("reference", f"{b:g}ms", None,
                      lambda b=b, chosen=chosen: Reference(truncated=truncated_reference(study, b, chosen.measured_ms)),
                      Reference).truncated
        rows.append(RunRow(
            budget_ms=b, budget_x=relative[b], trial=chosen.trial, student=chosen.name, origin=chosen.origin,
            architecture=chosen.architecture, params=s.distill.params, predicted_ms=chosen.predicted_ms,
            predicted_now_ms=m.predicted_now_ms if m else None, finalist_ms=chosen.measured_ms,
            finalist_judged_ms=chosen.judged_time(),
            over_budget=chosen.over_budget or bool(m and m.over_budget), drift=m.drift if m else None,
            measured_ms=m.measured_ms.get(RUNTIME_VARIANT[runtime]) if m else None, judged_ms=m.judged_ms if m else None,
            onnx_int8_ms=m.measured_ms.get("onnx_int8") if m else None, teacher_ms=m.teacher_ms if m else None,
            **{k: getattr(e, k) for k in ("fidelity", "ood_fidelity", "accuracy", "teacher_accuracy", "accuracy_ratio",
                                          "accuracy_ratio_low", "accuracy_ratio_high", "label_loyalty", "probability_loyalty")},
            truncated=ref, folder=str(out / m.name) if m else None, margin=s.finalists.margin,
            rounds=rounds_seen(s.finalists, study.cfg.search.finalist_steps), mapping=mapping_summary(s.mapping, s.distill),
            **{k: v for k, v in (("tied_with", s.finalists.tied_with_recipe), ("tie_at_edge", s.finalists.tie_at_edge)) if v},
            proxy=(p := zero_step_proxy(study)), proxy_tau=s.finalists.kendall_tau_vs_fidelity.get(ZERO_STEP[p]),
            **({"screen_steps": n, "screen_tau": s.finalists.kendall_tau_vs_fidelity.get("screen_fidelity")}
               if (n := study.cfg.search.screen_steps) else {}),
            **{k: v for k in ("tasks", "pairs", "ood") if (v := getattr(e, k)) is not None}))
    stages = [StageRecord(stage=n, key=k, seconds=round(sec, 1), skipped=sk) for n, k, sec, sk in r.done]
    return RunResult(study=study.name, out=str(out), pareto_png=str(out / "pareto.png"), students=rows, runtime=runtime,
                     stages=stages, seconds=round(time.perf_counter() - t0, 1))
