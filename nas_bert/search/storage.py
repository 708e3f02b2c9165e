"""Where a study's searches live: the Optuna storage in the study database, a budget's Optuna study
name, the budgets searched so far, and the supernet checkpoint a search scores with.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.exc import DatabaseError

from nas_bert.errors import NasBertError
from nas_bert.store import Checkpoint, Database, database_error
from nas_bert.study import Study
from nas_bert.supernet import Supernet, load_supernet_checkpoint
from nas_bert.teacher import Teacher, load_teacher

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def optuna_study_name(study: Study, budget_ms: float) -> str:
    """The Optuna study that holds one budget's search."""
    return f"{study.name}-{budget_ms:g}ms"


def storage_for(study: Study) -> RDBStorage:
    """Optuna's storage in the study database, with the study's heartbeat and retry settings."""
    cfg = study.cfg.search
    kwargs = {"connect_args": {"timeout": 60}} if study.db_url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(study.db_url, engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat_interval,
                          grace_period=cfg.grace_period,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry))
    except DatabaseError as e:  # a damaged study file reaches Optuna first in e.g. `nas-bert pareto`
        raise database_error(study.db_url, e) from None


def latest_checkpoint(db: Database, study: Study) -> Checkpoint:
    """The supernet checkpoint a search scores with, checked on disk against its sha256."""
    from nas_bert.supernet import find_run

    with db.session() as s:
        run = find_run(s, study)  # the supernet of the study's current inputs
        ckpt = Checkpoint.latest(s, run.id) if run else None
    if ckpt is None:
        raise NasBertError(f"study '{study.name}' has no supernet checkpoint; run `nas-bert train-supernet --config {study.file}` first")
    return ckpt


def load_trained(db: Database, study: Study, device: torch.device) -> tuple[Checkpoint, Teacher, Supernet]:
    """The teacher and the study's latest supernet, its file checked against the recorded sha256."""
    ckpt = latest_checkpoint(db, study)
    teacher = load_teacher(study.cfg.teacher, device)
    # the file is checked against the sha256 the database recorded before anything in it is read, and read
    # without arbitrary unpickling (`identity.safe_torch_load`): a changed, truncated or foreign file is a
    # one-line error naming it
    supernet = load_supernet_checkpoint(Path(ckpt.path), study.space, teacher.hidden_size,
                                        float(getattr(teacher.config, "layer_norm_eps", 1e-12)),
                                        sha256=ckpt.sha256).to(device)
    return ckpt, teacher, supernet


def budgets_in_db(study: Study) -> list[float]:
    """Budgets searched so far in this study (from Optuna's study names)."""
    prefix = f"{study.name}-"
    out = []
    for s in optuna.get_all_study_summaries(storage_for(study)):
        if s.study_name.startswith(prefix) and s.study_name.endswith("ms"):
            try:
                out.append(float(s.study_name[len(prefix):-2]))
            except ValueError:
                continue
    return sorted(out)
