"""Stage 9: export searched students as self-contained transformers folders, with ONNX and a model card.

Each student folder loads with `AutoModel.from_pretrained(path, trust_remote_code=True)` and nothing
but torch and transformers installed: the two student code files travel with the weights. The export
is written into a temporary folder beside the target and renamed into place once complete, so a kill
never leaves half an export, and the database records it only after the rename.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sqlalchemy import select
from tqdm.auto import tqdm

from nas_bert.choose import Finalist, budget_fraction, chosen_finalist, criterion, judged_ms, reorders, tied_with
from nas_bert.errors import NasBertError
from nas_bert.export.card import model_card
from nas_bert.export.onnx_export import VARIANTS, export_onnx, mb, measure_latencies
from nas_bert.latency import (
    RUNTIME_VARIANT,
    LatencyModel,
    calibration_architectures,
    ensure_latency_model,
    hardware_name,
    in_fresh_process,
    in_run,
    reference_disturbed,
    reference_time,
    retimed,
    timed_beside,
)
from nas_bert.model import NasBertModel, write_student_folder
from nas_bert.record import Record
from nas_bert.search import budgets_in_db, chosen_row, latest_checkpoint, optuna_study_name, pareto_rows, proxy_of
from nas_bert.space import Architecture, Embeddings, SearchSpace
from nas_bert.store import ArchitectureRow, Checkpoint, Database, ExportRow, SupernetRun, atomic_folder, file_sha256
from nas_bert.study import Study
from nas_bert.supernet import Supernet, load_supernet_checkpoint, supernet_key
from nas_bert.teacher import Teacher, load_teacher


@dataclass
class Member:
    """One student to export: its database row (as a dict), where it came from and its folder name."""

    name: str
    row: dict[str, Any]
    trial: int | None
    budget_ms: float | None
    budgets: list[float] = field(default_factory=list)
    origin: str = "search"  # or a hand-designed student that won its budget's finalists: truncated | uniform | pruned
    finalist: Finalist | None = None  # the budget's finalists' record of this student
    tied_with: list[str] | None = None  # a recipe kept on a tie: the searched finalists passed over for it


class ExportedStudent(Record):
    """One exported student as the export's index lists it: its size, times and checks (its folder's
    nas_bert.json holds the rest)."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"tasks", "pairs", "ood"})

    name: str  # its folder in the export
    hash: str
    trial: int | None  # None: a hand-designed student
    budget_ms: float | None
    budgets_ms: list[float]  # every budget whose front it is on
    params: int
    flops: int
    size_mb: float
    predicted_ms: float | None  # the search's latency model (None: a module outside its table)
    safetensors_sha256: str
    origin: str  # "search" or the hand-designed family that won its budget's finalists
    over_budget: bool  # judged over its budget in the export's timing run
    predicted_now_ms: float | None  # the calibration refitted in the export's timing run
    onnx_mb: float
    int8_mb: float
    measured_ms: dict[str, float]  # runtime (torch_fp32, onnx_fp32, onnx_int8) -> ms
    teacher_ms: float  # the teacher in the same run (PyTorch fp32)
    drift: float | None  # how much longer the host took than when the latency model was fitted
    speed: float | None  # this student's own host factor (predicted now / predicted at the fit)
    judged_ms: float | None  # the time its budget judges
    speedup: dict[str, float]  # runtime -> the teacher's time / the student's
    approx_loss: float | None
    rescored_loss: float | None
    onnx_max_abs_diff: float
    onnx_output_max_abs: float
    int8_rel_error: float
    int8_mean_cosine: float
    # the evaluation of the study's own data, each set by name (absent without evaluate.tasks, .pairs, .ood)
    tasks: dict[str, dict[str, Any]] | None = None
    pairs: dict[str, dict[str, Any]] | None = None
    ood: dict[str, dict[str, Any]] | None = None


class ExportResult(Record):
    """Stage 9's result, also written as the export's index.json: the teacher, the machine and the students."""

    study: str
    out_dir: str
    command: str  # the command that made it
    teacher: dict[str, Any]  # name, params and its median time beside the students (torch_fp32_ms)
    machine: str
    latency_config: dict[str, Any]  # the study's `latency` section
    students: list[ExportedStudent]


