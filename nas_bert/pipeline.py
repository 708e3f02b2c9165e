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
from pathlib import Path
from typing import Any

from sqlalchemy import select

from nas_bert.data import corpus_identity
from nas_bert.errors import NasBertError
from nas_bert.store import Database, StageRow, fingerprint
from nas_bert.study import Study
from nas_bert.teacher import teacher_identity

# Which study sections each stage is made from, and the stages upstream of it (by name; a stage of a
# budget depends on the same budget's stages). A stage's identity is the fingerprint of its inputs: the
# teacher, the space file's content, the corpus and its preprocessing, these sections, the latency
# device where it times anything, and the identities upstream stages were recorded with.
PLAN: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "supernet": (("supernet",), ()),
    "latency": (("latency",), ()),
    "search": (("search",), ("supernet", "latency")),
    "finalists": (("search", "distill"), ("search",)),
    "map-layers": (("mapping", "distill"), ("finalists",)),
    "distill": (("distill",), ("map-layers",)),
    "evaluate": (("evaluate",), ("distill",)),
    "export": (("latency",), ("evaluate",)),
    "reference": (("evaluate",), ("finalists", "latency")),
}
TIMED = {"latency", "finalists", "export", "reference"}  # their results depend on the machine


def study_inputs(study: Study) -> dict[str, str]:
    """Fingerprints of what every stage shares: teacher, space content, corpus."""
    return {"teacher": teacher_identity(study.cfg.teacher), "space": study.space.fingerprint(),
            "corpus": corpus_identity(study.cfg.corpus)}


def section_inputs(study: Study, sections: tuple[str, ...], timed: bool) -> dict[str, str]:
    from nas_bert.latency import device_fingerprint

    cfg = study.cfg.model_dump(mode="json")
    cfg["search"].pop("budgets_ms")  # a stage of one budget is keyed by it: adding a budget redoes nothing
    out = {k: fingerprint(cfg[k]) for k in sections}
    if timed:
        out["device"] = device_fingerprint(study.cfg.latency)
    return out


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
        if after is None:
            after = tuple((u, _key_of(u, key)) for u in upstream)
        out = {**self.shared(), **section_inputs(self.study, sections, name in TIMED or "latency" in sections)}
        for u, k in after:
            out[f"{u} {k}".rstrip()] = self.recorded(u, k)[0] or "missing"
        return out

    def stage(self, name: str, key: str, sections: tuple[str, ...] | None, fn: Callable[[], dict[str, Any]],
              after: tuple[tuple[str, str], ...] | None = None) -> dict[str, Any]:
        inputs = self.inputs(name, key, sections, after)
        h = fingerprint(inputs)
        with self.db.session() as s:
            row = self._row(s, name, key)
            if row is not None and row.config_hash == h:
                self.echo(f"\n== {name} {key}: finished earlier ({row.seconds:.0f} s), skipped")
                self.done.append((name, key, row.seconds, True))
                return _unpack(row)[0]
            changed = _changed(inputs, _unpack(row)[1]) if row is not None else []
        note = f" (again: {', '.join(changed) or 'inputs'} changed)" if row is not None else ""
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
            row.summary_json = json.dumps({"summary": summary, "inputs": inputs}, default=str)
        self.done.append((name, key, seconds, False))
        return summary


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


def plan(study: Study) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """Every stage `nas-bert run` runs for this study, in order: (name, key, upstream (name, key) pairs)."""
    budgets = [f"{b:g}ms" for b in study.cfg.search.budgets_ms]
    out = [("supernet", "", ()), ("latency", "", ())]
    for k in budgets:
        out += [(n, k, tuple((u, _key_of(u, k)) for u in PLAN[n][1]))
                for n in ("search", "finalists", "map-layers", "distill", "evaluate")]
    if budgets:
        export_key = ",".join(f"{b:g}" for b in study.cfg.search.budgets_ms)
        out.append(("export", export_key, tuple(("evaluate", k) for k in budgets)))
        out += [("reference", k, (("finalists", k), ("latency", ""))) for k in budgets]
    return out


def stage_status(study: Study) -> list[dict[str, Any]]:
    """For each planned stage: current or not, and why (which input changed, or which upstream stage is
    not current), as `nas-bert status` prints it."""
    r = Runner(study, echo=lambda _: None)
    stale: set[tuple[str, str]] = set()
    rows = []
    for name, key, after in plan(study):
        recorded, was = r.recorded(name, key)
        inputs = r.inputs(name, key, after=after)
        behind = [f"{u} {k}".rstrip() for u, k in after if (u, k) in stale]
        if recorded is None:
            state, why = "to run", "not finished by `nas-bert run` yet"
        elif behind:
            state, why = "to redo", "upstream not current: " + ", ".join(behind)
        elif not was:
            state, why = "to redo", "recorded by an older nas-bert (inputs unknown)"
        elif changed := _changed(inputs, was):
            state, why = "to redo", "changed: " + ", ".join(changed)
        else:
            state, why = "current", "inputs unchanged"
        if state != "current":
            stale.add((name, key))
        rows.append({"stage": name, "key": key, "state": state, "why": why})
    r.db.dispose()
    return rows


