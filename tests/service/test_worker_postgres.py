"""`nas-bert worker` runs a whole `run` job of the tiny study against PostgreSQL, from a fresh study to its
exported student: every stage recorded, the job finished (the server of NAS_BERT_TEST_POSTGRES_URL; `.ci/run`
starts a throwaway one)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import FAST, ROOT, copy_latency_table
from sqlalchemy import delete, select

from nas_bert.service import jobs
from nas_bert.store import Database, JobRow, StageRow
from nas_bert.study import load_study

URL = os.environ.get("NAS_BERT_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(not URL, reason="no PostgreSQL: run `bash .ci/postgres.sh pytest -q -k postgres`")
# the smallest evaluation the pipeline's own test runs
EVAL = {"finetune_steps": 3, "fidelity_texts": 16, "max_train_examples": 48, "max_eval_examples": 16,
        "max_seq_length": 16, "batch_size": 8, "ood_texts": 16}


def test_a_worker_runs_a_run_job_on_postgresql(tmp_path: Path, searched_tiny: Path) -> None:
    name = f"pgrun{uuid.uuid4().hex[:8]}"  # the server may be shared: this study's rows are its own
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(copy.deepcopy(FAST), name=name, evaluate=EVAL)
    data["search"].update(budgets_ms=[5.0], finalist_baselines=False, finalist_steps=1, trials=8)
    data["latency"]["fresh_process"] = False  # three interpreters fewer to start; the same device fingerprint
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    db = Database(URL)
    copy_latency_table(load_study(searched_tiny).db_url, URL)  # the device's latency model, not timed again
    job, _ = jobs.enqueue(db, name, "run")
    try:
        worker = subprocess.run([sys.executable, "-m", "nas_bert", "worker", "--db", URL, "--studies", str(tmp_path),
                                 "--once", "--heartbeat", "1", "--poll", "0.5"],
                                check=False, capture_output=True, text=True, timeout=900)
        done = jobs.get(db, job.id)
        assert done is not None and done.status == "finished", (done and done.error, worker.stderr[-3000:])
        assert worker.returncode == 0 and done.attempts == 1
        with db.session() as s:
            stages = set(s.execute(select(StageRow.stage, StageRow.key).where(StageRow.study == name)).all())
        assert stages == {("supernet", ""), ("latency", ""), ("export", "5"),
                          *((st, "5ms") for st in ("search", "finalists", "map-layers", "distill", "evaluate",
                                                   "reference"))}
    finally:
        with db.session() as s:
            s.execute(delete(JobRow).where(JobRow.id == job.id))
        db.dispose()