# -- the student folder -------------------------------------------------------------------------
def extract_student(study: Study, arch: Architecture, teacher: Teacher, supernet: Supernet) -> NasBertModel:
    """A standalone student: the supernet's slices for `arch` on the teacher's embedding tables."""
    arch.validate(study.space)
    return supernet.extract(arch, teacher.encoder.embeddings).eval()


# -- which students -----------------------------------------------------------------------------
def _finalist_row(db: Database, study: Study, fin: Finalist) -> dict[str, Any]:
    """A finalist's row from the finalists' record: a hand-designed winner, or a searched student's shrunk or grown
    reserve that took its place (a point no search scored)."""
    return {"hash": fin.hash, "arch_json": fin.arch_json, "params": fin.params,
            "flops": Architecture.from_json(fin.arch_json).flops(), "predicted_ms": fin.predicted_ms,
            "approx_loss": None, "rescored_loss": None, "checkpoint_sha": latest_checkpoint(db, study).sha256}


def _row(db: Database, study: Study, arch_hash: str, fin: Finalist | None = None) -> dict[str, Any]:
    """The architecture's row, else (a shrunk or grown reserve) its finalist's (`_finalist_row`)."""
    with db.session() as s:
        r = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name,
                                                    ArchitectureRow.hash == arch_hash)).first()
        if r is not None:
            return {c: getattr(r, c) for c in ("hash", "arch_json", "params", "flops", "checkpoint_sha",
                                               "predicted_ms", "approx_loss", "rescored_loss")}
    if fin is None:
        raise NasBertError(f"architecture {arch_hash[:8]} has no row in study '{study.name}'; run `nas-bert search "
                           f"--config {study.file}` again")
    return _finalist_row(db, study, fin)


def _searched(study: Study, budgets: list[float] | None) -> list[float]:
    known = budgets_in_db(study)
    if not known:
        raise NasBertError(f"study '{study.name}' has no search yet; run `nas-bert search --config {study.file} "
                           "--latency-budget-ms X` first")
    for b in budgets or []:
        if optuna_study_name(study, b) not in {optuna_study_name(study, k) for k in known}:
            raise NasBertError(f"no search for budget {b:g} ms in study '{study.name}'; searched budgets: "
                               f"{', '.join(f'{k:g}' for k in known)} ms")
    return list(budgets) if budgets else known


def select_members(db: Database, study: Study, budgets: list[float] | None) -> list[Member]:
    """Every distinct architecture on a feasible front, or the best feasible one per requested budget."""
    members: dict[str, Member] = {}
    for b in _searched(study, budgets):
        if budgets is None:
            for r in pareto_rows(db, study, b):
                if r.hash in members:
                    members[r.hash].budgets.append(b)
                else:
                    members[r.hash] = Member(f"nasbert-front-{r.hash[:8]}", _row(db, study, r.hash), r.trial, b, [b])
            continue
        fin = chosen_finalist(db, study, b)  # the finalists' choice (stage 5), else the rescored one
        if fin is not None and fin.origin != "search":  # a hand-designed student won: it is exported as such
            members[f"{b:g}:{fin.hash}"] = Member(f"nasbert-{b:g}ms-{fin.name}", _finalist_row(db, study, fin), None,
                                                  b, [b], fin.origin, fin, tied_with(db, study, b, fin.name))
            continue
        best = fin or chosen_row(db, study, b)
        if best is None:
            raise NasBertError(f"the search for budget {b:g} ms in study '{study.name}' has no feasible trial; "
                               "search with more trials or a larger budget")
        h = best.hash
        members[f"{b:g}:{h}"] = Member(f"nasbert-{b:g}ms-{h[:8]}", _row(db, study, h, fin), best.trial, b, [b],
                                       finalist=fin)
    if not members:
        raise NasBertError(f"no feasible trial in any search of study '{study.name}'; search with a larger budget")
    return list(members.values())


