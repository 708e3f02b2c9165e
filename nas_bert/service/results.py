"""What the service shows of a study's results, computed by the stages' own functions and cached.

Fronts come from `search.pareto_rows` / `chosen_row` and `choice.chosen_finalist`, the PNG from
`plots.plot_fronts`, the students from the export's own `index.json`. Polling clients share one
computation per study and budget at a time (a time-to-live cache that grows with the computation's cost,
serving the previous value while one caller recomputes), so any number of them costs the search running
beside them about as much as one.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import queue
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import select

from nas_bert.lifetime import die_with_parent
from nas_bert.store import (
    ArchitectureRow,
    Database,
    FinalistRow,
    LatencyCalibration,
    LatencyRow,
    atomic_file,
    folder_identity,
)
from nas_bert.study import Study

if TYPE_CHECKING:  # the stages are imported where fronts are computed, in their own process
    from nas_bert.choose import Finalist
    from nas_bert.search import FrontRow

CLOUD_POINTS = 2000  # at most this many trials drawn behind a front


class TTLCache:
    """`get(key, compute)`: the value computed for `key`, recomputed when older than its time to live.

    The time to live is `ttl_s`, or `cost_factor` times what the last computation took when that is longer
    (a front of ten thousand trials is recomputed less often, so polling never takes more than about
    1 / cost_factor of a core from the search). One caller recomputes; meanwhile the others get the
    previous value at once (only the very first computation of a key makes callers wait)."""

    def __init__(self, ttl_s: float, cost_factor: float = 5.0) -> None:
        self.ttl_s, self.cost_factor = ttl_s, cost_factor
        self._values: dict[Any, tuple[float, float, Any]] = {}  # key: (computed at, seconds it took, value)
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def _fresh(self, key: Any) -> tuple[bool, Any]:
        hit = self._values.get(key)
        if hit is None:
            return False, None
        at, cost, _ = hit
        return time.monotonic() - at < max(self.ttl_s, self.cost_factor * cost), hit

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        fresh, hit = self._fresh(key)
        if fresh:
            return hit[2]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(blocking=hit is None):
            return hit[2]  # another caller is recomputing it: the previous value now
        try:
            fresh, hit = self._fresh(key)
            if fresh:
                return hit[2]
            t0 = time.monotonic()
            value = compute()
            self._values[key] = (time.monotonic(), time.monotonic() - t0, value)
            return value
        finally:
            lock.release()


def fastest_ms(db: Database, study: Study) -> float | None:
    """The space's fastest student as the stored latency model predicts it on this device, without timing
    anything (None while the latency stage has not run here)."""
    from nas_bert.latency import Calibration, LatencyModel, calibration_key, device_fingerprint, table_specs
    from nas_bert.teacher import embeddings_spec_of, load_teacher_config

    emb = embeddings_spec_of(load_teacher_config(study.cfg.teacher))
    fp = device_fingerprint(study.cfg.latency)
    with db.session() as s:
        table = {r.key: r.ms for r in s.scalars(select(LatencyRow).where(LatencyRow.fingerprint == fp))}
        cal = s.get(LatencyCalibration, calibration_key(fp, study.space, study.cfg.latency))
        cal_json, mape = (cal.model_json, cal.mape) if cal is not None else (None, None)
    if cal_json is None or any(k not in table for k in table_specs(study.space, emb)):
        return None
    model = LatencyModel(fp, study.cfg.latency, table, Calibration.from_json(cal_json, mape))
    return model.fastest_possible(study.space, emb)


def _finalists(db: Database, study: Study, budget: float) -> list[dict[str, Any]]:
    """The latest finalists' run of a budget: each student's predicted and measured latency."""
    from nas_bert.choose import latest_choice

    if (choice := latest_choice(db, study, budget)) is not None:  # as that run timed and ranked them
        return [{"name": f.name, "origin": f.origin, "hash": f.hash, "trial": f.trial, "predicted_ms": f.predicted_ms,
                 "measured_ms": f.measured_ms, "fidelity": f.fidelity, "over_budget": f.over_budget}
                for f in choice.finalists]
    with db.session() as s:  # a database that recorded no choice: the rows of the latest protocol
        rows = s.scalars(select(FinalistRow).where(FinalistRow.study == study.name, FinalistRow.budget_ms == budget)
                         .order_by(FinalistRow.id)).all()
        if not rows:
            return []
        latest = rows[-1].protocol_hash
        rows = [r for r in rows if r.protocol_hash == latest]
        predicted = {a.hash: a.predicted_ms for a in s.scalars(select(ArchitectureRow).where(
            ArchitectureRow.study == study.name, ArchitectureRow.hash.in_({r.arch_hash for r in rows})))}
        out = []
        for r in rows:
            m = json.loads(r.metrics_json or "{}")
            out.append({"name": r.name, "origin": r.origin, "hash": r.arch_hash, "trial": r.trial_number,
                        "predicted_ms": predicted.get(r.arch_hash), "measured_ms": r.measured_ms,
                        "fidelity": m.get("fidelity"), "over_budget": bool(m.get("over_budget"))})
    return out


def front(db: Database, study: Study, budget: float) -> dict[str, Any]:
    """One budget: its feasible front (approximate loss vs predicted latency, with the measured latency of
    those timed), the chosen student, the finalists, trial counts and a sample of every trial.

    The chosen student is the finalists' choice once made; before it, the front's best by rescored (else
    approximate) loss. Reading every trial is what costs (each `get_trials` deserialises them all), so
    they are read twice (the counts, and `pareto_rows`), not the six times of calling `chosen_row` too."""
    from nas_bert.choose import chosen_finalist
    from nas_bert.search import optuna_study_name, pareto_rows, storage_for

    st = optuna.load_study(study_name=optuna_study_name(study, budget), storage=storage_for(study))
    trials = st.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    step = max(1, len(complete) // CLOUD_POINTS)
    rows = pareto_rows(db, study, budget) if complete else []
    chosen: Finalist | FrontRow | None = chosen_finalist(db, study, budget) if complete else None
    if chosen is None and rows:
        chosen = min(rows, key=lambda r: (math.inf if r.rescored_loss is None else r.rescored_loss, r.approx_loss))
    return {
        "budget_ms": budget,
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "feasible": sum(t.values[1] <= budget for t in complete),
        "front": [r.model_dump(mode="json") for r in rows],
        "chosen": chosen.model_dump(mode="json") if chosen is not None else None,
        "finalists": _finalists(db, study, budget),
        "cloud": [[round(t.values[1], 4), round(t.values[0], 6)] for t in complete[::step]],
    }


class FrontProcess:
    """Fronts and their PNG computed in a process of their own, so that deserialising thousands of trials
    never holds the API's interpreter lock: requests keep being answered while a front is recomputed.

    The process is started by a thread of this object's own, which lives as long as the service: Linux
    sends a process its parent's death signal when the *thread* that started it ends, and the request
    threads that used to start it are retired after 10 s idle, so it was killed and started again over
    and over (and two deaths in a row were a 500)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._requests: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._owner = threading.Thread(target=self._serve_requests, name="front-process-owner", daemon=True)
        self._owner.start()

    def _serve_requests(self) -> None:
        while (request := self._requests.get()) is not None:
            request()

    def _new_pool(self) -> ProcessPoolExecutor:
        """A pool whose process the owner thread starts (a first submission starts it in the submitting thread)."""
        made: Future[ProcessPoolExecutor] = Future()

        def make() -> None:
            try:
                pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_child_init,
                                           initargs=(self.db_url, os.getpid()))
                pool.submit(os.getpid)
                made.set_result(pool)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                made.set_exception(e)

        self._requests.put(make)
        return made.result()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        for attempt in (1, 2):
            with self._lock:
                if self._pool is None:
                    self._pool = self._new_pool()
                pool = self._pool
            try:
                return pool.submit(fn, *args).result()
            except BrokenProcessPool:  # the process died (killed, out of memory): a new one, once
                with self._lock:
                    if self._pool is pool:
                        self._pool = None
                if attempt == 2:
                    raise
        return None

    def front(self, study: Study, budget: float) -> dict[str, Any]:
        return self._submit(_child_front, str(study.file), budget)

    def png(self, study: Study, budgets: list[float], folder: Path) -> bytes:
        return self._submit(_child_png, str(study.file), budgets, str(folder))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        self._requests.put(None)  # the owner thread ends