def shared_stages(r: Runner, study: Study) -> None:
    """Stages 1-2, which every budget shares: the supernet and the latency model."""
    from nas_bert.latency import ensure_latency_model, latency_report
    from nas_bert.supernet import train_supernet
    from nas_bert.teacher import embeddings_spec_of, load_teacher_config

    r.stage("supernet", "", None, lambda: train_supernet(study))

    def latency() -> dict[str, Any]:
        emb = embeddings_spec_of(load_teacher_config(study.cfg.teacher))
        report = latency_report(ensure_latency_model(r.db, study.space, emb, study.cfg.latency))
        return {k: v for k, v in report.items() if k != "table"}

    r.stage("latency", "", None, latency)


def student_stages(r: Runner, study: Study, budget: float) -> dict[str, Any]:
    """Stages 4-8 for one budget: search (with rescoring), the finalists' choice (searched and hand-designed
    students short-distilled, timed and ranked by fidelity), layer mapping, distillation, evaluation."""
    from nas_bert.choose import choose
    from nas_bert.distill import distill_student, map_student_layers
    from nas_bert.evaluate import evaluate_path
    from nas_bert.search import search
    from nas_bert.space import Architecture

    key = f"{budget:g}ms"
    if r.stage("search", key, None, lambda: search(study, budget))["chosen"] is None:
        raise NasBertError(f"the {budget:g} ms search found no feasible student; raise the budget or search.trials")
    fin = r.stage("finalists", key, None, lambda: choose(study, budget))
    row = fin["chosen"]
    arch, start, trial = Architecture.from_json(row["arch_json"]), row["origin"], row["trial"]
    r.stage("map-layers", key, None,
            lambda: map_student_layers(study, arch, start, budget, trial))
    d = r.stage("distill", key, None,
                lambda: distill_student(study, arch, start, budget, trial))
    e = r.stage("evaluate", key, None,
                lambda: evaluate_path(study, d["student_path"], False, "wordnet", study.cfg.evaluate))
    return {"search": row, "finalists": fin, "distill": d, "evaluate": e}


def run_study(study: Study, out: Path | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Stages 1-9 for every budget in `search.budgets_ms`; returns the summary table's rows."""
    from nas_bert.choose import truncated_reference
    from nas_bert.export import export_front

    budgets = study.cfg.search.budgets_ms
    if not budgets:
        raise NasBertError(f"study file {study.file} lists no budgets; set search.budgets_ms, e.g. [8, 12]")
    out = out or study.export_dir
    t0 = time.perf_counter()
    r = Runner(study, echo)
    shared_stages(r, study)
    students = {b: student_stages(r, study, b) for b in budgets}
    export_key = ",".join(f"{b:g}" for b in budgets)
    x = r.stage("export", export_key, None, lambda: export_front(study, out, budgets, overwrite=True,
                                                               command=f"nas-bert run --config {study.file}"),
                after=tuple(("evaluate", f"{b:g}ms") for b in budgets))
    measured = {st["hash"]: st for st in x["students"]}
    rows = []
    for b, s in students.items():
        h, e, chosen = s["distill"]["arch_hash"], s["evaluate"], s["search"]
        m = measured.get(h, {})
        # beside each student, the untouched truncated teacher of the nearest measured latency
        ref = r.stage("reference", f"{b:g}ms", None,
                      lambda b=b, chosen=chosen: {"truncated": truncated_reference(study, b, chosen["measured_ms"])}
                      )["truncated"]
        rows.append({"budget_ms": b, "trial": chosen["trial"], "student": chosen["name"], "origin": chosen["origin"],
                     "architecture": chosen["architecture"], "params": s["distill"]["params"],
                     "predicted_ms": chosen.get("predicted_ms"), "predicted_now_ms": m.get("predicted_now_ms"),
                     "finalist_ms": chosen["measured_ms"],
                     "finalist_judged_ms": chosen.get("judged_ms", chosen["measured_ms"]),
                     "over_budget": chosen["over_budget"] or bool(m.get("over_budget")), "drift": m.get("drift"),
                     "measured_ms": m.get("measured_ms", {}).get("torch_fp32"), "judged_ms": m.get("judged_ms"),
                     "onnx_int8_ms": m.get("measured_ms", {}).get("onnx_int8"), "teacher_ms": m.get("teacher_ms"),
                     "fidelity": e.get("fidelity"), "ood_fidelity": e.get("ood_fidelity"),
                     "accuracy": e.get("accuracy"),
                     "teacher_accuracy": e.get("teacher_accuracy"), "accuracy_ratio": e.get("accuracy_ratio"),
                     "label_loyalty": e.get("label_loyalty"), "probability_loyalty": e.get("probability_loyalty"),
                     "truncated": ref, "folder": str(out / m["name"]) if m else None})
    return {"study": study.name, "out": str(out), "pareto_png": str(out / "pareto.png"), "students": rows,
            "stages": [{"stage": n, "key": k, "seconds": round(sec, 1), "skipped": sk} for n, k, sec, sk in r.done],
            "seconds": round(time.perf_counter() - t0, 1)}
