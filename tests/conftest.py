"""Shared fixtures: a tiny random teacher (cached per session), the tiny space and study."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The tiny teacher is built into a per-session cache, so tests never depend on ~/.cache.
    os.environ["NAS_BERT_CACHE"] = str(tmp_path_factory.mktemp("nas-bert-cache"))


@pytest.fixture(scope="session")
def tiny_space():
    from nas_bert.space import load_space

    return load_space("tiny")


@pytest.fixture(scope="session")
def tiny_teacher():
    from nas_bert.teacher import load_teacher

    return load_teacher("tiny-random-bert")


@pytest.fixture()
def tiny_study_file(tmp_path: Path) -> Path:
    """A copy of studies/tiny.yaml in a temporary folder, so its database and checkpoints land there."""
    dst = tmp_path / "tiny.yaml"
    shutil.copy(ROOT / "studies" / "tiny.yaml", dst)
    return dst


# Sizes that make every stage of the tiny study take seconds. The timing runs stay in the test's own process (a new
# interpreter costs seconds per run); the tests that spy on `in_fresh_process` keep the default, a new process each.
FAST = {
    "latency": {"seq_len": 32, "min_run_time": 0.005, "calibration_archs": 3, "calibration_one_width": 2,
                "fresh_process": False},
    "search": {"trials": 24, "population_size": 6, "score_batches": 1, "rescore_batches": 1, "batch_size": 4,
               "rescore_top": 2, "heartbeat_interval": 1, "grace_period": 2, "finalist_steps": 2},
    "mapping": {"population": 4, "generations": 2, "proxy_steps": 2, "proxy_batch_size": 2, "proxy_examples": 32,
                "proxy_val_batches": 1, "enumerate_below": 0},
    "distill": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 4, "checkpoint_every": 2,
                "val_batches": 2},
}


def make_tiny_study(root: Path, search_budget: float | None = None,
                    overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """studies/tiny.yaml with FAST sizes (and `overrides`, section -> keys) in `root`, its supernet trained and
    latency table built; with `search_budget`, also a finished search for that budget."""
    import yaml

    from nas_bert.latency import ensure_latency_model
    from nas_bert.store import Database
    from nas_bert.study import load_study
    from nas_bert.supernet import train_supernet
    from nas_bert.teacher import embeddings_spec_of, load_teacher_config

    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(copy.deepcopy(FAST))  # never edit the shared sizes in place
    for section, keys in (overrides or {}).items():
        data.setdefault(section, {}).update(keys)
    (root / "tiny.yaml").write_text(yaml.safe_dump(data))
    study = load_study(root / "tiny.yaml")
    train_supernet(study)
    emb = embeddings_spec_of(load_teacher_config(data["teacher"]))
    shared_latency_model(study.db_url)
    ensure_latency_model(Database(study.db_url), study.space, emb, study.cfg.latency, progress=False)
    shared_latency_model(study.db_url, keep=True)
    if search_budget is not None:
        from nas_bert.search import search

        search(study, search_budget)
    return root / "tiny.yaml"


_LATENCY_CACHE: list[str] = []  # the session's latency model of this machine, in a database of its own


def shared_latency_model(db_url: str, keep: bool = False) -> None:
    """The tiny studies' latency model, timed once per session: copied into a new study's database (`keep`:
    from it, after its first build). The rows are those of this machine's device fingerprint, so every study
    reads what it would have timed itself, less the minutes of timing it again."""
    if keep and not _LATENCY_CACHE:
        import tempfile

        _LATENCY_CACHE.append(f"sqlite:///{tempfile.mkdtemp(prefix='nas-bert-latency-')}/latency.db")
        copy_latency_table(db_url, _LATENCY_CACHE[0])
    elif not keep and _LATENCY_CACHE:
        copy_latency_table(_LATENCY_CACHE[0], db_url)


def copy_latency_table(src_url: str, dst_url: str) -> None:
    """The device's operator timings and calibrations of one study database written into another (a study moved
    to a shared PostgreSQL brings the latency model it fitted instead of timing it again)."""
    from sqlalchemy import select

    from nas_bert.store import Database, LatencyCalibration, LatencyRow

    src, dst = Database(src_url), Database(dst_url)
    with src.session() as s:
        rows = [(r.fingerprint, r.key, r.ms) for r in s.scalars(select(LatencyRow).where(LatencyRow.study == ""))]
        cals = [(c.fingerprint, c.model_json, c.mape, c.n) for c in s.scalars(select(LatencyCalibration))]
    src.dispose()
    with dst.session() as s:  # what the target holds already stays
        have = set(s.execute(select(LatencyRow.fingerprint, LatencyRow.key).where(LatencyRow.study == "")))
        s.add_all([LatencyRow(fingerprint=f, study="", key=k, ms=ms) for f, k, ms in rows if (f, k) not in have])
        fitted = set(s.scalars(select(LatencyCalibration.fingerprint)))
        s.add_all([LatencyCalibration(fingerprint=f, model_json=j, mape=m, n=n) for f, j, m, n in cals if f not in fitted])
    dst.dispose()


def copy_study(src: Path, dst: Path) -> Path:
    """A copy of a study's files (its checkpoint paths still point at the original's folder).

    The database is copied with SQLite's backup API: in WAL mode a raw copy of the file (and of
    its -wal/-shm companions, still open in this process) is not a consistent database.
    """
    import sqlite3

    for p in src.parent.iterdir():
        if not p.is_file() or p.name.endswith(("-wal", "-shm")):
            continue
        if p.suffix == ".db":
            with sqlite3.connect(p) as source, sqlite3.connect(dst / p.name) as target:
                source.backup(target)
        else:
            shutil.copy(p, dst / p.name)
    return dst / src.name


@pytest.fixture(scope="session")
def searched_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny study with a trained supernet and a finished 5 ms search (built once per session)."""
    return make_tiny_study(tmp_path_factory.mktemp("searched"), search_budget=5.0)


def dies_after(n: int, fitness):
    """`fitness` that raises KeyboardInterrupt (a kill) on its call number n + 1."""
    calls = {"n": 0}

    def wrapped(mapping):
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt
        return fitness(mapping)

    wrapped.calls = calls  # type: ignore[attr-defined]
    return wrapped