def _checkpoint(db: Database, study: Study, scored_sha: str) -> dict[str, Any]:
    """The checkpoint an architecture was scored with (else the latest), verified on disk against its sha256."""
    with db.session() as s:
        q = (select(Checkpoint).join(SupernetRun, Checkpoint.run_id == SupernetRun.id)
             .where(SupernetRun.study == study.name, SupernetRun.supernet_key == supernet_key(study),
                    Checkpoint.sha256 == scored_sha, Checkpoint.deleted == 0))
        ck = s.scalars(q).first()
    ck = ck or latest_checkpoint(db, study)  # the scored one was pruned: extract from the current supernet
    path = Path(ck.path)
    if not path.is_file():
        raise NasBertError(f"supernet checkpoint {path} is missing from disk; restore it or retrain with "
                           f"`nas-bert train-supernet --config {study.file}`")
    if file_sha256(path) != ck.sha256:
        raise NasBertError(f"supernet checkpoint {path} does not match the sha256 recorded in the database (changed "
                           "on disk); restore the original file or retrain with "
                           f"`nas-bert train-supernet --config {study.file}`")
    return {"path": str(path), "step": ck.step, "sha256": ck.sha256, "scored_with_sha256": scored_sha}


# -- the export ---------------------------------------------------------------------------------
def _export_one(study: Study, m: Member, teacher: Teacher, supernet: Supernet, ckpt: dict[str, Any],
                tinfo: dict[str, Any], folder: Path, command: str) -> dict[str, Any]:
    cfg = study.cfg.latency
    arch = Architecture.from_json(m.row["arch_json"])
    distilled = _distilled(study, arch, ckpt["sha256"], m.budget_ms)
    if distilled is not None:  # the distilled weights when stage 7 has run, else the supernet's slices
        student = NasBertModel.from_pretrained(distilled["student_path"]).eval()
    elif m.origin == "search":
        student = extract_student(study, arch, teacher, supernet)
    else:
        raise NasBertError(f"the {m.budget_ms:g} ms student ({m.origin} teacher) has not been distilled; run "
                           f"`nas-bert run --config {study.file}` to distil it before exporting")
    write_student_folder(student, folder, teacher.tokenizer, teacher.pooling)
    checks = export_onnx(student, folder, teacher.tokenizer, min(cfg.seq_len, arch.embeddings.max_positions))
    emb = teacher.embeddings_spec()
    lat_model = ensure_latency_model(Database(study.db_url), study.space, emb, cfg, progress=False)
    ms, predicted_now = _timed(study, m.budget_ms, arch, folder, emb, lat_model)
    if m.budget_ms is not None and ms["judged_ms"] > m.budget_ms:
        # judged over in one timing run: two more runs, and the median of the three stands. One run moves by a few
        # per cent (in the demo at 1e70ac4 one put the 0.5x student at 0.54x of the reference beside it, a later one
        # at 0.45x); the lesser of two runs let the run that drew low decide (the quality study's 1/8 student: 0.123x
        # in the finalists' run, 0.127x, 0.130x and 0.132x in the export's)
        runs = [(ms, predicted_now), *(_timed(study, m.budget_ms, arch, folder, emb, lat_model) for _ in range(2))]
        ms, predicted_now = sorted(runs, key=lambda r: r[0]["judged_ms"])[1]
        ms["runs_judged_ms"] = [r[0]["judged_ms"] for r in runs]  # in the order they ran
    # the evaluation of exactly these weights: the distilled folder's, none for supernet slices
    evaluated = _evaluation(study, arch.hash(), distilled["student_path"]) if distilled is not None else {}
    metrics = {"approx_loss": m.row["approx_loss"], "rescored_loss": m.row["rescored_loss"], **checks, **evaluated}
    # as measured now, at the host's speed when the latency model was fitted (the finalists' rule)
    over = m.budget_ms is not None and ms["judged_ms"] > m.budget_ms
    info = {
        "name": m.name, "study": study.name, "hash": m.row["hash"], "trial": m.trial, "budget_ms": m.budget_ms,
        "budgets_ms": m.budgets, "params": arch.params(), "flops": arch.flops(cfg.seq_len),
        "size_mb": mb(folder / "model.safetensors"), "predicted_ms": m.row["predicted_ms"],
        "predicted_now_ms": predicted_now,
        "latency": {**ms, "machine": f"{hardware_name(cfg.device)} ({os.cpu_count()} cpus)", "config": cfg.model_dump(),
                    "speedup": {k: ms["teacher_torch_fp32"] / ms[k] for k in VARIANTS}},
        "metrics": metrics, "teacher": dict(tinfo), "checkpoint": ckpt, "command": command,
        "safetensors_sha256": file_sha256(folder / "model.safetensors"), "distilled": distilled,
        "origin": m.origin, "finalist": m.finalist.model_dump(mode="json") if m.finalist else None, "over_budget": over,
        "proxy": proxy_of(study), "chosen_by": criterion(study), **({"tied_with": m.tied_with} if m.tied_with else {}),
        "sentence_transformers": teacher.pooling is not None,
    }
    (folder / "README.md").write_text(model_card(info, arch))
    (folder / "nas_bert.json").write_text(json.dumps({**info, "architecture": arch.to_dict(),
                                                      "exported_at": datetime.now(UTC).isoformat(timespec="seconds")},
                                                     indent=2))
    return info


