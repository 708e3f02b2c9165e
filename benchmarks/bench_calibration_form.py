"""The calibration's form judged on the timing runs a study kept: with and without the per-resize term.

    python benchmarks/bench_calibration_form.py --config studies/demo.yaml [--db sqlite:///...] [--workdir DIR]

Every timing run of a study that timed the latency model's calibration students beside the students it
judged is refitted here, offline, in two forms, and each form predicts the run's judged students:

- the finalists' runs (one per budget): calibration rows "calibration:<budget>:<teacher>:<i>" and the
  finalists the table can predict, with their measured milliseconds (the stage's summary);
- the export's runs (one per exported student): `latency.calibration_ms` and `torch_fp32` in nas_bert.json;
- bench_latency_chosen's run, where it has been run: latency_chosen.json (the pools of 30 per budget);
- the latency stage's own fit (the stored calibration's students) judged on every finalist of a budget given as a
  fraction of the teacher (`judged_ms`: its time at the fitted speed, which is what the search's model predicts;
  the embeddings alone left out).

Forms: `a x raw + c x operators + w x resizes + b` (the model since calibration version 3), the same
without w (version 2), both fitted by `fit_calibration` on the same timings (resizes set to 0 give the
old form exactly), so the difference is the form's alone, both with c >= 0 and floored at `a x raw` as they were
fitted before the fit knew the table's cheapest operator; the fit the model makes now (`LatencyModel.refitted`
through the reference student, the teacher's layers, with c >= -a x the cheapest operator, floored only where
no fitted student is lifted); and, not a form the model uses, a second slope for
the students at the teacher's width (`a x raw + f x raw x [no resize] + c x operators + b`, unconstrained least
squares on the relative error). Nothing is timed; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import table
from nas_bert.choose import FinalistsResult
from nas_bert.latency import (
    CALIBRATION_VERSION,
    REFERENCE,
    Calibration,
    LatencyModel,
    calibration_architectures,
    calibration_key,
    device_fingerprint,
    fit_calibration,
    load_table,
    operators,
    resizes,
)
from nas_bert.space import Architecture
from nas_bert.store import ArchitectureRow, Database, FinalistRow, LatencyCalibration, LatencyRow, StageRow, sha256_hex
from nas_bert.study import load_study
from nas_bert.teacher import embeddings_spec_of, load_teacher_config

Run = tuple[str, list[float], list[tuple[Architecture, float]]]  # label, calibration ms, (judged, measured ms)


def finalists_runs(db: Database, study: Any, fp: str) -> list[Run]:
    teacher = sha256_hex(study.cfg.teacher, 12)  # the tag `choose.timing` keys calibration rows with
    with db.session() as s:
        # the study's own timing runs (rows keyed by study since schema version 2), of its current teacher
        cal_rows = {r.key: r.ms for r in s.scalars(select(LatencyRow).where(
            LatencyRow.fingerprint == fp, LatencyRow.study == study.name, LatencyRow.key.like("calibration:%")))
            if r.key.split(":")[2] == teacher}
        stored = [json.loads(r.summary_json).get("summary") or {} for r in s.scalars(select(StageRow).where(
            StageRow.study == study.name, StageRow.stage == "finalists"))]
    stages = []
    for summary in stored:
        try:
            stages.append(FinalistsResult.model_validate(summary))
        except ValidationError:  # recorded by an older nas-bert
            continue
    runs = []
    for result in sorted(stages, key=lambda x: x.budget_ms):
        budget = f"{result.budget_ms:g}"
        mine = sorted(((k, v) for k, v in cal_rows.items() if k.split(":")[1] == budget),
                      key=lambda kv: int(kv[0].rsplit(":", 1)[1]))
        judged = [(Architecture.from_json(r.arch_json), r.measured_ms) for r in result.finalists
                  if r.predicted_ms is not None]
        if mine and judged:
            runs.append((f"finalists {budget} ms", [v for _, v in mine], judged))
    return runs


def export_runs(workdir: Path) -> list[Run]:
    runs = []
    for f in sorted(workdir.glob("export/*/nas_bert.json")):
        d = json.loads(f.read_text())
        lat = d.get("latency", {})
        if lat.get("calibration_ms") and d.get("predicted_ms") is not None:
            runs.append((f"export {d['budget_ms']:g} ms", lat["calibration_ms"],
                         [(Architecture.from_dict(d["architecture"]), lat["torch_fp32"])]))
    return runs


def bench_run(db: Database, workdir: Path) -> list[Run]:
    path = workdir / "latency_chosen.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    with db.session() as s:
        archs = {r.hash: Architecture.from_json(r.arch_json) for r in s.scalars(select(ArchitectureRow))}
    judged = [(archs[r["hash"]], r["measured_ms"]) for r in d["rows"] if r["hash"] in archs]
    return [("bench_latency_chosen pools", [p[-1] for p in d["calibration_points"]], judged)]


def stage_run(db: Database, study: Any, fp: str) -> list[Run]:
    """The latency stage's calibration students (their times, in `calibration_architectures`' order) and every
    finalist of the study's budgets with its judged time (but the embeddings alone, 0.1 ms: no budget's edge)."""
    with db.session() as s:  # the stored calibration of this version, else of the newest older one (refitted here)
        row = next((r for v in range(CALIBRATION_VERSION, 2, -1)
                    if (r := s.get(LatencyCalibration, calibration_key(fp, study.space, study.cfg.latency, v)))), None)
        judged = [(a, m["judged_ms"]) for r in s.scalars(select(FinalistRow).where(FinalistRow.study == study.name))
                  if (m := json.loads(r.metrics_json)).get("judged_ms") and operators(a := Architecture.from_json(r.arch_json))]
    if row is None or not judged:
        return []
    return [("latency stage's fit, the finalists", [p[-1] for p in json.loads(row.model_json)["points"]], judged)]


@dataclass
class FullWidth(Calibration):
    """The form with a second slope for students at the teacher's width (no resize)."""

    f: float = 0.0

    def __call__(self, raw: float, ops: int, resized: int) -> float:
        return (self.a + self.f * (resized == 0)) * raw + self.c * ops + self.b


