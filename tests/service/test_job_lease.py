"""The lease token of a job travels to the command that runs it (in the environment, never in its arguments),
and the command's writes of stage results are refused once the job is no longer held under it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from nas_bert.errors import NasBertError
from nas_bert.service import jobs
from nas_bert.store import JOB_ENV, BlockScore, Database, StageRow, SupernetRun


def _stage(key: str) -> StageRow:
    return StageRow(study="s", stage="search", key=key, config_hash="h", summary_json="{}", seconds=1.0)


def test_a_commands_stage_results_are_written_only_while_its_job_is_held(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    queue = Database(url)
    job, _ = jobs.enqueue(queue, "s", "run")
    _, token = jobs.claim(queue, "host-a/1:1", lease_s=30)
    monkeypatch.setenv(JOB_ENV, f"{job.id}:{token}")
    child = Database(url)  # the job's command, as the worker starts it
    with child.session() as s:
        s.add(_stage("5ms"))  # held: written

    # stopped, resumed and taken by another worker: under another token
    assert jobs.stop(queue, job.id) and jobs.disown(queue, job.id, token) and jobs.resume(queue, job.id)
    assert jobs.claim(queue, "host-b/1:2", lease_s=30, job_id=job.id)[1] != token
    lost = rf"job {job.id} is no longer this worker's \(stopped, or taken over"
    with pytest.raises(NasBertError, match=lost), child.session() as s:
        s.add(_stage("6ms"))
    with child.session() as s:
        s.add(BlockScore(checkpoint_sha="c", block=0, block_hash="b", loss=1.0))  # a memo, not a result: written
    monkeypatch.delenv(JOB_ENV)
    outside = Database(url)  # a command run outside the service checks nothing
    with outside.session() as s:
        s.add(_stage("7ms"))
    with outside.session() as s:
        assert sorted(s.scalars(select(StageRow.key))) == ["5ms", "7ms"]
    monkeypatch.setenv(JOB_ENV, "not-a-job")
    with pytest.raises(NasBertError, match="<job id>:<lease token>"):
        Database(url)
    for db in (queue, child, outside):
        db.dispose()


def test_a_stopped_jobs_command_ends_with_one_line(tiny_study_file: Path, tmp_path: Path, monkeypatch) -> None:
    from nas_bert.cli import app

    url = f"sqlite:///{tmp_path / 'q.db'}"
    queue = Database(url)
    job, _ = jobs.enqueue(queue, "tiny", "run")
    _, token = jobs.claim(queue, "host-a/1:1", lease_s=30)
    assert jobs.stop(queue, job.id)
    r = CliRunner().invoke(app, ["train-supernet", "--config", str(tiny_study_file), "--db", url],
                           env={JOB_ENV: f"{job.id}:{token}"})
    line = (f"error: job {job.id} is no longer this worker's (stopped, or taken over by another worker); "
            "its results are not recorded")
    assert r.exit_code == 2 and r.output.rstrip().endswith(line) and r.output.count("error:") == 1, r.output
    with queue.session() as s:
        assert s.scalars(select(SupernetRun)).first() is None
    queue.dispose()


def test_the_worker_hands_the_token_to_the_command_in_its_environment(tiny_study_file: Path, monkeypatch) -> None:
    from nas_bert.service import worker as W

    studies = tiny_study_file.parent
    w = W.Worker(f"sqlite:///{studies / 'q.db'}", studies, echo=lambda m: None)
    jobs.enqueue(w.db, "tiny", "run")
    row, token = jobs.claim(w.db, w.name, lease_s=30)
    started: list[tuple[list[str], dict[str, str]]] = []

    def spawn(args, **kwargs):
        started.append((args, kwargs["env"]))
        return subprocess.Popen([sys.executable, "-c", "print('{}')"], stdout=kwargs["stdout"], stderr=kwargs["stderr"])

    monkeypatch.setattr(W, "spawn", spawn)
    assert w.run_job(row, token) == "finished"
    ((args, env),) = started
    assert env[JOB_ENV] == f"{row.id}:{token}" and token not in json.dumps(args)
    w.db.dispose()
