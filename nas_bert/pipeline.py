"""`nas-bert run`: every stage for the budgets in the study file, resumable stage by stage.

Each stage is itself resumable (a killed stage continues) and records its completion in
`nasbert_stages` with a hash of the settings it ran with, so a rerun skips finished stages
without even loading their inputs, and reruns a stage whose settings changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from nas_bert.config import Study
from nas_bert.db import Database, StageRow
from nas_bert.errors import NasBertError


def _config_hash(study: Study, sections: tuple[str, ...]) -> str:
    cfg = study.cfg.model_dump(mode="json")
    cfg["search"].pop("budgets_ms")  # a stage of one budget is keyed by it: adding a budget redoes nothing
    blob = json.dumps({k: cfg[k] for k in ("teacher", "search_space", "corpus", *sections)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Runner:
    """Runs stages in order, skipping those recorded as finished with the same settings."""

    def __init__(self, study: Study, echo: Callable[[str], None] = print) -> None:
        self.study, self.echo = study, echo
        self.db = Database(study.db_url)
        self.done: list[tuple[str, str, float, bool]] = []  # stage, key, seconds, skipped

    def stage(self, name: str, key: str, sections: tuple[str, ...], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        h = _config_hash(self.study, sections)
        with self.db.session() as s:
            row = s.scalars(select(StageRow).where(StageRow.study == self.study.name, StageRow.stage == name,
                                                   StageRow.key == key)).first()
            if row is not None and row.config_hash == h:
                self.echo(f"\n== {name} {key}: finished earlier ({row.seconds:.0f} s), skipped")
                self.done.append((name, key, row.seconds, True))
                return json.loads(row.summary_json)
        self.echo(f"\n== {name} {key}".rstrip())
        t0 = time.perf_counter()
        summary = fn()
        seconds = time.perf_counter() - t0
        with self.db.session() as s:
            row = s.scalars(select(StageRow).where(StageRow.study == self.study.name, StageRow.stage == name,
                                                   StageRow.key == key)).first()
            if row is None:
                row = StageRow(study=self.study.name, stage=name, key=key)
                s.add(row)
            row.config_hash, row.summary_json, row.seconds = h, json.dumps(summary, default=str), seconds
        self.done.append((name, key, seconds, False))
        return summary


def shared_stages(r: Runner, study: Study) -> None:
    """Stages 1-2, which every budget shares: the supernet and the latency model."""
    from nas_bert.blockwise import train_supernet
    from nas_bert.latency import ensure_latency_model, latency_report
    from nas_bert.teacher import embeddings_spec_of, load_teacher_config

    r.stage("supernet", "", ("supernet",), lambda: train_supernet(study))

    def latency() -> dict[str, Any]:
        emb = embeddings_spec_of(load_teacher_config(study.cfg.teacher))
        report = latency_report(ensure_latency_model(r.db, study.space, emb, study.cfg.latency))
        return {k: v for k, v in report.items() if k != "table"}

    r.stage("latency", "", ("latency",), latency)


def student_stages(r: Runner, study: Study, budget: float) -> dict[str, Any]:
    """Stages 4-8 for one budget: search (with rescoring), the finalists' choice (searched and hand-designed
    students short-distilled, timed and ranked by fidelity), layer mapping, distillation, evaluation."""
    from nas_bert.architecture import Architecture
    from nas_bert.evaluate import evaluate_path
    from nas_bert.finalists import choose
    from nas_bert.search import search
    from nas_bert.students import distill_student, map_student_layers

    key = f"{budget:g}ms"
    if r.stage("search", key, ("supernet", "latency", "search"), lambda: search(study, budget))["chosen"] is None:
        raise NasBertError(f"the {budget:g} ms search found no feasible student; raise the budget or search.trials")
    fin = r.stage("finalists", key, ("supernet", "latency", "search", "distill"), lambda: choose(study, budget))
    row = fin["chosen"]
    arch, start, trial = Architecture.from_json(row["arch_json"]), row["origin"], row["trial"]
    r.stage("map-layers", key, ("supernet", "search", "mapping", "distill"),
            lambda: map_student_layers(study, arch, start, budget, trial))
    d = r.stage("distill", key, ("supernet", "search", "mapping", "distill"),
                lambda: distill_student(study, arch, start, budget, trial))
    e = r.stage("evaluate", key, ("supernet", "search", "mapping", "distill", "evaluate"),
                lambda: evaluate_path(study, d["student_path"], False, "wordnet", study.cfg.evaluate))
    return {"search": row, "finalists": fin, "distill": d, "evaluate": e}


def run_study(study: Study, out: Path | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Stages 1-9 for every budget in `search.budgets_ms`; returns the summary table's rows."""
    from nas_bert.export import export_front
    from nas_bert.finalists import truncated_reference

    budgets = study.cfg.search.budgets_ms
    if not budgets:
        raise NasBertError(f"study file {study.file} lists no budgets; set search.budgets_ms, e.g. [8, 12]")
    out = out or study.workdir / "export"
    t0 = time.perf_counter()
    r = Runner(study, echo)
    shared_stages(r, study)
    students = {b: student_stages(r, study, b) for b in budgets}
    x = r.stage("export", ",".join(f"{b:g}" for b in budgets), ("supernet", "latency", "search", "mapping", "distill", "evaluate"),
                lambda: export_front(study, out, budgets, overwrite=True,
                                     command=f"nas-bert run --config {study.file}"))
    measured = {st["hash"]: st for st in x["students"]}
    rows = []
    for b, s in students.items():
        h, e, chosen = s["distill"]["arch_hash"], s["evaluate"], s["search"]
        m = measured.get(h, {})
        # beside each student, the untouched truncated teacher of the nearest measured latency
        ref = r.stage("reference", f"{b:g}ms", ("latency", "search", "evaluate"),
                      lambda b=b, chosen=chosen: {"truncated": truncated_reference(study, b, chosen["measured_ms"])}
                      )["truncated"]
        rows.append({"budget_ms": b, "trial": chosen["trial"], "student": chosen["name"], "origin": chosen["origin"],
                     "architecture": chosen["architecture"], "params": s["distill"]["params"],
                     "predicted_ms": chosen.get("predicted_ms"), "finalist_ms": chosen["measured_ms"],
                     "over_budget": chosen["over_budget"] or bool(m.get("over_budget")), "drift": m.get("drift"),
                     "measured_ms": m.get("measured_ms", {}).get("torch_fp32"),
                     "onnx_int8_ms": m.get("measured_ms", {}).get("onnx_int8"), "teacher_ms": m.get("teacher_ms"),
                     "fidelity": e.get("fidelity"), "ood_fidelity": e.get("ood_fidelity"),
                     "accuracy": e.get("accuracy"),
                     "teacher_accuracy": e.get("teacher_accuracy"), "accuracy_ratio": e.get("accuracy_ratio"),
                     "label_loyalty": e.get("label_loyalty"), "probability_loyalty": e.get("probability_loyalty"),
                     "truncated": ref, "folder": str(out / m["name"]) if m else None})
    return {"study": study.name, "out": str(out), "pareto_png": str(out / "pareto.png"), "students": rows,
            "stages": [{"stage": n, "key": k, "seconds": round(sec, 1), "skipped": sk} for n, k, sec, sk in r.done],
            "seconds": round(time.perf_counter() - t0, 1)}
