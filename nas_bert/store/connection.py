"""How a process reaches its study database: the URL and the service's job it runs as, from the environment, and
SQLite's connection settings."""

from __future__ import annotations

import os
from typing import Any

from nas_bert.errors import NasBertError

# The study database URL of a command, when --db is not given: how the service hands a URL (and its password)
# to the commands it runs without showing it in their argument list, which every user of the machine can read.
DB_ENV = "NAS_BERT_DB"
# "<job id>:<lease token>": the service's job a command runs as (`nas-bert worker` sets it, in the environment, as
# the URL). Its writes of stage results are refused once the job is no longer held under that token.
JOB_ENV = "NAS_BERT_JOB"


def held_job() -> tuple[int, str] | None:
    """The service's job this process runs as, from $NAS_BERT_JOB: (job id, lease token); None outside the service."""
    value = os.environ.get(JOB_ENV)
    if not value:
        return None
    job_id, _, token = value.partition(":")
    if not job_id.isdigit() or not token:
        raise NasBertError(f"${JOB_ENV} is {len(value)} characters but not <job id>:<lease token>; "
                           "unset it outside `nas-bert worker`")
    return int(job_id), token


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets several search workers read while one writes; NORMAL sync is safe under WAL.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