def _timed(study: Study, budget_ms: float | None, arch: Architecture, folder: Path, emb: Embeddings,
           lat_model: LatencyModel) -> tuple[dict[str, Any], float | None]:
    """One export timing run of the student written to `folder`, judged by its budget's rule: the runtime the budgets
    are for (PyTorch fp32, or the exported ONNX graph, fp32 or int8); a budget given as a fraction of the teacher is
    that fraction of the reference beside the student (no drift enters, so no calibration students are timed), a
    budget in ms times the calibration students too. Returns the run's figures and the prediction at the host's
    speed now (None where not refitted)."""
    cfg = study.cfg.latency
    variant, fit = RUNTIME_VARIANT[cfg.runtime], lat_model.calibration.reference_ms
    x = budget_fraction(study, budget_ms, fit)
    recal = calibration_architectures(study.space, emb, cfg, lat_model) if x is None else []
    job = (folder, study.cfg.teacher, lat_model, study.space, emb, x is None)
    ms = retimed(lambda: in_fresh_process(time_export, *job) if cfg.fresh_process else time_export(*job),  # again while
                 lambda m: x is not None and reference_disturbed(m["others"][0], m.get("teacher_torch_fp32")))  # they disagree
    ms["calibration_ms"] = ms.pop("others", [])  # kept in nas_bert.json: the run's composition can be compared later
    if x is not None:  # the reference alone was timed: the teacher's layers as when the budget was set
        ms["reference_ms"] = reference_time(ms.pop("calibration_ms"), calibrate=False)
        ms["calibration_ms"] = []
    predicted_now: float | None = None
    ms["drift"], ms["speed"], ms["budget_x"] = None, None, x
    if recal:
        ms["drift"], now = in_run(lat_model, study.space, emb, recal, ms["calibration_ms"])
        try:  # the latency model refitted on this run's timings: the prediction at the host's speed now
            reorder = reorders(arch)
            predicted_now = lat_model.predict(arch, now, reorder)
            ms["speed"] = predicted_now / lat_model.predict(arch, reorder=reorder)  # its host factor since the fit
        except NasBertError:  # a hand-designed student the table has no timing for
            predicted_now = None
    teacher_now = ms.get("reference_ms") or ms.get(f"teacher_{variant}")
    ms["judged_ms"] = judged_ms(ms[variant], ms["drift"], ms["speed"], (teacher_now, fit) if x is not None else None)
    if x is not None and teacher_now:
        ms["teacher_ratio"] = ms[variant] / teacher_now
    return ms, predicted_now


def time_export(folder: Path, teacher_name: str, lat: LatencyModel, space: SearchSpace, emb: Embeddings,
                calibrate: bool = True) -> dict[str, Any]:
    """The export's timing run (in a fresh process unless `latency.fresh_process` is off): the student as
    written to `folder` (PyTorch, ONNX fp32 and int8), the teacher and, with `calibrate`, the latency model's
    calibration students, interleaved (`measure_latencies`)."""
    student = NasBertModel.from_pretrained(folder).eval()
    return measure_latencies(student, folder, load_teacher(teacher_name), lat.config,
                             timed_beside(lat, space, emb, calibrate))


