"""`nas-bert worker`: claims jobs from the study database and runs each as the CLI command it stands for.

A job runs in a child process (`python -m nas_bert search|run|export ...`: the same code as the
command line, resuming from the same stage records and checkpoints), its stderr appended to
`<study workdir>/jobs/job-<id>.log`. While it runs the worker heartbeats the job's lease with its
progress and the log's tail; a heartbeat that finds the job stopped or taken over ends the child
(SIGINT, then SIGKILL). The child is killed with its worker (Linux PR_SET_PDEATHSIG, `child`), so a worker
killed at any moment leaves no orphan running the job beside the worker that takes it over; and the child
holds the job's lease token ($NAS_BERT_JOB), so a write of a stage result it attempts after the job was
stopped or taken over, before its worker has ended it, is refused (`store.Database`). A command killed from
outside (kill -9, the OOM killer) puts its job back in the queue, to resume, unless it was killed in each of the
last `KILLED_ATTEMPTS` attempts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_bert.lifetime import end_group
from nas_bert.service import jobs
from nas_bert.store import DB_ENV, JOB_ENV, Database, JobRow

if TYPE_CHECKING:  # the pipeline is imported where a run job's progress is read (it imports every stage)
    from nas_bert.pipeline import StageState

LOG_TAIL_CHARS = 6000
KILLED_ATTEMPTS = 3  # a job whose command was killed from outside in this many attempts in a row fails
STAGES_EVERY_S = 10.0  # a run job's stage states are read again after this long


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """`python -m nas_bert <args>` in its own session, killed when this process dies (see `child`)."""
    from nas_bert.service.processes import PARENT_ENV

    env = {**kwargs.pop("env", os.environ), PARENT_ENV: str(os.getpid())}
    return subprocess.Popen([sys.executable, "-m", "nas_bert.service.processes", *args], env=env,
                            start_new_session=True, **kwargs)


def redact(url: str) -> str:
    """A database URL without its password, for logs and pages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: shown as is
        return url


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def study_file(studies_dir: Path, name: str) -> Path:
    return Path(studies_dir) / f"{name}.yaml"


def job_commands(row: JobRow, config: Path, out_dir: Path) -> list[list[str]]:
    """The `nas-bert` commands a job stands for, run in turn (each resumes where it stopped). A search
    first trains the study's supernet (`train-supernet`; nothing to do once trained), as `run` does. The
    database URL is not among them: the commands read it from $NAS_BERT_DB (`DB_ENV`), which no other user
    of the machine can read, unlike an argument list."""
    params = json.loads(row.params_json or "{}")
    study = ["--config", str(config)]
    if row.kind == "search":
        cmd = ["search", *study, "--latency-budget-ms", f"{row.budget_ms:g}"]
        if params.get("trials"):
            cmd += ["--trials", str(int(params["trials"]))]
        return [["train-supernet", *study, "--json"], [*cmd, "--json"]]
    if row.kind == "run":
        return [["run", *study, "--out", str(out_dir), "--json"]]
    if row.kind == "export":
        cmd = ["export", *study, "--out", str(out_dir), "--overwrite"]
        if params.get("budgets_ms"):
            cmd += ["--budgets", ",".join(f"{b:g}" for b in params["budgets_ms"])]
        return [[*cmd, "--json"]]
    raise ValueError(f"unknown job kind {row.kind!r}")


def supernet_trained(db: Database, study: Any) -> bool:
    """Whether the study's supernet (of its current inputs) is trained to its steps."""
    from nas_bert.supernet import find_run

    with db.session() as s:
        run = find_run(s, study)
        return run is not None and run.status == "finished" and run.target_steps == study.cfg.supernet.steps


def clean_tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    """The log's last lines as a terminal would show them (a progress bar's redraws collapse to the last)."""
    lines = [ln.rsplit("\r", 1)[-1] for ln in text[-4 * limit:].replace("\r\n", "\n").split("\n")]
    return "\n".join(ln for ln in lines if ln.strip())[-limit:]


def read_tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * limit))
            return clean_tail(f.read().decode("utf-8", "replace"), limit)
    except OSError:
        return ""


BAR = re.compile(r"^(?P<desc>[^\n|]*?):\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")


def last_bar(tail: str) -> tuple[str, int, int] | None:
    """The last progress bar in a log's tail: (what, done, total)."""
    for ln in reversed(tail.splitlines()):
        m = BAR.match(ln.strip())
        if m and int(m["total"]) > 0:
            return m["desc"].strip(), int(m["n"]), int(m["total"])
    return None


