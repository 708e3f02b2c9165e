"""PostgreSQL: nas-bert's schema and Optuna's storage on a real server (seconds).

Runs when NAS_BERT_TEST_POSTGRES_URL names a PostgreSQL database; `.ci/run` starts a throwaway one.
The multi-process search against one PostgreSQL URL is tests/search/test_search.py's
test_two_commands_share_one_postgresql_database.
"""

from __future__ import annotations

import os
import uuid
from contextlib import suppress

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import delete, inspect
from sqlalchemy import text as sql_text

from nas_bert.search import storage_for
from nas_bert.store import SCHEMA_VERSION, Base, Database, Meta, StudyRow
from nas_bert.study import load_study

URL = os.environ.get("NAS_BERT_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(
    not URL,
    reason="no PostgreSQL: run `bash .ci/postgres.sh pytest -q -k postgres` (a throwaway server), or set "
    "NAS_BERT_TEST_POSTGRES_URL=postgresql+psycopg://user@host:port/db (needs psycopg: pip install -e '.[dev]')",
)


def test_schema_and_optuna_storage_on_postgresql(tiny_study_file):
    name = f"pg-{uuid.uuid4().hex[:8]}"  # the database may be shared: this test's rows are its own
    db = Database(URL)
    storage = None
    try:
        assert db.engine.dialect.name == "postgresql", URL
        tables = set(inspect(db.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables, set(Base.metadata.tables) - tables
        with db.session() as s:
            assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        db.upsert_study(name, {"teacher": "tiny", "steps": 2})
        Database(URL).dispose()  # opening an existing schema again changes nothing
        with db.session() as s:
            assert s.get(StudyRow, name).config == {"teacher": "tiny", "steps": 2}

        # Optuna's tables in the same database, through the storage the search opens
        study = load_study(tiny_study_file, URL, overrides={"name": name, "search.heartbeat_interval": 1})
        storage = storage_for(study)
        st = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"],
                                 sampler=optuna.samplers.RandomSampler(seed=0))
        st.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0), t.suggest_int("n", 1, 4)), n_trials=3)
        again = optuna.load_study(study_name=name, storage=URL)
        assert [t.state for t in again.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * 3
        with storage.engine.connect() as con:  # the raw SQL search.fail_orphans runs on Optuna's table
            con.execute(sql_text("SELECT trial_id FROM trial_heartbeats")).fetchall()
    finally:
        if storage is not None:
            with suppress(KeyError):  # KeyError: the study was never created
                optuna.delete_study(study_name=name, storage=storage)
            storage.engine.dispose()
        with db.session() as s:
            s.execute(delete(StudyRow).where(StudyRow.name == name))
        db.dispose()