def _distilled(study: Study, arch: Architecture, checkpoint_sha: str, budget_ms: float) -> dict[str, Any] | None:
    """The finished distillation of this architecture, if stage 7 has run from the study's present inputs."""
    from nas_bert.distill import distill_identity
    from nas_bert.store import DistillRun

    with Database(study.db_url).session() as s:
        run = s.scalars(select(DistillRun).where(DistillRun.study == study.name, DistillRun.arch_hash == arch.hash(),
                                                 DistillRun.status == "finished")).first()
        if run is None or not run.student_path:
            return None
        if not Path(run.student_path).is_dir():  # never ship the supernet's slices under the distilled student's name
            raise NasBertError(f"the distilled student {run.student_path} is missing from disk; rerun "
                               f"`nas-bert run --config {study.file}` (or `nas-bert distill`) to distil it again")
        report = json.loads(run.report_json)
        made = report.get("inputs")  # None: recorded before distillations kept their identity
        now = distill_identity(study, checkpoint_sha, arch, report.get("start", "search"), json.loads(run.mapping_json))
        if made is not None and made != now:  # e.g. distill.lr changed since: never ship the old student as the new
            raise NasBertError(f"the {budget_ms:g} ms student was distilled from other inputs than the study's now "
                               "(its distill settings, teacher, corpus or supernet changed); run `nas-bert run --config "
                               f"{study.file}` to distil it again before exporting")
        return {"student_path": run.student_path, "steps": run.target_steps, "mapping": json.loads(run.mapping_json),
                "final_loss_before": (report.get("before") or {}).get("final"),
                "final_loss_after": (report.get("after") or {}).get("final")}


def _evaluation(study: Study, arch_hash: str, subject: str) -> dict[str, Any]:
    """Stage 8's latest metrics for this architecture's folder `subject` (empty when it was not evaluated)."""
    from nas_bert.store import EvaluationRow

    subject = str(Path(subject).resolve())
    with Database(study.db_url).session() as s:
        row = s.scalars(select(EvaluationRow).where(EvaluationRow.study == study.name, EvaluationRow.arch_hash == arch_hash,
                                                    EvaluationRow.subject == subject)
                        .order_by(EvaluationRow.id.desc())).first()
        if row is None:
            return {}
        keep = ("fidelity", "ood_fidelity", "cosine", "ood_cosine", "accuracy", "teacher_accuracy", "accuracy_ratio",
                "accuracy_ratio_low", "accuracy_ratio_high",
                "label_loyalty", "probability_loyalty", "tasks", "pairs", "ood")
        metrics = json.loads(row.metrics_json)
        return {f"eval_{k}": metrics[k] for k in keep if k in metrics} | {"eval_task": row.task}


def _record(db: Database, study: Study, students: list[ExportedStudent], out_dir: Path) -> None:
    """measured_ms of each architecture and one ExportRow per folder; rows of folders an overwrite removed go."""
    root = str(out_dir.resolve())
    paths = {str((out_dir / st.name).resolve()) for st in students}
    with db.session() as s:
        for old in s.scalars(select(ExportRow).where(ExportRow.study == study.name)):
            if os.path.dirname(old.path) == root and old.path not in paths:
                s.delete(old)
        for st in students:
            row = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name,
                                                          ArchitectureRow.hash == st.hash)).first()
            if row is not None:  # a hand-designed student is no searched architecture
                row.measured_ms = st.measured_ms[RUNTIME_VARIANT[study.cfg.latency.runtime]]
            path = str((out_dir / st.name).resolve())
            exp = s.scalars(select(ExportRow).where(ExportRow.study == study.name, ExportRow.arch_hash == st.hash,
                                                    ExportRow.path == path)).first()
            if exp is None:
                exp = ExportRow(study=study.name, arch_hash=st.hash, path=path)
                s.add(exp)
            exp.trial_number, exp.budget_ms, exp.sha256 = st.trial, st.budget_ms, st.safetensors_sha256
            exp.metrics_json = json.dumps(st.model_dump(mode="json"))


