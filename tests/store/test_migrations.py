"""A study database of an older schema version is brought up to date when it is opened, once, on SQLite and
on PostgreSQL (a throwaway database on the server of NAS_BERT_TEST_POSTGRES_URL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url

from nas_bert.store import SCHEMA_VERSION, Database, FinalistRow, LatencyRow, Meta, StudyRow

PG = os.environ.get("NAS_BERT_TEST_POSTGRES_URL", "")


@contextmanager
def _database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database's URL: a SQLite file, or a database of its own on the PostgreSQL server."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    if not PG:
        pytest.skip("NAS_BERT_TEST_POSTGRES_URL is not set (bash .ci/postgres.sh pytest ... sets it)")
    name = f"nasbert_migrate_{uuid.uuid4().hex[:8]}"
    server = create_engine(PG, isolation_level="AUTOCOMMIT")
    with server.connect() as con:
        con.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as con:
            con.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        server.dispose()


def _version_1(url: str) -> None:
    """Version 1's `nasbert_latency` (no study; one row per device and key) with operator timings and the rows of
    finalists' timing runs: studies a and b chose finalists at 5 ms, c at 7 ms."""
    db = Database(url)
    with db.engine.begin() as con:
        con.execute(text("DROP TABLE nasbert_latency"))
        old = Table("nasbert_latency", MetaData(), Column("id", Integer, primary_key=True, autoincrement=True),
                    Column("fingerprint", String(64), index=True, nullable=False),
                    Column("key", String(128), nullable=False), Column("ms", Float, nullable=False),
                    Column("created_at", String(32), nullable=False), UniqueConstraint("fingerprint", "key"))
        old.create(con)
        con.execute(insert(old), [{"fingerprint": "fp", "key": k, "ms": 1.0, "created_at": "then"} for k in (
            "mha:8:2", "embeddings:99:8", "model:5:search:abc", "drift:5:t", "refit_a:5:t", "calibration:5:t:0",
            "drift:9:t")])
        con.execute(text("UPDATE nasbert_meta SET value = '1'"))
    with db.session() as s:
        s.add_all([FinalistRow(study=st, budget_ms=b, name="n", origin="search", arch_hash="abc", arch_json="{}",
                               protocol_hash="p") for st, b in (("a", 5.0), ("b", 5.0), ("c", 7.0))])
        s.add(StudyRow(name="d", config_json="{}"))
    db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_version_1_gains_the_study_of_each_timing_run(tmp_path: Path, backend: str) -> None:
    with _database(backend, tmp_path) as url:
        _version_1(url)
        db = Database(url)
        Database(url).dispose()  # opened again: migrated once
        with db.session() as s:
            assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION) == "2"
            rows = {(r.study, r.key) for r in s.scalars(select(LatencyRow))}
        # a device's operator timings are every study's; a timing run's rows go to the studies with finalists
        # of its budget, else to every study, so each reads what it read before
        five = {"model:5:search:abc", "drift:5:t", "refit_a:5:t", "calibration:5:t:0"}
        assert rows == ({("", "mha:8:2"), ("", "embeddings:99:8")} | {(st, k) for st in "ab" for k in five}
                        | {(st, "drift:9:t") for st in "abcd"})
        with db.session() as s:  # the same key of two studies, and of one study on two devices
            s.add(LatencyRow(fingerprint="fp", study="e", key="drift:5:t", ms=2.0))
            s.add(LatencyRow(fingerprint="fp2", study="a", key="drift:5:t", ms=3.0))
        db.dispose()
