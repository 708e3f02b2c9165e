"""The study database: the whole schema in one file, one `session_scope()`.

Optuna's RDBStorage lives in the same database and owns its own tables; ours are prefixed
`nasbert_`, refer to Optuna only by (study name, trial number), and carry a schema version.
JSON goes in text columns so SQLite and PostgreSQL behave the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DatabaseError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from nas_bert.errors import NasBertError
from nas_bert.store.connection import held_job, sqlite_pragmas
from nas_bert.store.failures import database_error, describe_url, is_corrupt, sqlite_file
from nas_bert.store.migrations import migrate

# 2: nasbert_latency.study (`migrations`)
SCHEMA_VERSION = 2


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "nasbert_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class StudyRow(Base):
    __tablename__ = "nasbert_studies"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    config_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32), default=_now)
    updated_at: Mapped[str] = mapped_column(String(32), default=_now, onupdate=_now)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json)


class SupernetRun(Base):
    """One supernet training run: a study trains one supernet per supernet key (the fingerprint of every
    input that shapes its weights, `nas_bert.supernet.supernet_key`)."""

    __tablename__ = "nasbert_supernet_runs"
    __table_args__ = (UniqueConstraint("study", "space_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    # the column (and the constraint above) keep their first name, so existing study databases read as they are
    supernet_key: Mapped[str] = mapped_column("space_hash", String(32))
    teacher: Mapped[str] = mapped_column(Text)
    config_json: Mapped[str] = mapped_column(Text)
    target_steps: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | finished
    created_at: Mapped[str] = mapped_column(String(32), default=_now)
    updated_at: Mapped[str] = mapped_column(String(32), default=_now, onupdate=_now)


class Checkpoint(Base):
    """A checkpoint file beside the database: path, step, sha256 and its validation losses."""

    __tablename__ = "nasbert_checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("nasbert_supernet_runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    val_losses_json: Mapped[str] = mapped_column(Text, default="{}")
    deleted: Mapped[int] = mapped_column(Integer, default=0)  # 1 once pruned from disk (keep_checkpoints)
    created_at: Mapped[str] = mapped_column(String(32), default=_now)

    @property
    def val_losses(self) -> dict[str, Any]:
        return json.loads(self.val_losses_json)

    @classmethod
    def latest(cls, session: Session, run_id: int) -> Checkpoint | None:
        q = select(cls).where(cls.run_id == run_id, cls.deleted == 0).order_by(cls.step.desc()).limit(1)
        return session.scalars(q).first()


class LatencyRow(Base):
    """One timing on one device (fingerprint: hardware, threads, batch, sequence length): an operator's, shared by
    every study (study ""), or a figure of one study's finalists' timing run (`choose.timing`), that study's alone."""

    __tablename__ = "nasbert_latency"
    __table_args__ = (UniqueConstraint("fingerprint", "study", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    study: Mapped[str] = mapped_column(String(128), default="", server_default="")  # schema version 2
    key: Mapped[str] = mapped_column(String(128))  # e.g. "mha:384:12", "proj:384:128", "embeddings:384"
    ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[str] = mapped_column(String(32), default=_now)


class LatencyCalibration(Base):
    """The correction from summed operator timings to end-to-end latency, fitted per device."""

    __tablename__ = "nasbert_latency_calibration"
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_json: Mapped[str] = mapped_column(Text)  # coefficients and the measurements they were fitted on
    mape: Mapped[float] = mapped_column(Float)  # leave-one-out mean absolute percentage error
    n: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(32), default=_now)


class BlockScore(Base):
    """NAS-BERT's performance approximation: a block sub-architecture's validation MSE, memoised."""

    __tablename__ = "nasbert_block_scores"
    __table_args__ = (UniqueConstraint("checkpoint_sha", "block", "block_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_sha: Mapped[str] = mapped_column(String(64), index=True)
    block: Mapped[int] = mapped_column(Integer)
    block_hash: Mapped[str] = mapped_column(String(32))
    loss: Mapped[float] = mapped_column(Float)


class ArchitectureRow(Base):
    """A scored student architecture of a study (the key everywhere is its hash)."""

    __tablename__ = "nasbert_architectures"
    __table_args__ = (UniqueConstraint("study", "hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    hash: Mapped[str] = mapped_column(String(32), index=True)
    arch_json: Mapped[str] = mapped_column(Text)
    params: Mapped[int] = mapped_column(Integer)
    flops: Mapped[int] = mapped_column(Integer)
    checkpoint_sha: Mapped[str] = mapped_column(String(64))
    predicted_ms: Mapped[float] = mapped_column(Float)
    approx_loss: Mapped[float] = mapped_column(Float)
    rescored_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    measured_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[str] = mapped_column(String(32), default=_now)


class TrialRow(Base):
    """Links an Optuna trial (by study name and trial number, no foreign key) to its architecture."""

    __tablename__ = "nasbert_trials"
    __table_args__ = (UniqueConstraint("optuna_study", "trial_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    optuna_study: Mapped[str] = mapped_column(String(256), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    arch_hash: Mapped[str] = mapped_column(String(32))
    budget_ms: Mapped[float] = mapped_column(Float)


class ExportRow(Base):
    """An exported student folder: where, its weights' sha256 and the metrics in its model card."""

    __tablename__ = "nasbert_exports"
    __table_args__ = (UniqueConstraint("study", "arch_hash", "path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    arch_hash: Mapped[str] = mapped_column(String(32))
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    budget_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # of model.safetensors
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[str] = mapped_column(String(32), default=_now)


class EvaluationRow(Base):
    """Stage 8: one evaluation of a subject (the teacher, or a student folder) on one task."""

    __tablename__ = "nasbert_evaluations"
    __table_args__ = (UniqueConstraint("study", "subject", "task", "protocol_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    subject: Mapped[str] = mapped_column(Text)  # "teacher" or a model folder path
    arch_hash: Mapped[str | None] = mapped_column(String(32), nullable=True)
    task: Mapped[str] = mapped_column(String(256))
    protocol_hash: Mapped[str] = mapped_column(String(32))  # hash of the evaluation settings
    metrics_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32), default=_now)


class MappingEval(Base):
    """Stage 6: the proxy-distillation fitness of one layer mapping for one student (memoised)."""

    __tablename__ = "nasbert_mapping_evals"
    __table_args__ = (UniqueConstraint("study", "arch_hash", "mapping_json", "protocol_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    arch_hash: Mapped[str] = mapped_column(String(32), index=True)
    mapping_json: Mapped[str] = mapped_column(Text)
    protocol_hash: Mapped[str] = mapped_column(String(32))  # the proxy's settings
    fitness: Mapped[float] = mapped_column(Float)  # held-out loss after the proxy distillation (lower is better)
    generation: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(32), default="ga")  # uniform | last | ga | enumerated
    created_at: Mapped[str] = mapped_column(String(32), default=_now)


class ScreenRow(Base):
    """Stage 5's screen: one student's few-step distillation (`search.screen_steps`), whatever budget asked for it."""
    __tablename__ = "nasbert_screens"
    __table_args__ = (UniqueConstraint("study", "arch_hash", "origin", "protocol_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    arch_hash: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(16))  # search | a family: the starting weights
    protocol_hash: Mapped[str] = mapped_column(String(32))  # the finalists' protocol, the screen's steps and seed
    metrics_json: Mapped[str] = mapped_column(Text)  # fidelity, fidelity_bootstrap, seconds


class DistillRun(Base):
    """Stage 7: one distillation of one student with one mapping; the student folder it produced."""

    __tablename__ = "nasbert_distill_runs"
    __table_args__ = (UniqueConstraint("study", "arch_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    arch_hash: Mapped[str] = mapped_column(String(32))
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    budget_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    mapping_json: Mapped[str] = mapped_column(Text)
    target_steps: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    student_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    report_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[str] = mapped_column(String(32), default=_now)
    updated_at: Mapped[str] = mapped_column(String(32), default=_now, onupdate=_now)


class FinalistRow(Base):
    """Stage 5: one finalist of a budget (a searched student or a hand-designed one) after the same short
    distillation: its measured latency and held-out fidelity; the budget's student is the best of them."""

    __tablename__ = "nasbert_finalists"
    __table_args__ = (UniqueConstraint("study", "budget_ms", "name", "protocol_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    budget_ms: Mapped[float] = mapped_column(Float)
    name: Mapped[str] = mapped_column(String(64))  # "trial-203", "teacher-layers-2", "truncated-3", "uniform-224"
    origin: Mapped[str] = mapped_column(String(16))  # search | truncated | uniform
    arch_hash: Mapped[str] = mapped_column(String(32))
    arch_json: Mapped[str] = mapped_column(Text)
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    protocol_hash: Mapped[str] = mapped_column(String(32))  # the finalists' settings and supernet checkpoint
    measured_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")  # proxies, fidelity before/after, interval
    created_at: Mapped[str] = mapped_column(String(32), default=_now)


class ChoiceRow(Base):
    """Stage 5's choice for one budget: its latest finalists' run as a `FinalistsResult` (JSON). The finalists' rows
    keep every student scored under a protocol, also one a later run no longer timed or timed over the budget; the
    export, `nas-bert distill` and the service take the budget's student from here."""

    __tablename__ = "nasbert_choices"
    __table_args__ = (UniqueConstraint("study", "budget_ms"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    budget_ms: Mapped[float] = mapped_column(Float)
    protocol_hash: Mapped[str] = mapped_column(String(32))  # the finalists' protocol it ranked by
    result_json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[str] = mapped_column(String(32), default=_now, onupdate=_now)


class StageRow(Base):
    """`nas-bert run`'s record of a finished stage (key: e.g. the budget), with its summary."""

    __tablename__ = "nasbert_stages"
    __table_args__ = (UniqueConstraint("study", "stage", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(128), default="")
    config_hash: Mapped[str] = mapped_column(String(32))  # the study settings the stage ran with
    summary_json: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[str] = mapped_column(String(32), default=_now, onupdate=_now)  # the last time it finished


class JobRow(Base):
    """`nas-bert serve`'s queue: one search, run or export of a study, claimed by one worker at a time.

    A worker owns a running job while `lease_until` (epoch seconds) lies ahead and it holds `lease_token`;
    every state change is a conditional UPDATE on those, so no job runs twice and a dead worker's job
    is taken over once its lease runs out. `dedupe_key` makes a second launch of the same job return
    the first one.
    """

    __tablename__ = "nasbert_jobs"
    __table_args__ = (UniqueConstraint("dedupe_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # search | run | export
    budget_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    params_json: Mapped[str] = mapped_column(Text, default="{}")
    dedupe_key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # queued|running|stopped|finished|failed
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)  # host:pid of the holder
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far (a takeover adds one)
    progress_json: Mapped[str] = mapped_column(Text, default="{}")
    log_tail: Mapped[str] = mapped_column(Text, default="")
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # this attempt's claim
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class Database:
    """An engine and a session factory for one study URL, with the schema checked on open.

    A file that is not a SQLite database, or one SQLite finds corrupt, is a one-line `NasBertError` naming
    the file, on open and in any later session; nothing is written to it."""

    def __init__(self, url: str, busy_timeout_s: float = 60.0) -> None:
        self.url = url
        if sqlite_file(url):
            try:
                Path(sqlite_file(url)).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise NasBertError(f"study database {sqlite_file(url)}: its folder cannot be made ({e.strerror}); "
                                   "check the path and its permissions") from None
        try:
            self.engine: Engine = create_engine(url, connect_args={"timeout": busy_timeout_s} if url.startswith("sqlite")
                                                else {})
        except (ArgumentError, ModuleNotFoundError) as e:
            raise NasBertError(f"database URL '{url}' is not usable ({e}); use sqlite:///path.db or postgresql+psycopg://...") from None
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(self.engine)
        except DatabaseError as e:
            self.engine.dispose()
            raise database_error(url, e) from None
        self._check_version()
        self.job = held_job()
        if self.job is not None:  # a command the service runs: its stage results are written while the job is its
            event.listen(self._sessions, "before_flush", self._check_job)

    def _check_version(self) -> None:
        with self.session() as s:
            row = s.get(Meta, "schema_version")
            if row is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            elif not str(row.value).isdigit():
                raise NasBertError(f"{describe_url(self.url)} has an unreadable schema version {row.value!r}; "
                                   f"restore it from a backup or move it away to start afresh")
            elif int(row.value) > SCHEMA_VERSION:
                raise NasBertError(
                    f"database '{self.url}' has schema version {row.value}, newer than this nas-bert's "
                    f"{SCHEMA_VERSION}; upgrade nas-bert"
                )
            found = int(row.value) if row is not None else SCHEMA_VERSION
        if found < SCHEMA_VERSION:
            try:
                migrate(self.engine, found, SCHEMA_VERSION, Base.metadata)
            except DatabaseError as e:
                raise database_error(self.url, e) from None

    def _check_job(self, session: Session, _context: Any, _instances: Any) -> None:
        """Before a flush that writes a stage's result: the job this command runs as must still be running under
        its lease token (one SELECT by primary key, no lock: a heartbeat never waits on a command's write).
        Stopped or taken over by another worker: one line, and the command ends."""
        if not any(isinstance(o, RESULT_ROWS) for o in (*session.new, *session.dirty, *session.deleted)):
            return
        job_id, token = self.job or (0, "")
        q = select(JobRow.id).where(JobRow.id == job_id, JobRow.lease_token == token, JobRow.status == "running")
        if session.connection().execute(q).first() is None:
            raise NasBertError(f"job {job_id} is no longer this worker's (stopped, or taken over by another worker); "
                               "its results are not recorded")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on error, always closes."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except DatabaseError as e:
            if not is_corrupt(e):  # IntegrityError and friends: the caller's to handle
                s.rollback()
                raise
            try:
                s.rollback()
            except DatabaseError:
                pass
            raise database_error(self.url, e) from None
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def upsert_study(self, name: str, config: dict[str, Any]) -> None:
        with self.session() as s:
            row = s.get(StudyRow, name)
            blob = json.dumps(config, sort_keys=True)
            if row is None:
                s.add(StudyRow(name=name, config_json=blob))
            elif row.config_json != blob:
                row.config_json = blob

    def now(self) -> float:
        """The database's clock in epoch seconds: every worker of a queue judges leases by this one clock,
        never by its own (PostgreSQL's server clock; SQLite lives on this machine, whose clock it is)."""
        query = {"postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
                 "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0"}.get(self.engine.dialect.name)
        if query is None:
            return time.time()
        with self.engine.connect() as c:
            return float(c.execute(text(query)).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()


# What a stage records as its result, refused once the job a command runs as is no longer its (`JOB_ENV`)
RESULT_ROWS = (StageRow, SupernetRun, Checkpoint, ArchitectureRow, FinalistRow, ChoiceRow, MappingEval, DistillRun,
               ExportRow, EvaluationRow, ScreenRow)
