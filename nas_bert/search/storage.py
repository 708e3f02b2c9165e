"""Where a study's searches live: the Optuna storage in the study database, a budget's Optuna study
name (one per latency model), the budgets searched so far, and the supernet checkpoint a search scores with.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DatabaseError, IntegrityError, ProgrammingError

from nas_bert.errors import NasBertError
from nas_bert.latency import device_fingerprint
from nas_bert.store import Checkpoint, Database, database_error
from nas_bert.study import Study
from nas_bert.supernet import Supernet, load_supernet_checkpoint
from nas_bert.teacher import Teacher, load_teacher

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def own_study_name(study: Study, budget_ms: float) -> str:
    """The Optuna study a search of `budget_ms` made here writes: the study, the budget and this machine's latency
    model (`device_fingerprint`: hardware, torch, the study's latency settings). A search taken over on a machine
    with another latency model is another Optuna study there, never resumed with nor deleted for this one's."""
    return f"{unkeyed_study_name(study, budget_ms)}-{device_fingerprint(study.cfg.latency)}"


def unkeyed_study_name(study: Study, budget_ms: float) -> str:
    """The name one budget's search had before names held the latency model (`adopt_unkeyed`)."""
    return f"{study.name}-{budget_ms:g}ms"


def optuna_study_name(study: Study, budget_ms: float) -> str:
    """The Optuna study that holds one budget's search, as its readers find it: this machine's (`own_study_name`)
    where there is one, else the newest made on another machine or named before names held the latency model,
    else this machine's (no search yet)."""
    try:
        own: str | None = own_study_name(study, budget_ms)
    except NasBertError:  # e.g. a CUDA latency device on a machine without one: the searches made elsewhere
        own = None
    found = searches(study, budget_ms)
    if own in found or not found:
        return own or unkeyed_study_name(study, budget_ms)
    return found[-1]


def searches(study: Study, budget_ms: float) -> list[str]:
    """The Optuna studies holding searches of one budget (one per latency model, and one named before names held
    it), oldest first."""
    base = unkeyed_study_name(study, budget_ms)
    return [name for name in _optuna_studies(study, base) if name == base or _KEYED.fullmatch(name[len(base):])]


_KEYED = re.compile(r"-[0-9a-f]{16}")  # `own_study_name`'s suffix: a `device_fingerprint`


def _optuna_studies(study: Study, prefix: str) -> list[str]:
    """Optuna's study names in the study database that start with `prefix`, oldest first (without Optuna's
    storage, which would create its tables in a database a reader only reads)."""
    engine = create_engine(study.db_url, **({"connect_args": {"timeout": 60}} if study.db_url.startswith("sqlite")
                                            else {}))
    like = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
    try:
        with engine.connect() as con:
            if not inspect(con).has_table("studies"):
                return []
            rows = con.execute(text("SELECT study_id, study_name FROM studies WHERE study_name LIKE :p ESCAPE '!'"),
                               {"p": like}).all()
    except DatabaseError as e:
        raise database_error(study.db_url, e) from None
    finally:
        engine.dispose()
    return [name for _, name in sorted(rows)]


def adopt_unkeyed(study: Study, budget_ms: float, inputs: str) -> None:
    """A search named before names held the latency model becomes this machine's (`own_study_name`, trials and
    all) where it was made from the same inputs (`search.search_inputs`, which hold the latency model and its
    calibration), so it resumes; one made from other inputs (another machine's, an older supernet's) is left
    as it is, for readers, and this machine searches under its own name."""
    old, new = unkeyed_study_name(study, budget_ms), own_study_name(study, budget_ms)
    found = searches(study, budget_ms)
    if old not in found or new in found:
        return
    storage = storage_for(study)
    try:
        st = optuna.load_study(study_name=old, storage=storage)
        made_with = st.user_attrs.get("inputs")
        if made_with != inputs and (made_with is not None or st.get_trials(deepcopy=False)):
            return
        with storage.engine.begin() as con:  # Optuna's study row (its id, so its trials, unchanged) and our links
            con.execute(text("UPDATE studies SET study_name = :new WHERE study_name = :old"), {"new": new, "old": old})
            con.execute(text("UPDATE nasbert_trials SET optuna_study = :new WHERE optuna_study = :old"),
                        {"new": new, "old": old})
    except (KeyError, IntegrityError):  # renamed, or made anew, by another worker at the same moment
        pass
    finally:
        storage.engine.dispose()


def storage_for(study: Study) -> RDBStorage:
    """Optuna's storage in the study database, with the study's heartbeat and retry settings."""
    cfg = study.cfg.search
    kwargs = {"connect_args": {"timeout": 60}} if study.db_url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return RDBStorage(study.db_url, engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat_interval,
                              grace_period=cfg.grace_period,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry))
        except (IntegrityError, ProgrammingError) as e:
            # two processes creating Optuna's tables in a new database at once (two machines starting one search
            # on a fresh PostgreSQL): the loser's CREATE collides with the winner's; the tables exist now
            if attempt + 1 == CREATE_ATTEMPTS:
                raise database_error(study.db_url, e) from None
            time.sleep(0.2 * (attempt + 1))
        except DatabaseError as e:  # a damaged study file reaches Optuna first in e.g. `nas-bert pareto`
            raise database_error(study.db_url, e) from None
    raise AssertionError("unreachable")


CREATE_ATTEMPTS = 4


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
    """Budgets searched so far in this study, on any machine (from Optuna's study names)."""
    prefix = f"{study.name}-"
    out: set[float] = set()
    for name in _optuna_studies(study, prefix):
        m = re.fullmatch(r"(.+)ms(-[0-9a-f]{16})?", name[len(prefix):])
        try:
            if m:
                out.add(float(m[1]))
        except ValueError:
            continue
    return sorted(out)
