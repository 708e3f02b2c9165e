"""The job queue of `nas-bert serve`, in the study database (`nasbert_jobs`).

Every change of a job's owner or state is one conditional UPDATE whose row count says whether it
happened, so it is atomic on SQLite and PostgreSQL alike:

- claim: `status='queued'`, or `status='running'` with its lease run out (its worker died) -> running,
  with a new lease token; two workers racing for a job: one UPDATE matches, the other matches nothing.
- heartbeat / finish: only while the job is still `running` under the caller's lease token; a job that
  was stopped or taken over meanwhile answers False and its worker ends the job's processes.
- stop: queued or running -> stopped; the worker still holds it (its lease token) until it has ended the
  job's processes and `disown`s it, or until its lease runs out (a dead worker).
- resume: stopped, failed or finished -> queued, once no worker holds it any more: a resume right after a
  stop never starts the job beside its old processes.

Leases are judged by the database's clock (`Database.now`), never by a worker's own: two machines whose
clocks disagree by a minute still agree on whose a job is.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from nas_bert.store import Database, JobRow

KINDS = ("search", "run", "export")
ACTIVE = ("queued", "running")
DONE = ("stopped", "failed", "finished")


def machine() -> str:
    """This machine as `release_dead` may judge its processes: host name and pid namespace (containers
    share host names, and pids only mean something within one namespace)."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/{ns}"


def worker_name() -> str:
    return f"{machine()}:{os.getpid()}"


def dedupe_key(study: str, kind: str, budget_ms: float | None = None, budgets: list[float] | None = None) -> str:
    """What makes two launches the same job: the study, the kind and the budget(s) (one search per budget)."""
    if kind == "search":
        return f"{study}|search|{budget_ms:g}"
    if kind == "export":
        return f"{study}|export|" + (",".join(f"{b:g}" for b in budgets) if budgets else "front")
    return f"{study}|{kind}"


def enqueue(db: Database, study: str, kind: str, budget_ms: float | None = None,
            params: dict[str, Any] | None = None) -> tuple[JobRow, bool]:
    """A new queued job, or the existing one of the same search (created: False). Concurrent launches of
    the same job meet at the unique `dedupe_key`: one inserts, the others get its row."""
    params = params or {}
    key = dedupe_key(study, kind, budget_ms, params.get("budgets_ms"))
    with db.session() as s:
        row = s.scalars(select(JobRow).where(JobRow.dedupe_key == key)).first()
        if row is not None:
            return row, False
    now = time.time()
    try:
        with db.session() as s:
            row = JobRow(study=study, kind=kind, budget_ms=budget_ms, params_json=json.dumps(params),
                         dedupe_key=key, status="queued", created_at=now, updated_at=now)
            s.add(row)
            s.flush()
            return row, True
    except IntegrityError:  # launched concurrently: the first insert stands
        with db.session() as s:
            return s.scalars(select(JobRow).where(JobRow.dedupe_key == key)).one(), False


def get(db: Database, job_id: int) -> JobRow | None:
    with db.session() as s:
        return s.get(JobRow, job_id)


def list_jobs(db: Database, study: str | None = None, status: str | None = None) -> list[JobRow]:
    q = select(JobRow).order_by(JobRow.id)
    if study is not None:
        q = q.where(JobRow.study == study)
    if status is not None:
        q = q.where(JobRow.status == status)
    with db.session() as s:
        return list(s.scalars(q))


def claim(db: Database, worker: str, lease_s: float, job_id: int | None = None) -> tuple[JobRow, str] | None:
    """Take the oldest queued job, or a running one whose worker's lease ran out; (job, lease token)."""
    now = db.now()
    claimable = or_(JobRow.status == "queued", (JobRow.status == "running") & (JobRow.lease_until < now))
    q = select(JobRow.id).where(claimable).order_by(JobRow.id).limit(8)
    if job_id is not None:
        q = q.where(JobRow.id == job_id)
    with db.session() as s:
        candidates = list(s.scalars(q))
    for jid in candidates:
        token = uuid.uuid4().hex
        with db.session() as s:
            n = s.execute(update(JobRow).where(JobRow.id == jid, claimable).values(
                status="running", worker=worker, lease_token=token, lease_until=now + lease_s,
                attempts=JobRow.attempts + 1, started_at=now, updated_at=now, error=None, finished_at=None,
            ).execution_options(synchronize_session=False)).rowcount
        if n == 1:
            return get(db, jid), token  # type: ignore[return-value]
    return None


def heartbeat(db: Database, job_id: int, token: str, lease_s: float, progress: dict[str, Any] | None = None,
              log_tail: str | None = None) -> bool:
    """Extend the lease (and record progress); False when the job is no longer this worker's to run."""
    now = db.now()
    return _update_held(db, job_id, token, {"lease_until": now + lease_s, "updated_at": now}, progress, log_tail)