def fit_full_width(points: list[tuple[float, int, int, float]]) -> FullWidth:
    p = np.asarray(points, dtype=float)
    raw, ops, rs, meas = p.T
    design = np.stack([raw, raw * (rs == 0), ops, np.ones_like(raw)], 1) / meas[:, None]
    (a, f, c, b), *_ = np.linalg.lstsq(design, np.ones_like(meas), rcond=None)
    return FullWidth(a=float(a), f=float(f), c=float(c), b=float(b))


def errors(model: LatencyModel, cal: Calibration, judged: list[tuple[Architecture, float]]) -> str:
    e = [model.predict(a, cal) / ms - 1 for a, ms in judged]
    return f"{100 * statistics.mean(map(abs, e)):.1f}% / {100 * max(map(abs, e)):.1f}% / {100 * statistics.mean(e):+.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--db", default=None, help="the study database (default: the study file's)")
    ap.add_argument("--workdir", default=None, help="the study's workdir (default: the study file's)")
    args = ap.parse_args()
    study = load_study(args.config, db_url=args.db)
    workdir = Path(args.workdir) if args.workdir else study.workdir
    db = Database(study.db_url)
    cfg = study.cfg.latency
    fp = device_fingerprint(cfg)
    emb = embeddings_spec_of(load_teacher_config(study.cfg.teacher))
    model = LatencyModel(fp, cfg, load_table(db, fp))  # the table only: nothing is timed or refitted in the DB
    cal_archs = calibration_architectures(study.space, emb, cfg, model)
    rows = []
    runs = [*finalists_runs(db, study, fp), *export_runs(workdir), *bench_run(db, workdir), *stage_run(db, study, fp)]
    for label, cal_ms, judged in runs:
        if len(cal_ms) != len(cal_archs):
            print(f"{label}: {len(cal_ms)} calibration times for {len(cal_archs)} students; skipped")
            continue
        now = model.refitted(cal_archs, cal_ms, anchor=REFERENCE, space=study.space)
        a, c, w, b = fit_calibration(now.points)  # as fitted before: c >= 0, no anchor, floored everywhere
        with_w = Calibration(a=a, c=c, w=w, b=b)
        a, c, w, b = fit_calibration([(r, n, 0, ms) for r, n, _, ms in now.points])
        without = Calibration(a=a, c=c, w=w, b=b)
        full = fit_full_width(now.points)
        uniform = [(x, ms) for x, ms in judged if resizes(x) <= 1]
        rows.append([label, str(len(judged)), errors(model, without, judged), errors(model, with_w, judged),
                     errors(model, now, judged), errors(model, full, judged), f"{len(uniform)}",
                     errors(model, with_w, uniform) if uniform else "-", errors(model, now, uniform) if uniform else "-",
                     f"{now.c:.3f}", f"{full.f:.3f}"])
    print(f"\nstudy {study.name}: refitted on each run's calibration students; error of the judged students "
          "(mean / max / bias = mean signed, + over-predicts)\n")
    print(table(["timing run", "judged", "without w (v2)", "with w (v3)", "now (anchored, c bounded)",
                 "full-width slope", "of one width", "one width, v3", "one width, now", "c ms (now)", "f"], rows))


if __name__ == "__main__":
    main()
