"""`nas-bert serve`: the HTTP API (auth, every 4xx, duplicate launches), the job queue (atomic claims by
two workers, takeover of a dead worker's job), a real worker killed mid-search and taken over, and the
page in a real headless browser."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import copy_study
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from nas_bert.search import optuna_study_name
from nas_bert.search.storage import own_study_name
from nas_bert.service import jobs
from nas_bert.service.app import create_app
from nas_bert.store import SCHEMA_VERSION, Database, JobRow, Meta
from nas_bert.study import load_study

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL, REMOTE = ("127.0.0.1", 50000), ("192.0.2.7", 50000)
LOCAL_URL = "http://localhost"  # a client on this machine names it by a loopback name


@pytest.fixture()
def studies(tmp_path: Path, searched_tiny: Path) -> Path:
    """A service folder holding a copy of the searched tiny study (its 5 ms search done), with a finalists'
    stage trimmed to seconds; the study database is the service's."""
    root = tmp_path / "studies"
    root.mkdir()
    copy_study(searched_tiny, root)
    data = yaml.safe_load((root / "tiny.yaml").read_text())
    data["search"].update(finalist_baselines=False, finalist_steps=1, trials=16)
    data["latency"]["fresh_process"] = False  # the jobs' timing runs in their own process: no interpreters to start
    (root / "tiny.yaml").write_text(yaml.safe_dump(data))
    return root


def db_url(root: Path) -> str:
    return f"sqlite:///{root / 'tiny.db'}"


@pytest.fixture()
def client(studies: Path):
    with TestClient(create_app(db_url(studies), studies, TOKEN), base_url=LOCAL_URL, client=LOCAL) as c:  # runs its shutdown too
        yield c