def export_front(study: Study, out_dir: Path, budgets: list[float] | None = None, overwrite: bool = False,
                 command: str | None = None) -> ExportResult:
    """Stage 9: export every architecture on a feasible front (or, with budgets, the best feasible one per budget,
    the finalists' choice where there is one) into `out_dir`, timing each again.

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus, the
    study's `latency` section, the latency device and each budget's evaluation stage. Returns an `ExportResult`,
    also written as `out_dir`/index.json."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise NasBertError(f"{out_dir} already exists; pass --overwrite to replace it or choose another output folder")
    if out_dir.exists() and not _replaceable(out_dir):
        raise NasBertError(f"{out_dir} is not a nas-bert export folder (no index.json of one, and not empty); "
                           "--overwrite replaces only those: choose another --out")
    db = Database(study.db_url)
    try:
        members = select_members(db, study, budgets)
        # Every checkpoint is verified before anything is written: a failed check leaves no trace.
        ckpts = {m.name: _checkpoint(db, study, m.row["checkpoint_sha"]) for m in members}
        command = command or shlex.join(["nas-bert", "export", "--config", str(study.file), "--out", str(out_dir)])
        summary = _write(study, members, ckpts, out_dir, budgets, command)
        _record(db, study, summary.students, out_dir)
    finally:
        db.dispose()
    return summary


def _replaceable(out_dir: Path) -> bool:
    """An empty folder, or one an export wrote (its index.json reads as an export's): `--overwrite` replaces
    nothing else (`--out ~ --overwrite` once would have replaced a home folder)."""
    if not out_dir.is_dir():
        return False
    if not any(out_dir.iterdir()):
        return True
    try:
        ExportResult.model_validate_json((out_dir / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _write(study: Study, members: list[Member], ckpts: dict[str, dict[str, Any]], out_dir: Path,
           plot_budgets: list[float] | None, command: str) -> ExportResult:
    """Write every student, index.json and pareto.png into a temporary folder, then rename it to out_dir."""
    teacher = load_teacher(study.cfg.teacher, "cpu")
    tinfo = {"name": study.cfg.teacher, "params": sum(p.numel() for p in teacher.encoder.parameters())}
    eps = float(getattr(teacher.config, "layer_norm_eps", 1e-12))
    supernets: dict[str, Supernet] = {}
    with atomic_folder(out_dir) as tmp:
        infos = []
        for m in tqdm(members, desc="export", unit="student"):
            path = ckpts[m.name]["path"]
            if path not in supernets:
                supernets[path] = load_supernet_checkpoint(Path(path), study.space, teacher.hidden_size, eps)
            infos.append(_export_one(study, m, teacher, supernets[path], ckpts[m.name], tinfo, tmp / m.name, command))
        from nas_bert.export.plots import plot_fronts

        plot_fronts(study, plot_budgets or budgets_in_db(study), tmp / "pareto.png")
        # the teacher is timed beside every student; its figure here is the median over those runs
        tinfo["torch_fp32_ms"] = float(np.median([i["latency"]["teacher_torch_fp32"] for i in infos]))
        summary = ExportResult(study=study.name, out_dir=str(out_dir), command=command, teacher=tinfo,
                               machine=infos[0]["latency"]["machine"], latency_config=study.cfg.latency.model_dump(),
                               students=[_student_summary(i) for i in infos])
        (tmp / "index.json").write_text(json.dumps(summary.model_dump(mode="json"), indent=2))
    return summary


def _student_summary(i: dict[str, Any]) -> ExportedStudent:
    """A student's line of the index from its full record (the `info` of its nas_bert.json)."""
    lat, met = i["latency"], i["metrics"]
    keep = ("name", "hash", "trial", "budget_ms", "budgets_ms", "params", "flops", "size_mb", "predicted_ms",
            "safetensors_sha256", "origin", "over_budget")
    return ExportedStudent(
        **{k: i[k] for k in keep}, predicted_now_ms=i.get("predicted_now_ms"), onnx_mb=met["onnx_mb"],
        int8_mb=met["int8_mb"], measured_ms={k: lat[k] for k in VARIANTS}, teacher_ms=lat["teacher_torch_fp32"],
        drift=lat.get("drift"), speed=lat.get("speed"), judged_ms=lat.get("judged_ms"), speedup=lat["speedup"],
        **{k: met[k] for k in ("approx_loss", "rescored_loss", "onnx_max_abs_diff", "onnx_output_max_abs",
                               "int8_rel_error", "int8_mean_cosine")},
        **{k: met[f"eval_{k}"] for k in ("tasks", "pairs", "ood") if met.get(f"eval_{k}") is not None})
