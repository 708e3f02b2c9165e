"""A job whose command is killed from outside (kill -9, the kernel's OOM killer) is not lost: it goes back to the
queue and resumes; killed in `KILLED_ATTEMPTS` attempts in a row, it fails naming the signal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nas_bert.service import jobs
from nas_bert.service import worker as W

KILLED = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
DONE = "print('{}')"


def _worker(studies: Path, monkeypatch, scripts: list[str]) -> W.Worker:
    w = W.Worker(f"sqlite:///{studies / 'q.db'}", studies, echo=lambda m: None)

    def spawn(args, **kwargs):  # the job's command, as scripted: killed, or done
        return subprocess.Popen([sys.executable, "-c", scripts.pop(0)], stdout=kwargs["stdout"],
                                stderr=kwargs["stderr"])

    monkeypatch.setattr(W, "spawn", spawn)
    return w


def test_a_job_whose_command_is_killed_goes_back_to_the_queue_and_finishes(tiny_study_file: Path, monkeypatch) -> None:
    w = _worker(tiny_study_file.parent, monkeypatch, [KILLED, DONE])
    job, _ = jobs.enqueue(w.db, "tiny", "run")
    assert w.run(once=True) == 2  # attempt 1 killed, attempt 2 (the same worker, at once) finished
    row = jobs.get(w.db, job.id)
    assert row.status == "finished" and row.attempts == 2
    w.db.dispose()


def test_a_job_killed_in_every_attempt_fails_naming_the_signal(tiny_study_file: Path, monkeypatch) -> None:
    w = _worker(tiny_study_file.parent, monkeypatch, [KILLED] * W.KILLED_ATTEMPTS)
    job, _ = jobs.enqueue(w.db, "tiny", "run")
    w.run(once=True)
    row = jobs.get(w.db, job.id)
    assert row.status == "failed" and row.attempts == W.KILLED_ATTEMPTS
    assert row.error.startswith(f"killed by SIGKILL in {W.KILLED_ATTEMPTS} attempts in a row")
    w.db.dispose()


def test_a_job_stopped_while_its_killed_command_ends_stays_stopped(tiny_study_file: Path, monkeypatch) -> None:
    w = _worker(tiny_study_file.parent, monkeypatch, [KILLED])
    job, _ = jobs.enqueue(w.db, "tiny", "run")
    row, token = jobs.claim(w.db, w.name, lease_s=30)
    jobs.stop(w.db, job.id)  # stopped before the worker saw its command's end
    assert w.run_job(row, token) in ("lost", "failed")
    row = jobs.get(w.db, job.id)
    assert row.status == "stopped" and not jobs.held(row, w.db.now())  # resumable at once
    w.db.dispose()


def test_kills_are_counted_in_a_row(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    lines = ["=== attempt 1 by worker a: nas-bert run", f"=== attempt 1: {W.KILLED} by SIGKILL",
             "=== attempt 2 by worker a: nas-bert run",  # its worker died: taken over, not a kill
             "=== attempt 3 by worker b: nas-bert train-supernet", "=== attempt 3 by worker b: nas-bert search",
             f"=== attempt 3: {W.KILLED} by SIGKILL"]
    log.write_text("\n".join(lines) + "\n")
    assert W.killed_in_a_row(log) == 1
    log.write_text("\n".join(lines[:2]) + "\n")
    assert W.killed_in_a_row(log) == 1 and W.killed_in_a_row(tmp_path / "none.log") == 0
