"""The study database's schema versions: each step takes a database from one version to the next in one
transaction, run once by whichever process opens it first (`migrate`).

Version 2: `nasbert_latency` gains `study`. Operator timings are a device's, shared by every study on it
(study ""); the figures of a finalists' timing run ("model:<budget>:...", "drift:<budget>:...",
"calibration:<budget>:...", `choose.timing`) are one study's, so two studies sharing a database (a
PostgreSQL server) no longer read and overwrite each other's drift, teacher time and refitted calibration.
A timing run's existing rows go to each study that could have read them: the studies with finalists of
that budget, else every study of the database. Each then reads exactly what it read before: nothing is
timed again and no recorded choice changes (dropping them would retime a resumed choice and leave the
reference stage without its truncated teachers' times).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.engine import Connection, Engine

# the first part of the keys of a finalists' timing run (`choose.timing.measured_ms`)
TIMING_KEYS = ("model", "drift", "teacher", "refit_a", "refit_c", "refit_w", "refit_b", "calibration")


def migrate(engine: Engine, found: int, target: int, metadata: MetaData) -> None:
    """Every step from schema version `found` to `target`. A process that opens the database at the same moment
    claims nothing (on PostgreSQL it waits for the first to commit) and finds the work done."""
    for version in range(found, target):
        with engine.begin() as con:
            # the claim comes first: on SQLite this write opens the transaction the DDL below runs in
            claimed = con.execute(text("UPDATE nasbert_meta SET value = :new WHERE key = 'schema_version' AND value = :old"),
                                  {"new": str(version + 1), "old": str(version)}).rowcount
            if claimed == 1:
                STEPS[version](con, metadata)


def _latency_by_study(con: Connection, metadata: MetaData) -> None:
    """Version 1 -> 2: `nasbert_latency.study`, unique with (fingerprint, key); the timing runs' rows to their
    studies."""
    table = metadata.tables["nasbert_latency"]
    if "study" not in {c["name"] for c in inspect(con).get_columns("nasbert_latency")}:
        if con.dialect.name == "sqlite":  # SQLite alters no constraint: the table is made anew
            con.execute(text("DROP INDEX IF EXISTS ix_nasbert_latency_fingerprint"))
            con.execute(text("ALTER TABLE nasbert_latency RENAME TO nasbert_latency_v1"))
            table.create(con)
            con.execute(text("INSERT INTO nasbert_latency (id, fingerprint, study, key, ms, created_at) "
                             "SELECT id, fingerprint, '', key, ms, created_at FROM nasbert_latency_v1"))
            con.execute(text("DROP TABLE nasbert_latency_v1"))
        else:
            con.execute(text("ALTER TABLE nasbert_latency ADD COLUMN study VARCHAR(128) NOT NULL DEFAULT ''"))
            for uc in inspect(con).get_unique_constraints("nasbert_latency"):
                if set(uc["column_names"]) == {"fingerprint", "key"}:
                    con.execute(text(f'ALTER TABLE nasbert_latency DROP CONSTRAINT "{uc["name"]}"'))
            con.execute(text("ALTER TABLE nasbert_latency ADD UNIQUE (fingerprint, study, key)"))
    c = table.c
    runs = [tuple(r) for r in con.execute(select(c.id, c.fingerprint, c.key, c.ms, c.created_at).where(c.study == ""))
            if r[2].split(":", 1)[0] in TIMING_KEYS]
    if not runs:
        return
    by_budget: dict[str, set[str]] = {}
    for study, budget in con.execute(text("SELECT DISTINCT study, budget_ms FROM nasbert_finalists")):
        by_budget.setdefault(f"{budget:g}", set()).add(study)
    everyone = set().union(*by_budget.values(), *(
        {s for (s,) in con.execute(text(q))} for q in ("SELECT name FROM nasbert_studies",
                                                       "SELECT DISTINCT study FROM nasbert_architectures",
                                                       "SELECT DISTINCT study FROM nasbert_supernet_runs")))
    copies = [{"fingerprint": fp, "study": s, "key": key, "ms": ms, "created_at": at}
              for _, fp, key, ms, at in runs for s in sorted(by_budget.get(key.split(":")[1], everyone))]
    ids = [r[0] for r in runs]
    for i in range(0, len(ids), 500):  # within every driver's limit on bound parameters
        con.execute(table.delete().where(c.id.in_(ids[i:i + 500])))
    if copies:
        con.execute(table.insert(), copies)


STEPS: dict[int, Callable[[Connection, MetaData], None]] = {1: _latency_by_study}