_CHILD: dict[str, Any] = {}


def _child_init(db_url: str, parent: int) -> None:
    die_with_parent(parent)  # a service killed at any moment leaves no process behind
    _CHILD.update(db_url=db_url, db=Database(db_url), studies={})


def _child_study(file: str) -> Study:
    from nas_bert.study import load_study

    mtime = Path(file).stat().st_mtime
    hit = _CHILD["studies"].get(file)
    if hit is None or hit[0] != mtime:
        hit = _CHILD["studies"][file] = (mtime, load_study(file, _CHILD["db_url"]))
    return hit[1]


def _child_front(file: str, budget: float) -> dict[str, Any]:
    return front(_CHILD["db"], _child_study(file), budget)


def _child_png(file: str, budgets: list[float], folder: str) -> bytes:
    return front_png(_child_study(file), budgets, Path(folder))


def front_png(study: Study, budgets: list[float], folder: Path) -> bytes:
    from nas_bert.export import plot_fronts

    key = "-".join(f"{b:g}" for b in budgets)
    path = folder / f".front-{key}-{threading.get_ident()}.png"
    try:
        plot_fronts(study, budgets, path)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def students(study: Study) -> dict[str, Any] | None:
    """The exported students as the export's index.json lists them (None before any export)."""
    index = study.export_dir / "index.json"
    if not index.is_file():
        return None
    return json.loads(index.read_text())


def student_folder(study: Study, name: str) -> Path | None:
    """An exported student's folder, if `name` is one listed in the export's index (never any other path)."""
    index = students(study)
    if index is None or name not in {s["name"] for s in index["students"]}:
        return None
    folder = study.export_dir / name
    return folder if folder.is_dir() else None


_ARCHIVE_LOCKS: dict[Path, threading.Lock] = {}
_ARCHIVE_LOCKS_LOCK = threading.Lock()


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def archive(study: Study, name: str, folder: Path) -> Path:
    """`<name>.tar.gz` of an exported student folder, built once per content (written atomically): requests
    that ask at once wait for the one that builds it, and the bytes depend on the folder alone (members in
    name order, no owner, gzip without a time stamp or file name), so every download of one student has one sha256."""
    out = study.workdir / "archives" / f"{name}-{folder_identity(folder)}.tar.gz"
    with _ARCHIVE_LOCKS_LOCK:
        lock = _ARCHIVE_LOCKS.setdefault(out, threading.Lock())
    with lock:
        if not out.is_file():
            with atomic_file(out) as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(folder, arcname=name, filter=_reproducible)  # tarfile adds a folder's entries sorted
    return out