class Progress:
    """How far a job is: stages done / stages planned (from `pipeline.plan` and `stage_status`), the current
    stage (the `== stage key` lines the stage runner logs) and, in a search, complete trials / trials wanted.

    `eta_s` is the current stage's: from that stage's own progress (its trials, or its progress bar: students,
    steps) since the stage began. One rate across stages of very different costs read 9-100 s for the whole
    15 minutes of a finalists' stage."""

    def __init__(self, row: JobRow, config: Path, db_url: str) -> None:
        from nas_bert.study import load_study

        self.row, self.params = row, json.loads(row.params_json or "{}")
        self.study = load_study(config, db_url)
        self.t0 = time.time()
        self._storage: Any = None
        self._states: tuple[float, list[StageState]] | None = None
        self._stage: tuple[str | None, float, float | None] = (None, self.t0, None)  # id, began, its fraction then

    def stage_eta(self, stage: str | None, fraction: float | None) -> float | None:
        """Seconds left in `stage` at its own pace since it began here; None until it has moved."""
        now = time.time()
        if stage != self._stage[0]:
            self._stage = (stage, now, fraction)
        _, began, start = self._stage
        if fraction is None or start is None:
            return None
        gained = fraction - start
        return round((now - began) * (1 - fraction) / gained, 1) if gained > 1e-6 else None

    def trials(self, budget: float) -> tuple[int, int]:
        from optuna.trial import TrialState

        from nas_bert.search import optuna_study_name, storage_for

        target = int(self.params.get("trials") or self.study.cfg.search.trials)
        if self._storage is None:
            self._storage = storage_for(self.study)
        try:
            sid = self._storage.get_study_id_from_name(optuna_study_name(self.study, budget))
        except KeyError:
            return 0, target
        return self._storage.get_n_trials(sid, state=TrialState.COMPLETE), target

    def __call__(self, log_tail: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        stage_id: str | None = None
        stage_fraction: float | None = None
        if self.row.kind == "search":
            done, target = self.trials(self.row.budget_ms)
            out.update(trials_complete=done, trials_target=target,
                       stage="search" if done < target else "rescore and finalists")
            stage_id, stage_fraction = out["stage"], min(1.0, done / target) if done < target else None
            fraction = 0.9 * min(1.0, done / target)  # the finalists' choice is the last tenth
            bar = last_bar(log_tail)
            if done >= target and bar and bar[0].startswith("finalists"):
                fraction += 0.1 * bar[1] / bar[2]
                out["stage"] = f"{bar[0]} {bar[1]}/{bar[2]}"
                stage_id, stage_fraction = bar[0], bar[1] / bar[2]
            elif done == 0 and bar and bar[0].startswith("supernet"):  # trained first, when it is not yet
                out["stage"] = f"supernet {bar[1]}/{bar[2]}"
                stage_id, stage_fraction = bar[0], bar[1] / bar[2]
        elif self.row.kind == "run":
            from nas_bert.pipeline import stage_status

            if self._states is None or time.time() - self._states[0] > STAGES_EVERY_S:  # it checks every input
                self._states = (time.time(), stage_status(self.study))
            states = self._states[1]
            current = sum(s.state == "current" for s in states)
            # the stage runner logs "== <stage> <key>" (" (again: ...)" or ": finished earlier ..., skipped")
            line = next((ln[3:] for ln in reversed(log_tail.splitlines()) if ln.startswith("== ")), "")
            stage = line.split(":")[0].split(" (again")[0].strip() or None
            out.update(stages_done=current, stages_planned=len(states), stage=stage)
            part = 0.0
            stage_id = stage
            if stage and stage.startswith("search ") and stage.endswith("ms") and "skipped" not in line:
                try:
                    done, target = self.trials(float(stage.split()[1][:-2]))
                    out.update(trials_complete=done, trials_target=target)
                    part = stage_fraction = min(1.0, done / target)
                except ValueError:
                    pass
            elif stage and (bar := last_bar(log_tail.rsplit("\n== ", 1)[-1])):  # the stage's own bar
                stage_fraction = bar[1] / bar[2]
            fraction = min(1.0, (current + part) / max(1, len(states)))
        else:
            out["stage"] = "export"
            fraction = 0.0
        out["fraction"] = round(fraction, 4)
        out["stage_fraction"] = None if stage_fraction is None else round(stage_fraction, 4)
        out["eta_s"] = self.stage_eta(stage_id, stage_fraction)
        out["elapsed_s"] = round(time.time() - self.t0, 1)
        return out


class Worker:
    """Claims and runs jobs until `stop_event` is set (or, with `once`, until the queue is empty)."""

    def __init__(self, db_url: str, studies_dir: str | Path, lease_s: float = 30.0, heartbeat_s: float = 5.0,
                 poll_s: float = 2.0, echo: Any = None) -> None:
        self.db_url, self.studies_dir = db_url, Path(studies_dir)
        self.lease_s, self.heartbeat_s, self.poll_s = lease_s, heartbeat_s, poll_s
        # a heartbeat blocked on a busy SQLite file gives up well inside the lease, so `_watch` can still
        # end the job's processes before another worker's takeover (60 s, the default, outlived a 30 s lease)
        self.db = Database(db_url, busy_timeout_s=min(60.0, lease_s / 3))
        self.name = jobs.worker_name()
        self.echo = echo or (lambda m: print(m, file=sys.stderr, flush=True))
        self.stop_event = threading.Event()

    def run(self, once: bool = False) -> int:
        """The loop; returns the number of jobs run."""
        n = 0
        self.echo(f"worker {self.name}: waiting for jobs in {redact(self.db_url)}")
        while not self.stop_event.is_set():
            jobs.release_dead(self.db, jobs.machine(), pid_alive)
            got = jobs.claim(self.db, self.name, self.lease_s)
            if got is None:
                if once:
                    break
                self.stop_event.wait(self.poll_s)
                continue
            row, token = got
            self.run_job(row, token)
            n += 1
        return n

    def run_job(self, row: JobRow, token: str) -> str:
        """Runs one claimed job to its end; returns how it ended: finished | failed | lost | released."""
        config = study_file(self.studies_dir, row.study)
        self.echo(f"worker {self.name}: job {row.id} ({row.kind} of study '{row.study}'), attempt {row.attempts}")
        if not config.is_file():
            jobs.finish(self.db, row.id, token, False, error=f"study file {config} not found; create the study again")
            return "failed"
        try:
            from nas_bert.study import load_study

            study = load_study(config, self.db_url)
            progress = Progress(row, config, self.db_url)
        except Exception as e:  # noqa: BLE001 - any failure to start is the job's one-line error
            jobs.finish(self.db, row.id, token, False, error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            return "failed"
        logs = study.workdir / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path, out_path = logs / f"job-{row.id}.log", logs / f"job-{row.id}.out.json"
        # the URL and the lease token travel in the environment, which no other user of the machine can read; the
        # child's writes of stage results are refused once the job is no longer held under this token (`JOB_ENV`)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", DB_ENV: self.db_url, JOB_ENV: f"{row.id}:{token}"}
        for cmd in job_commands(row, config, study.export_dir):
            if cmd[0] == "train-supernet" and supernet_trained(self.db, study):
                continue  # nothing to train: spare starting a process that would load the teacher to say so
            with open(log_path, "a") as log:
                log.write(f"\n=== attempt {row.attempts} by worker {self.name}: nas-bert {' '.join(cmd)} "
                          f"(database {redact(self.db_url)})\n")
            with open(log_path, "a") as log, open(out_path, "w") as out:
                child = spawn(cmd, stdout=out, stderr=log, stdin=subprocess.DEVNULL, env=env)
                ended = self._watch(row, token, child, progress, log_path)
            if ended == "lost":
                jobs.disown(self.db, row.id, token)  # a stopped job may be resumed now: nothing of it runs
                self.echo(f"worker {self.name}: job {row.id} stopped or taken over; its processes are ended")
                return "lost"
            if ended == "released":
                self.echo(f"worker {self.name}: shutting down; job {row.id} goes back to the queue")
                return "released"
            if child.returncode != 0:
                break
        if child.returncode < 0:  # a signal this worker did not send
            end_child(child)  # whatever it started that outlived it
            with open(log_path, "a") as log:
                log.write(f"\n=== attempt {row.attempts}: {KILLED} by {signal_name(-child.returncode)}\n")
            if killed_in_a_row(log_path) < KILLED_ATTEMPTS:
                return self._requeue(row, token, -child.returncode)
        tail = read_tail(log_path)
        final = self._progress(progress, tail)
        if child.returncode == 0:
            try:
                result = json.loads(out_path.read_text())
            except (OSError, ValueError):
                result = None
            final.update(fraction=1.0, eta_s=0.0, stage="finished")
            jobs.finish(self.db, row.id, token, True, result=result, progress=final, log_tail=tail)
            self.echo(f"worker {self.name}: job {row.id} finished")
            return "finished"
        errors = [ln for ln in tail.splitlines() if ln.startswith("error:")]
        how = (f"killed by {signal_name(-child.returncode)} in {KILLED_ATTEMPTS} attempts in a row" if child.returncode < 0
               else f"exited with status {child.returncode}")
        error = errors[-1][len("error:"):].strip() if errors else (
            f"{how}: " + (tail.splitlines()[-1] if tail else "no output"))
        jobs.finish(self.db, row.id, token, False, error=error, progress=final, log_tail=tail)
        self.echo(f"worker {self.name}: job {row.id} failed: {error}")
        return "failed"

    def _requeue(self, row: JobRow, token: str, sig: int) -> str:
        """The job's command was killed from outside (the kernel's OOM killer, an operator's kill -9): nothing
        of the job is wrong, and its stages resume, so the job goes back to the queue ("released") instead of
        failing (`run_job` fails it, naming the signal, once it was killed in `KILLED_ATTEMPTS` attempts in a row)."""
        if jobs.release(self.db, row.id, token):
            self.echo(f"worker {self.name}: job {row.id}'s command was killed ({signal_name(sig)}); the job goes back to the "
                      "queue and resumes")
            return "released"
        jobs.disown(self.db, row.id, token)  # stopped meanwhile: nothing of it runs any more
        return "lost"

    def _progress(self, progress: Progress, tail: str) -> dict[str, Any]:
        try:
            return progress(tail)
        except Exception as e:  # noqa: BLE001 - a progress estimate never stops a job
            return {"note": f"progress unavailable ({type(e).__name__})"}

    def _watch(self, row: JobRow, token: str, child: subprocess.Popen, progress: Progress, log_path: Path) -> str:
        """Heartbeats until the child exits ("exited"), the job is no longer ours ("lost") or this worker shuts
        down ("released": the job's lease ends now, for another worker to take it over). A worker whose
        heartbeats have all failed for a lease's length ends the job's processes itself ("lost"): by then
        another worker may have taken the job over, and a job never runs twice."""
        last_beat = time.monotonic()
        while True:
            try:
                child.wait(timeout=self.heartbeat_s)
                return "exited"
            except subprocess.TimeoutExpired:
                pass
            tail = read_tail(log_path)
            started = time.monotonic()  # a lease granted by this heartbeat runs from no later than now
            try:
                mine = jobs.heartbeat(self.db, row.id, token, self.lease_s, self._progress(progress, tail), tail)
            except Exception as e:  # noqa: BLE001 - a busy database: the lease has room for a missed beat
                if time.monotonic() - last_beat >= self.lease_s - self.heartbeat_s:  # our lease may be gone
                    self.echo(f"worker {self.name}: no heartbeat of job {row.id} got through for a lease's "
                              f"length ({type(e).__name__}); ending its processes")
                    end_child(child, grace_s=min(15.0, self.heartbeat_s))  # no time for a long goodbye
                    return "lost"
                self.echo(f"worker {self.name}: heartbeat of job {row.id} failed ({type(e).__name__}); retrying")
                continue
            last_beat = started
            if not mine:
                end_child(child)
                return "lost"
            if self.stop_event.is_set():  # this worker is shutting down: another one takes the job over now
                end_child(child)
                jobs.release(self.db, row.id, token)
                return "released"


KILLED = "its command was killed"


def killed_in_a_row(log_path: Path) -> int:
    """How many of a job's last attempts ended with its command killed from outside (the lines `run_job` writes
    to the job's log): an attempt that ended otherwise (a worker taken over, a failure resumed by hand) or a
    job resumed after a stop starts the count anew."""
    attempts: dict[str, bool] = {}  # attempt number -> killed, in the order they ran
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    for ln in lines:
        if m := re.match(r"=== attempt (\d+)(:? )", ln):
            killed = attempts.pop(m[1], False) or f": {KILLED} by " in ln
            attempts[m[1]] = killed  # moved to the end: the newest attempt last
    n = 0
    for killed in reversed(list(attempts.values())):
        if not killed:
            break
        n += 1
    return n


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def end_child(child: subprocess.Popen, grace_s: float = 15.0) -> None:
    """The job's command and every process it started: SIGINT to its group, then SIGKILL (`end_group`)."""
    end_group(child, grace_s)