# -- studies, auth and every 4xx ------------------------------------------------------------------
def test_create_study_validates_like_the_cli(client: TestClient, studies: Path) -> None:
    good = (studies / "tiny.yaml").read_text().replace("name: tiny", "name: other")
    assert client.post("/v1/studies", content=good).status_code == 401  # writes need the token
    r = client.post("/v1/studies", content=good, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and "token" in r.json()["detail"]
    r = client.post("/v1/studies", content=good, headers=AUTH)
    assert r.status_code == 201 and r.json()["created"] and (studies / "other.yaml").is_file()
    r = client.post("/v1/studies", content=good, headers=AUTH)
    assert r.status_code == 200 and not r.json()["created"]
    assert {s["name"] for s in client.get("/v1/studies").json()} == {"tiny", "other"}

    bad = good.replace("trials: 16", "trials: 0")
    r = client.post("/v1/studies", content=bad, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "search.trials", r.json()
    assert "search.trials" in r.json()["detail"] and "\n" not in r.json()["detail"]
    r = client.post("/v1/studies", content=good + "colour: blue\n", headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "colour" and "unknown key" in r.json()["detail"]
    r = client.post("/v1/studies", content="search: [unclosed", headers=AUTH)
    assert r.status_code == 422 and "not valid YAML" in r.json()["detail"]
    r = client.post("/v1/studies", content="teacher: tiny-random-bert\n", headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "name"
    r = client.post("/v1/studies?name=third", content="teacher: tiny-random-bert\nsearch_space: tiny\n", headers=AUTH)
    assert r.status_code == 201 and r.json()["name"] == "third"
    assert not list(studies.glob(".*.new"))  # the validation's temporary files are gone
    # a file placed by hand whose study has another name is listed with the fix, not served under two names
    (studies / "odd.yaml").write_text(good)
    odd = next(s for s in client.get("/v1/studies").json() if s["name"] == "odd")
    assert "rename the file to other.yaml" in odd["error"]
    assert client.get("/v1/studies/odd").status_code == 422


def test_a_rebound_name_reads_nothing_and_an_unserved_host_is_refused(studies: Path) -> None:
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1 reaches the service from this
    machine but sends its own name as Host."""
    from nas_bert.service.guard import allowed_hosts

    rebound = TestClient(create_app(db_url(studies), studies, TOKEN), base_url="http://evil.example:8000",
                         client=LOCAL)
    assert rebound.get("/v1/jobs").status_code == 401
    assert rebound.get("/v1/studies/tiny/students").status_code == 401
    assert rebound.get("/v1/jobs", headers=AUTH).status_code == 200  # the token still opens it
    served = create_app(db_url(studies), studies, TOKEN, hosts=allowed_hosts("127.0.0.1"))
    r = TestClient(served, base_url="http://evil.example:8000", client=LOCAL).get("/v1/jobs", headers=AUTH)
    assert r.status_code == 400 and "evil.example" in r.json()["detail"] and "--allowed-hosts" in r.json()["detail"]
    for url in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        assert TestClient(served, base_url=url, client=LOCAL).get("/v1/jobs").status_code == 200, url
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("0.0.0.0", ["nas.example"]) >= {"nas.example"}
    assert "10.1.2.3" in allowed_hosts("10.1.2.3") and allowed_hosts("127.0.0.1", ["*"]) is None


def test_a_body_is_refused_before_it_is_read(studies: Path) -> None:
    """Unauthenticated: 401 before the body is read. Over the limit: 413 by its Content-Length, or, sent
    in chunks without one, as soon as the limit is passed."""
    app = create_app(db_url(studies), studies, TOKEN, max_body=4096)
    client = TestClient(app, base_url=LOCAL_URL, client=LOCAL)
    big = b"x" * 100_000
    assert client.post("/v1/studies", content=big).status_code == 401
    r = client.post("/v1/studies", content=big, headers=AUTH)
    assert r.status_code == 413 and "4,096 bytes" in r.json()["detail"] and r.headers["connection"] == "close"

    def chunks():
        for _ in range(100):
            yield b"y" * 1000

    r = client.post("/v1/studies", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    good = (studies / "tiny.yaml").read_text().replace("name: tiny", "name: chunked")
    r = client.post("/v1/studies", content=(good[i:i + 100].encode() for i in range(0, len(good), 100)), headers=AUTH)
    assert r.status_code == 201, r.json()  # a chunked body under the limit reaches the app whole


def test_reads_open_on_loopback_only(studies: Path) -> None:
    app = create_app(db_url(studies), studies, TOKEN)
    remote, local = TestClient(app, client=REMOTE), TestClient(app, base_url=LOCAL_URL, client=LOCAL)
    assert local.get("/v1/jobs").status_code == 200
    r = remote.get("/v1/jobs")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert remote.get("/v1/jobs", headers=AUTH).status_code == 200
    with_cookie = TestClient(app, client=REMOTE, cookies={"nas_bert_token": TOKEN})  # what the page sets
    assert with_cookie.get("/v1/jobs").status_code == 200
    # a cookie is for reading only: a write needs the header (no cross-site form can send one)
    assert with_cookie.post("/v1/studies/tiny/jobs", json={"budget_ms": 5}).status_code == 401
    # Optuna's dashboard, behind the same rules
    assert remote.get("/api/studies").status_code == 401
    body = local.get("/api/studies").json()
    assert [s["study_name"] for s in body["study_summaries"]] == [own_study_name(load_study(studies / "tiny.yaml"), 5)]
    assert local.post("/api/studies", json={"study_name": "x", "directions": ["minimize"]}).status_code == 401
    assert local.get("/optuna", follow_redirects=False).headers["location"] == "/dashboard"
    assert local.get("/docs").status_code == 200 and "/v1/studies/{name}/jobs" in local.get("/openapi.json").text


def test_unknown_things_are_404(client: TestClient) -> None:
    for method, path in [("get", "/v1/studies/nope"), ("get", "/v1/studies/nope/fronts"), ("get", "/v1/jobs/999"),
                         ("post", "/v1/jobs/999/stop"), ("post", "/v1/jobs/999/resume"),
                         ("get", "/v1/studies/tiny/fronts?budget=99"), ("get", "/v1/studies/tiny/students/x/card"),
                         ("get", "/v1/studies/tiny/students/x/download"), ("get", "/v1/studies/..%2Fetc/fronts")]:
        r = getattr(client, method)(path, headers=AUTH)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["detail"] and "\n" not in r.json()["detail"]
    r = client.post("/v1/studies/nope/jobs", json={"budget_ms": 5}, headers=AUTH)
    assert r.status_code == 404 and "known: tiny" in r.json()["detail"]


def test_launch_validation_and_duplicates(client: TestClient, studies: Path) -> None:
    def launch(body: dict) -> tuple[int, dict]:
        r = client.post("/v1/studies/tiny/jobs", json=body, headers=AUTH)
        return r.status_code, r.json()

    code, body = launch({"kind": "search", "budget_ms": 0.001})
    assert code == 422 and body["field"] == "budget_ms" and "minimum is" in body["detail"], body
    minimum = float(body["detail"].rsplit("minimum is ", 1)[1].split()[0])
    assert launch({"kind": "search", "budget_ms": minimum})[0] == 201  # the minimum itself is accepted
    for bad, field in [({"kind": "search"}, "budget_ms"), ({"budget_ms": -1}, "budget_ms"),
                       ({"budget_ms": 5, "trials": 0}, "trials"), ({"budget_ms": 5, "colour": 1}, "colour"),
                       ({"kind": "dance"}, "kind"), ({"kind": "run"}, "search.budgets_ms"),
                       ({"kind": "run", "budget_ms": 5}, "budget_ms"), ({"kind": "search", "budget_ms": 5,
                                                                         "budgets_ms": [5]}, "budgets_ms")]:
        code, body = launch(bad)
        assert code == 422 and body["field"] == field, (bad, body)
        assert field in body["detail"]

    code, first = launch({"kind": "search", "budget_ms": 6, "trials": 12})
    assert code == 201 and first["created"] and first["status"] == "queued"
    code, again = launch({"kind": "search", "budget_ms": 6})
    assert code == 200 and again["id"] == first["id"] and not again["created"]
    # launched from many clients at once: one job
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(launch({"kind": "export", "budgets_ms": [5]})[0]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 5 + [201]
    assert [j["kind"] for j in client.get("/v1/jobs").json()] == ["search", "search", "export"]

    # stop and resume: queued -> stopped -> queued; a second stop or resume says why not
    jid = first["id"]
    assert client.post(f"/v1/jobs/{jid}/stop").status_code == 401
    assert client.post(f"/v1/jobs/{jid}/stop", headers=AUTH).json()["status"] == "stopped"
    r = client.post(f"/v1/jobs/{jid}/stop", headers=AUTH)
    assert r.status_code == 409 and "stopped" in r.json()["detail"]
    assert client.post(f"/v1/jobs/{jid}/resume", json={"trials": 14}, headers=AUTH).json()["params"] == {"trials": 14}
    assert client.post(f"/v1/jobs/{jid}/resume", headers=AUTH).status_code == 409
    # a study with queued jobs is not changed under them
    text_ = (studies / "tiny.yaml").read_text().replace("trials: 16", "trials: 17")
    r = client.post("/v1/studies", content=text_, headers=AUTH)
    assert r.status_code == 409 and "stop them" in r.json()["detail"]


def test_results_of_a_searched_study(client: TestClient) -> None:
    fronts = client.get("/v1/studies/tiny/fronts").json()
    f = fronts["5"]
    assert f["front"] and f["trials"]["complete"] >= len(f["front"]) and f["cloud"]
    assert all(r["predicted_ms"] <= 5 for r in f["front"])
    assert f["chosen"] is not None
    assert client.get("/v1/studies/tiny/fronts?budget=5").json().keys() == {"5"}
    png = client.get("/v1/studies/tiny/front.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    shown = client.get("/v1/studies/tiny").json()
    assert shown["searched_budgets_ms"] == [5.0] and {s["stage"] for s in shown["stages"]} >= {"supernet", "latency"}
    assert client.get("/v1/studies/tiny/students").json()["students"] == []


def test_a_password_in_a_study_file_is_never_shown(client: TestClient, studies: Path) -> None:
    data = yaml.safe_load((studies / "tiny.yaml").read_text())
    data.update(name="secret", db_url="postgresql+psycopg://nas:hunter2@db.example/studies")
    (studies / "secret.yaml").write_text(yaml.safe_dump(data))
    r = client.get("/v1/studies/secret")
    assert r.status_code == 200 and "hunter2" not in r.text and "nas:***@db.example" in r.text
    assert "hunter2" not in client.get("/v1/studies").text


# -- the queue ------------------------------------------------------------------------------------
def _claim_all(url: str, name: str, out: list, start: threading.Barrier) -> None:
    db = Database(url)
    start.wait()
    while (got := jobs.claim(db, name, lease_s=60)) is not None:
        out.append((got[0].id, name))
    db.dispose()


def _empty_queue(tmp_path: Path, backend: str) -> tuple[str, Database]:
    """A queue with no job in it: a SQLite file, or the PostgreSQL of NAS_BERT_TEST_POSTGRES_URL (else skip)."""
    url = f"sqlite:///{tmp_path / 'q.db'}" if backend == "sqlite" else os.environ.get("NAS_BERT_TEST_POSTGRES_URL")
    if url is None:
        pytest.skip("NAS_BERT_TEST_POSTGRES_URL is not set (bash .ci/postgres.sh pytest ... sets it)")
    db = Database(url)
    with db.session() as s:
        s.query(JobRow).delete()
    return url, db


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_workers_never_claim_one_job(tmp_path: Path, backend: str) -> None:
    url, db = _empty_queue(tmp_path, backend)
    ids = {jobs.enqueue(db, "s", "search", float(b))[0].id for b in range(1, 41)}
    claimed: list[tuple[int, str]] = []
    start = threading.Barrier(3)
    workers = [threading.Thread(target=_claim_all, args=(url, w, claimed, start)) for w in ("a", "b", "c")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(i for i, _ in claimed) == sorted(ids)  # every job once, none twice
    assert len({w for _, w in claimed}) > 1  # they really raced
    assert all(j.attempts == 1 and j.status == "running" for j in jobs.list_jobs(db))
    with db.session() as s:
        s.query(JobRow).delete()
    db.dispose()


def test_dead_workers_job_is_taken_over(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    job, _ = jobs.enqueue(db, "s", "run")
    _, token_a = jobs.claim(db, "host-a:1", lease_s=0.5)
    assert jobs.claim(db, "host-b:2", lease_s=30) is None  # A's lease runs
    assert jobs.heartbeat(db, job.id, token_a, 0.5, {"fraction": 0.25})
    time.sleep(0.7)  # A died: no heartbeat
    row, token_b = jobs.claim(db, "host-b:2", lease_s=30)
    assert row.id == job.id and row.attempts == 2 and row.worker == "host-b:2"
    assert not jobs.heartbeat(db, job.id, token_a, 30)  # A, back from the dead, learns it lost the job
    assert not jobs.finish(db, job.id, token_a, True)
    assert jobs.heartbeat(db, job.id, token_b, 30)
    # on the same machine, a worker whose process is gone is taken over at once, lease or not
    assert jobs.release_dead(db, "host-b", alive=lambda pid: False) == 1
    row, token_c = jobs.claim(db, "host-b:3", lease_s=30)
    assert row.attempts == 3
    assert jobs.finish(db, job.id, token_c, True, result={"ok": 1})
    assert jobs.get(db, job.id).status == "finished" and jobs.claim(db, "host-b:4", 30) is None


def test_a_resume_right_after_a_stop_waits_for_the_old_run_to_end(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    job, _ = jobs.enqueue(db, "s", "run")
    _, token = jobs.claim(db, "host-a/1:1", lease_s=30)
    assert jobs.stop(db, job.id)
    assert not jobs.resume(db, job.id)  # its worker has not ended the job's processes yet
    assert jobs.claim(db, "host-b/1:2", lease_s=30) is None  # and nothing else can take it meanwhile
    assert not jobs.heartbeat(db, job.id, token, 30)  # the worker learns of the stop at its next heartbeat...
    assert jobs.disown(db, job.id, token)  # ...ends the processes and lets go
    assert jobs.resume(db, job.id) and jobs.get(db, job.id).status == "queued"
    # a stopped job whose worker died before letting go: resumable once its lease has run out
    row, token = jobs.claim(db, "host-a/1:1", lease_s=0.3)
    assert jobs.stop(db, row.id) and not jobs.resume(db, row.id)
    time.sleep(0.4)
    assert jobs.resume(db, row.id)


def test_the_api_resumes_a_stopped_job_only_once_its_processes_ended(client: TestClient, studies: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.setattr("nas_bert.service.routes_jobs.RESUME_WAIT_S", 0.5)
    db = Database(db_url(studies))
    job, _ = jobs.enqueue(db, "tiny", "search", 9.0, {"trials": 24})
    _, token = jobs.claim(db, "host-a/1:1", lease_s=600)
    assert client.post(f"/v1/jobs/{job.id}/stop", headers=AUTH).status_code == 200
    r = client.post(f"/v1/jobs/{job.id}/resume", headers=AUTH)
    assert r.status_code == 409 and "still stopping" in r.json()["detail"]
    threading.Timer(0.2, jobs.disown, args=(db, job.id, token)).start()  # the worker ends the processes meanwhile
    monkeypatch.setattr("nas_bert.service.routes_jobs.RESUME_WAIT_S", 10.0)
    r = client.post(f"/v1/jobs/{job.id}/resume", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_leases_are_judged_by_the_databases_clock(tmp_path: Path, monkeypatch, backend: str) -> None:
    """A worker whose own clock runs a minute ahead never takes a job whose lease is still running."""
    _, db = _empty_queue(tmp_path, backend)
    job, _ = jobs.enqueue(db, "s", "run")
    _, token = jobs.claim(db, "host-a/1:1", lease_s=30)
    real = time.time
    monkeypatch.setattr("nas_bert.service.jobs.time.time", lambda: real() + 60)  # the skewed worker's clock
    assert jobs.claim(db, "host-b/1:2", lease_s=30) is None
    assert jobs.heartbeat(db, job.id, token, 30)
    with db.session() as s:
        s.query(JobRow).delete()
    db.dispose()


def test_a_worker_whose_heartbeats_fail_for_a_lease_ends_its_job_itself(tmp_path: Path, monkeypatch) -> None:
    from sqlalchemy.exc import OperationalError

    from nas_bert.service.worker import Worker

    w = Worker(f"sqlite:///{tmp_path / 'q.db'}", tmp_path, lease_s=1.0, heartbeat_s=0.2, echo=lambda m: None)
    jobs.enqueue(w.db, "s", "run")
    row, token = jobs.claim(w.db, w.name, lease_s=1.0)

    def busy(*args, **kwargs):
        raise OperationalError("UPDATE", {}, Exception("database is locked"))

    monkeypatch.setattr(jobs, "heartbeat", busy)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    t0 = time.monotonic()
    assert w._watch(row, token, child, lambda tail: {}, tmp_path / "log") == "lost"
    assert child.poll() is not None and time.monotonic() - t0 < 5  # ended within about a lease


def test_dead_workers_are_judged_within_their_own_pid_namespace(tmp_path: Path) -> None:
    """Containers share host names, and a pid means something in one pid namespace only."""
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    jobs.enqueue(db, "s", "run")
    jobs.claim(db, "box/4026531836:7", lease_s=30)  # a worker in another container of the same host name
    assert jobs.release_dead(db, "box/4026532999", alive=lambda pid: False) == 0
    assert jobs.release_dead(db, "box/4026531836", alive=lambda pid: False) == 1
    assert jobs.machine().startswith(socket.gethostname() + "/")


def test_older_database_gains_the_jobs_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = Database(url)
    with db.engine.begin() as con:
        con.execute(text("DROP TABLE nasbert_jobs"))  # as a database made before the service existed
    db.dispose()
    db = Database(url)
    assert "nasbert_jobs" in inspect(db.engine).get_table_names()
    with db.session() as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)  # a new table needs no new version
    db.dispose()


def test_worker_cli_once_on_an_empty_queue(tmp_path: Path) -> None:
    from nas_bert.cli import app

    r = CliRunner().invoke(app, ["worker", "--db", f"sqlite:///{tmp_path / 'q.db'}", "--studies", str(tmp_path),
                                 "--once"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["worker", "--db", f"sqlite:///{tmp_path / 'q.db'}", "--lease", "0"])
    assert r.exit_code == 2 and "--lease" in r.output
    for bad in ("0", "nan", "inf"):
        r = CliRunner().invoke(app, ["serve", "--db", f"sqlite:///{tmp_path / 'q.db'}", "--max-body-mb", bad])
        assert r.exit_code == 2 and "--max-body-mb" in r.output, r.output


# -- real workers -------------------------------------------------------------------------------
def _optuna_trials(root: Path, budget: float):
    import optuna

    name = optuna_study_name(load_study(root / "tiny.yaml", db_url(root)), budget)
    return optuna.load_study(study_name=name, storage=db_url(root)).get_trials(deepcopy=False)


def _complete(root: Path, budget: float) -> int:
    from optuna.trial import TrialState

    try:
        return sum(t.state == TrialState.COMPLETE for t in _optuna_trials(root, budget))
    except KeyError:
        return 0


def _wait(client: TestClient, job_id: int, states: tuple[str, ...], timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = client.get(f"/v1/jobs/{job_id}").json()
        if j["status"] in states:
            return j
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {j['status']}: {j.get('log_tail', '')[-2000:]}")


@pytest.mark.slow
def test_worker_killed_mid_search_is_taken_over(client: TestClient, studies: Path) -> None:
    """A worker process killed (-9) in the middle of a trial: its search process dies with it, the next worker
    takes the job over at once and continues; every trial wanted completes once; then an export job and
    the download of its student."""
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState

    from nas_bert.service.worker import Worker

    # a tiny trial takes ~30 ms: enough trials that the kill lands mid-search however slowly the poll reads
    budget, trials = 6.0, 80
    job = client.post("/v1/studies/tiny/jobs", json={"budget_ms": budget, "trials": trials}, headers=AUTH).json()
    args = ["--db", db_url(studies), "--studies", str(studies), "--lease", "3", "--heartbeat", "0.5", "--poll", "0.5"]
    log = open(studies / "worker-1.log", "w")  # noqa: SIM115
    first = subprocess.Popen([sys.executable, "-m", "nas_bert", "worker", *args], stdout=log, stderr=log)
    deadline = time.time() + 240
    while _complete(studies, budget) < 3 and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    killed_at = _complete(studies, budget)
    assert 3 <= killed_at < trials, (studies / "worker-1.log").read_text()[-2000:]
    running = client.get(f"/v1/jobs/{job['id']}").json()
    assert running["status"] == "running" and running["attempts"] == 1 and running["progress"]["trials_target"] == trials

    second = Worker(db_url(studies), studies, lease_s=3, heartbeat_s=0.5, poll_s=0.5, echo=lambda m: None)
    thread = threading.Thread(target=second.run, kwargs={"once": True})
    thread.start()
    done = _wait(client, job["id"], ("finished", "failed"))
    assert done["status"] == "finished", done["error"]
    assert done["attempts"] == 2 and done["fraction"] == 1.0
    # the job's log holds both attempts (its tail, 6000 characters, may hold only the second's output)
    assert "=== attempt 2" in next(studies.rglob(f"job-{job['id']}.log")).read_text()
    assert done["result"]["finalists"]["chosen"]["measured_ms"] > 0
    all_trials = _optuna_trials(studies, budget)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    assert len(complete) == trials  # none lost, none run beyond what was asked
    done_numbers = {t.number for t in complete}
    retried = [RetryFailedTrialCallback.retried_trial_number(t) for t in complete]
    assert not done_numbers & {n for n in retried if n is not None}  # no trial completed twice
    thread.join(timeout=60)

    # the front of the new budget, then an export of its student, downloaded as one archive
    assert client.get(f"/v1/studies/tiny/fronts?budget={budget:g}").json()[f"{budget:g}"]["front"]
    exp = client.post("/v1/studies/tiny/jobs", json={"kind": "export", "budgets_ms": [budget]}, headers=AUTH).json()
    thread = threading.Thread(target=second.run, kwargs={"once": True})
    thread.start()
    assert _wait(client, exp["id"], ("finished", "failed"))["status"] == "finished"
    thread.join(timeout=60)
    (student,) = client.get("/v1/studies/tiny/students").json()["students"]
    card = client.get(student["card_url"])
    assert card.status_code == 200 and "fidelity" in card.text.lower()
    archive = client.get(student["download_url"])
    assert archive.status_code == 200
    (studies / "s.tar.gz").write_bytes(archive.content)
    with tarfile.open(studies / "s.tar.gz") as tar:
        names = tar.getnames()
    assert f"{student['name']}/model.safetensors" in names and f"{student['name']}/README.md" in names


# -- the page in a real browser -------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_in_a_headless_browser(studies: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("NAS_BERT_REQUIRE_CHROMIUM"):
            pytest.fail("NAS_BERT_REQUIRE_CHROMIUM is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium); CI sets NAS_BERT_REQUIRE_CHROMIUM")
    import uvicorn

    db = Database(db_url(studies))
    job, _ = jobs.enqueue(db, "tiny", "search", 7.0, {"trials": 24})
    _, token = jobs.claim(db, "host:1", lease_s=600)
    jobs.heartbeat(db, job.id, token, 600, {"trials_complete": 9, "trials_target": 24, "stage": "search",
                                            "fraction": 0.3375, "eta_s": 42.0})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(db_url(studies), studies, TOKEN), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1200,1000"]
        dom = subprocess.run([*common, "--dump-dom", url], check=False, capture_output=True, text=True, timeout=120).stdout
        shot = tmp_path / "page.png"
        subprocess.run([*common, f"--screenshot={shot}", url], check=False, capture_output=True, timeout=120)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        db.dispose()
    assert f'data-id="{job.id}"' in dom and "status-running" in dom, dom[:3000]
    assert "width:34%" in dom and "9/24 trials" in dom  # the job's progress bar and trial count
    assert 'class="front"' in dom and dom.count("front-pt") >= 1 and "cloud-pt" in dom  # the live front
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas_bert.errors import NasBertError
    from nas_bert.service.auth import read_token

    monkeypatch.setenv("NAS_BERT_TOKEN", "from-env")
    assert read_token(tmp_path / "nope") == ("from-env", "$NAS_BERT_TOKEN")
    monkeypatch.delenv("NAS_BERT_TOKEN")
    with pytest.raises(NasBertError, match="not found"):
        read_token(tmp_path / "nope")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(NasBertError, match="empty"):
        read_token(tmp_path / "empty")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    token, where = read_token()  # created once, outside any repository, readable by its owner only
    assert len(token) >= 24 and read_token()[0] == token
    assert Path(where) == tmp_path / "config" / "nas-bert" / "token" and (Path(where).stat().st_mode & 0o077) == 0


def test_job_commands_are_the_cli_commands(tmp_path: Path) -> None:
    from nas_bert.service.worker import job_commands

    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    search, _ = jobs.enqueue(db, "s", "search", 5.0, {"trials": 30})
    run, _ = jobs.enqueue(db, "s", "run")
    export, _ = jobs.enqueue(db, "s", "export", None, {"budgets_ms": [5.0, 10.0]})
    cfg, url, out = tmp_path / "s.yaml", "postgresql+psycopg://u:secret@h/db", tmp_path / "export"
    study = ["--config", str(cfg)]  # the database URL travels in $NAS_BERT_DB, never in the argument list
    assert job_commands(search, cfg, out) == [  # an untrained supernet is trained first, as `run` does
        ["train-supernet", *study, "--json"], ["search", *study, "--latency-budget-ms", "5", "--trials", "30", "--json"]]
    assert job_commands(run, cfg, out) == [["run", *study, "--out", str(out), "--json"]]
    assert job_commands(export, cfg, out) == [
        ["export", *study, "--out", str(out), "--overwrite", "--budgets", "5,10", "--json"]]
    assert url not in str(job_commands(search, cfg, out))
    db.dispose()


def test_the_front_process_outlives_the_thread_that_first_used_it(tmp_path: Path) -> None:
    """Request threads come and go; the fronts' process must not die with the first one that used it."""
    from nas_bert.service.results import FrontProcess

    fronts = FrontProcess(f"sqlite:///{tmp_path / 'q.db'}")
    pids: list[int] = []
    first = threading.Thread(target=lambda: pids.append(fronts._submit(os.getpid)))
    first.start()
    first.join()
    time.sleep(1.0)  # that thread is gone: a process tied to it would have been killed by now
    pids.append(fronts._submit(os.getpid))
    fronts.close()
    assert pids[0] == pids[1] != os.getpid()


def test_a_jobs_eta_is_its_current_stages_from_that_stages_own_progress(tiny_study_file: Path, monkeypatch) -> None:
    """A search whose trials are done then spends long in the finalists' stage: the ETA follows that stage's
    bar from when it began, not the trials' pace."""
    from nas_bert.service.worker import Progress

    db = Database(f"sqlite:///{tiny_study_file.parent / 'tiny.db'}")
    job, _ = jobs.enqueue(db, "tiny", "search", 5.0, {"trials": 10})
    progress = Progress(jobs.get(db, job.id), tiny_study_file, db.url)
    clock = {"now": 1000.0}
    monkeypatch.setattr("nas_bert.service.worker.time.time", lambda: clock["now"])
    trials = {"done": 2}
    monkeypatch.setattr(progress, "trials", lambda budget: (trials["done"], 10))
    assert progress("")["eta_s"] is None  # nothing moved yet
    clock["now"] += 10
    trials["done"] = 4
    assert progress("")["eta_s"] == 30.0  # 2 trials in 10 s, 6 to go
    trials["done"] = 10
    bar = "finalists 5 ms:  {p}%|###| {n}/8 [00:10<00:30]"
    clock["now"] += 5
    out = progress(bar.format(p=12, n=1))
    assert out["stage"].startswith("finalists") and out["eta_s"] is None  # a new stage: its own pace, from now
    clock["now"] += 60
    out = progress(bar.format(p=37, n=3))
    assert out["stage_fraction"] == 0.375 and out["eta_s"] == 150.0  # 2 of 8 students a minute, 5 to go
    db.dispose()


def test_a_students_archive_is_built_once_and_has_one_sha256(tmp_path: Path) -> None:
    """Sixteen downloads of a new student at once: one builds the archive while the others wait, and an
    archive built again of the same folder is the same bytes."""
    import hashlib
    from types import SimpleNamespace

    from nas_bert.service import results

    folder = tmp_path / "student"
    (folder / "onnx").mkdir(parents=True)
    for rel in ("config.json", "model.safetensors", "onnx/model.onnx"):
        (folder / rel).write_bytes(os.urandom(4096))
    study = SimpleNamespace(workdir=tmp_path / "work")
    built, real = [], tarfile.open

    def counting_open(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    paths: list[Path] = []
    start = threading.Barrier(16)

    def download() -> None:
        start.wait()
        paths.append(results.archive(study, "student", folder))

    with pytest.MonkeyPatch.context() as m:
        m.setattr(results.tarfile, "open", counting_open)
        threads = [threading.Thread(target=download) for _ in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert len(paths) == 16 and len(set(paths)) == 1 and len(built) == 1
    first = hashlib.sha256(paths[0].read_bytes()).hexdigest()
    paths[0].unlink()
    time.sleep(1.1)  # another second: a time stamp anywhere in the archive would change its bytes
    assert hashlib.sha256(results.archive(study, "student", folder).read_bytes()).hexdigest() == first


def test_polling_shares_one_computation() -> None:
    """Many clients polling a front: one computes, the others get the previous value at once; a costly
    computation is redone less often."""
    from nas_bert.service.results import TTLCache

    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.2)
        return len(calls)

    cache = TTLCache(0.05, cost_factor=0)
    assert cache.get("front", compute) == 1
    time.sleep(0.1)
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("front", compute))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1] * 7 + [2] and len(calls) == 2
    costly = TTLCache(0.05, cost_factor=5)  # took 0.2 s: fresh for 1 s
    costly.get("front", compute)
    time.sleep(0.1)
    assert costly.get("front", compute) == 3 and len(calls) == 3