def _update_held(db: Database, job_id: int, token: str, values: dict[str, Any], progress: dict[str, Any] | None,
                 log_tail: str | None) -> bool:
    """Write `values` (and progress, log tail) to a running job only while this worker's lease token holds it."""
    if progress is not None:
        values["progress_json"] = json.dumps(progress)
    if log_tail is not None:
        values["log_tail"] = log_tail
    with db.session() as s:
        return s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.lease_token == token,
                                              JobRow.status == "running").values(**values)
                         .execution_options(synchronize_session=False)).rowcount == 1


def finish(db: Database, job_id: int, token: str, ok: bool, result: Any = None, error: str | None = None,
           progress: dict[str, Any] | None = None, log_tail: str | None = None) -> bool:
    now = db.now()
    values: dict[str, Any] = {"status": "finished" if ok else "failed", "finished_at": now, "updated_at": now,
                              "lease_until": 0.0, "error": error}
    if result is not None:
        values["result_json"] = json.dumps(result, default=str)
    return _update_held(db, job_id, token, values, progress, log_tail)


def release(db: Database, job_id: int, token: str) -> bool:
    """A worker shutting down hands its job back: still running, its lease ends now (claimable at once)."""
    with db.session() as s:
        return s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.lease_token == token,
                                              JobRow.status == "running").values(lease_until=0.0, updated_at=db.now())
                         .execution_options(synchronize_session=False)).rowcount == 1


def release_dead(db: Database, host: str, alive: Any) -> int:
    """Running jobs of this machine (`host` is `machine()`) whose worker process is gone: their lease ends
    now (a worker restarted on the same machine takes them over at once instead of waiting for the lease)."""
    n = 0
    with db.session() as s:
        rows = list(s.execute(select(JobRow.id, JobRow.worker, JobRow.lease_token).where(JobRow.status == "running")))
    for jid, worker, token in rows:
        h, _, pid = (worker or "").rpartition(":")
        if h == host and pid.isdigit() and not alive(int(pid)):
            with db.session() as s:
                n += s.execute(update(JobRow).where(JobRow.id == jid, JobRow.lease_token == token,
                                                    JobRow.status == "running").values(lease_until=0.0)
                               .execution_options(synchronize_session=False)).rowcount
    return n


def stop(db: Database, job_id: int) -> bool:
    """Queued or running -> stopped; False if the job had ended already. A running job's worker keeps
    holding it (lease token and lease) until it has ended the job's processes (`disown`)."""
    now = db.now()
    with db.session() as s:
        return s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(ACTIVE)).values(
            status="stopped", updated_at=now, finished_at=now)
            .execution_options(synchronize_session=False)).rowcount == 1


def disown(db: Database, job_id: int, token: str) -> bool:
    """A worker that has ended a stopped job's processes lets go of it: it may be resumed now."""
    with db.session() as s:
        return s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.lease_token == token,
                                              JobRow.status.in_(DONE)).values(lease_token=None, lease_until=0.0)
                         .execution_options(synchronize_session=False)).rowcount == 1


def held(row: JobRow, now: float) -> bool:
    """Whether a worker may still be running the job's processes (it holds a lease that has not run out)."""
    return row.lease_token is not None and row.lease_until > now


def resume(db: Database, job_id: int, params: dict[str, Any] | None = None) -> bool:
    """Stopped, failed or finished -> queued (with `params` merged in); False if it is queued or running, or
    stopped while its worker still ends its processes (see `held`)."""
    now = db.now()
    values: dict[str, Any] = {"status": "queued", "lease_token": None, "lease_until": 0.0, "error": None,
                              "finished_at": None, "updated_at": now}
    if params:
        row = get(db, job_id)
        if row is None:
            return False
        values["params_json"] = json.dumps({**json.loads(row.params_json), **params})
    with db.session() as s:
        free = or_(JobRow.lease_token.is_(None), JobRow.lease_until <= now)  # no worker runs it any more
        return s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(DONE), free).values(**values)
                         .execution_options(synchronize_session=False)).rowcount == 1


def as_dict(row: JobRow, with_log: bool = False) -> dict[str, Any]:
    """A job as the API shows it: state, progress (fraction, stage, trials), ETA, and the log's tail."""
    progress = json.loads(row.progress_json or "{}")
    out: dict[str, Any] = {
        "id": row.id, "study": row.study, "kind": row.kind, "budget_ms": row.budget_ms,
        "params": json.loads(row.params_json or "{}"), "status": row.status, "worker": row.worker,
        "attempts": row.attempts, "progress": progress, "fraction": progress.get("fraction", 1.0 if
                                                                               row.status == "finished" else 0.0),
        "stage": progress.get("stage"), "eta_s": progress.get("eta_s") if row.status == "running" else None,
        "error": row.error, "created_at": row.created_at, "started_at": row.started_at,
        "finished_at": row.finished_at, "updated_at": row.updated_at,
        "lease_left_s": round(row.lease_until - time.time(), 1) if row.status == "running" else None,
    }
    if with_log:
        out["log_tail"] = row.log_tail
        out["result"] = json.loads(row.result_json) if row.result_json else None
    return out
