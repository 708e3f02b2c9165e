"""What a user gets for free beside a budget's student: the teacher's first k layers, untouched, timed in the
budget's finalists' run and scored on the evaluation's texts."""

from __future__ import annotations

from sqlalchemy import select

from nas_bert.choose.ranking import TruncatedReference
from nas_bert.choose.timing import run_tag
from nas_bert.data import load_task
from nas_bert.evaluate import agreement, tasks_to_run
from nas_bert.latency import device_fingerprint
from nas_bert.space import families
from nas_bert.store import Database, LatencyRow
from nas_bert.study import Study
from nas_bert.supernet import teacher_initialised, truncated_architecture
from nas_bert.teacher import load_teacher


def truncated_reference(study: Study, budget_ms: float, student_ms: float) -> TruncatedReference | None:
    """What a user gets for free: the teacher's first k layers, untouched, of the measured latency nearest
    `student_ms` (in the budget's finalists' timing run), with its fidelity on the WordNet test texts and out
    of domain; None when no truncated teacher was timed.

    As `nas-bert run`'s reference stage, its inputs: the teacher, the space file's content, the corpus, the study's
    `evaluate` section, the latency device, the budget's finalists and the latency stage."""
    db = Database(study.db_url)
    fp = device_fingerprint(study.cfg.latency)
    prefix = f"model:{run_tag(budget_ms, study.cfg.latency.finalist_runs)}:truncated:"
    with db.session() as s:
        rows = {r.key: r.ms for r in s.scalars(select(LatencyRow).where(
            LatencyRow.fingerprint == fp, LatencyRow.study == study.name, LatencyRow.key.like(f"{prefix}%")))}
    teacher = load_teacher(study.cfg.teacher, study.device())
    archs = {truncated_architecture(teacher, k): k for k in range(1, teacher.num_layers)}
    points = families(study.space, teacher.embeddings_spec())  # as points of a space made from the teacher
    archs |= {points[f"truncated-{k}"][1]: k for k in range(1, teacher.num_layers) if f"truncated-{k}" in points}
    timed = [(rows[f"{prefix}{a.hash()}"], a, k) for a, k in archs.items() if f"{prefix}{a.hash()}" in rows]
    if not timed:
        return None
    ms, _arch, k = min(timed, key=lambda t: abs(t[0] - student_ms))
    student = teacher_initialised(truncated_architecture(teacher, k), teacher)
    cfg = study.cfg.evaluate
    texts = list(load_task(tasks_to_run(cfg, None)[0], cfg)[0]["test"]["text"][: cfg.fidelity_texts])
    return TruncatedReference(name=f"truncated-{k}", layers=k, measured_ms=ms,
                              **agreement(student, teacher.tokenizer, teacher, cfg, texts, study.device()))
