"""`nas-bert serve` under load and under faults, against 127.0.0.1.

    python benchmarks/bench_service.py [--workdir /tmp/nas-bert-service] [--clients 1,8,32] [--seconds 30]

The tiny study (tiny random teacher, tiny space) with its supernet and latency model built first.

Load: `nas-bert serve` (one worker) runs a long search job; for each N in --clients, N concurrent
clients (asyncio + httpx, keep-alive) poll the job's status, the study's front and the job list for
--seconds, each request right after the previous one; for each N in --paced, N clients each poll
once a second (the page polls every 2 s). Between loaded windows, a window without polling. Reported:
requests per second, p50/p95 latency, errors, and the search's trials per minute with and without the
polling (their ratio; the windows without polling before and after each loaded one are averaged).

Faults (each ends with every job finished, then counted):
- the worker killed (-9) in the middle of a trial of a search job, twice;
- the worker killed (-9) in the middle of stages of a `run` job (in its search, then later in its
  layer mapping or distillation);
- the server killed (-9) in the middle of requests (clients launching the same search and polling),
  then started again.
Jobs lost (a job not finished in the end), stages redone (a stage recorded as finished before a kill
recorded again after it), trials cut (running at a kill: failed once their heartbeat went stale, and
retried), trials duplicated (complete trials beyond those asked, a trial that completed and was
also retried to completion, or a second job of the same search).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_name, table, tiny_sizes

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SIZES = tiny_sizes(search={"heartbeat_interval": 1, "grace_period": 3}, distill={"steps": 8})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`nas-bert serve` as a process that can be killed and started again."""

    def __init__(self, studies: Path, db_url: str, log: Path) -> None:
        self.studies, self.db_url, self.log = studies, db_url, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "NAS_BERT_TOKEN": TOKEN}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "nas_bert", "serve", "--db", self.db_url, "--studies",
                                          str(self.studies), "--port", str(self.port), "--lease", "6"],
                                         stdout=log, stderr=log, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError(f"nas-bert serve did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, timeout=60)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict | None = None) -> Any:
        r = httpx.post(self.url + path, json=body, headers=AUTH, timeout=60)
        r.raise_for_status()
        return r.json()

    def wait(self, job_id: int, states: tuple[str, ...] = ("finished", "failed"), timeout: float = 1800) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                j = self.get(f"/v1/jobs/{job_id}")
                if j["status"] in states:
                    return j
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"job {job_id} did not end")


def ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)


def complete_trials(db: Path, optuna_study: str) -> int:
    con = ro(db)
    try:
        return con.execute("SELECT count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                           "WHERE s.study_name = ? AND t.state = 'COMPLETE'", (optuna_study,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def duplicated_trials(db_url: str, optuna_study: str, wanted: int) -> tuple[int, int]:
    """Complete trials beyond those asked, plus trials that completed and were also retried to completion;
    and the trials cut by a kill (failed when their heartbeat went stale, then retried)."""
    import warnings

    import optuna
    from optuna.storages import RetryFailedTrialCallback
    from optuna.trial import TrialState

    trials = optuna.load_study(study_name=optuna_study, storage=db_url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    numbers = {t.number for t in done}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        twice = sum(RetryFailedTrialCallback.retried_trial_number(t) in numbers for t in done)
    return max(0, len(done) - wanted) + twice, sum(t.state == TrialState.FAIL for t in trials)


def stage_rows(db: Path, study: str) -> dict[tuple[str, str], str]:
    con = ro(db)
    try:
        return {(st, k): at + f"/{sec:.3f}" for st, k, at, sec in con.execute(
            "SELECT stage, key, finished_at, seconds FROM nasbert_stages WHERE study = ?", (study,))}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def search_name(svc: Service, study: str, budget_ms: float) -> str:
    """The Optuna study a search of `budget_ms` run on this machine writes (named by its latency model)."""
    from nas_bert.search.storage import own_study_name
    from nas_bert.study import load_study

    return own_study_name(load_study(svc.studies / f"{study}.yaml", svc.db_url), budget_ms)


def worker_pid(svc: Service, job_id: int) -> int:
    return int(svc.get(f"/v1/jobs/{job_id}")["worker"].rsplit(":", 1)[1])


# -- load ---------------------------------------------------------------------------------------
async def poll(url: str, paths: list[str], clients: int, seconds: float, every: float = 0.0) -> dict[str, Any]:
    """`clients` clients, each sending its next request right after the last (`every` 0) or every `every` s."""
    latencies: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            k = i
            end = time.perf_counter() + seconds
            await asyncio.sleep(every * i / max(1, clients))  # paced clients spread over the interval
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = await c.get(paths[k % len(paths)])
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)
                k += 1
                if every:
                    await asyncio.sleep(max(0.0, every - (time.perf_counter() - t0)))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [0.0] * 19
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * q[18], "errors": errors}


def rate(db: Path, name: str, seconds: float) -> float:
    """Complete trials per minute over a window."""
    a, t0 = complete_trials(db, name), time.time()
    time.sleep(seconds)
    return 60 * (complete_trials(db, name) - a) / (time.time() - t0)


def load_test(svc: Service, db: Path, clients: list[tuple[int, float]], seconds: float) -> list[list[str]]:
    job = svc.post("/v1/studies/tiny/jobs", {"kind": "search", "budget_ms": 5, "trials": 1_000_000})
    name = search_name(svc, "tiny", 5)
    while complete_trials(db, name) < 10:  # the search is under way
        time.sleep(1)
    paths = [f"/v1/jobs/{job['id']}", "/v1/studies/tiny/fronts", "/v1/jobs"]
    rows = []
    before = rate(db, name, seconds)
    for n, every in clients:
        a, t0 = complete_trials(db, name), time.time()
        stats = asyncio.run(poll(svc.url, paths, n, seconds, every))
        loaded = 60 * (complete_trials(db, name) - a) / (time.time() - t0)
        after = rate(db, name, seconds)
        quiet = (before + after) / 2
        rows.append([str(n), f"every {every:g} s" if every else "back to back", f"{stats['requests']}", f"{stats['rps']:.0f}", f"{stats['p50_ms']:.1f}",
                     f"{stats['p95_ms']:.1f}", str(stats["errors"]), f"{quiet:.0f}", f"{loaded:.0f}",
                     f"{loaded / quiet:.2f}" if quiet else "-"])
        print(rows[-1], flush=True)
        before = after
    svc.post(f"/v1/jobs/{job['id']}/stop")
    svc.wait(job["id"], ("stopped",))
    return rows


# -- faults ---------------------------------------------------------------------------------------
def kill_worker_mid_trial(svc: Service, db: Path, db_url: str, kills: int = 2) -> list[str]:
    trials, name = 60, search_name(svc, "tiny", 6)
    job = svc.post("/v1/studies/tiny/jobs", {"kind": "search", "budget_ms": 6, "trials": trials})
    for k in range(kills):
        target = (k + 1) * trials // (kills + 1)
        while complete_trials(db, name) < target:
            time.sleep(0.05)
        os.kill(worker_pid(svc, job["id"]), signal.SIGKILL)  # its search process dies with it
        time.sleep(3)  # serve starts another worker, which takes the job over
    end = svc.wait(job["id"])
    lost = int(end["status"] != "finished")
    dup, cut = duplicated_trials(db_url, name, trials)
    return ["worker -9 mid-trial (search job)", str(kills), str(end["attempts"]), str(lost), "-", str(cut), str(dup)]


def kill_worker_mid_stage(svc: Service, db: Path, db_url: str) -> list[str]:
    job = svc.post("/v1/studies/tinyrun/jobs", {"kind": "run"})
    kills, snapshots = 0, []
    for stage_done, label in ((("latency", ""), "search"), (("map-layers", "5ms"), "distill")):
        while stage_done not in stage_rows(db, "tinyrun"):
            time.sleep(0.1)
        time.sleep(1.0)  # inside the next stage
        snapshots.append(stage_rows(db, "tinyrun"))
        os.kill(worker_pid(svc, job["id"]), signal.SIGKILL)
        kills += 1
        print(f"killed the worker in tinyrun's {label} stage", flush=True)
        time.sleep(3)
    end = svc.wait(job["id"])
    final = stage_rows(db, "tinyrun")
    redone = sum(final.get(k) != v for snap in snapshots for k, v in snap.items())
    lost = int(end["status"] != "finished")
    dup, cut = duplicated_trials(db_url, search_name(svc, "tinyrun", 5), 24)
    return ["worker -9 mid-stage (run job)", str(kills), str(end["attempts"]), str(lost), str(redone), str(cut),
            str(dup)]


def kill_server_mid_request(svc: Service, db: Path, db_url: str) -> list[str]:
    trials, name = 40, search_name(svc, "tiny", 7)
    stop = threading.Event()
    codes: list[int] = []

    def client() -> None:
        while not stop.is_set():
            try:
                r = httpx.post(svc.url + "/v1/studies/tiny/jobs", json={"budget_ms": 7, "trials": trials},
                               headers=AUTH, timeout=10)
                codes.append(r.status_code)
                httpx.get(svc.url + "/v1/studies/tiny/fronts", timeout=10)
            except httpx.HTTPError:
                codes.append(0)  # the server is down: a client retries
                time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    while complete_trials(db, name) < trials // 2:
        time.sleep(0.05)
    svc.kill()  # with it its worker and the worker's search process (they die with their parent)
    time.sleep(2)
    svc.start()
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join()
    jobs = [j for j in svc.get("/v1/jobs?study=tiny") if j["budget_ms"] == 7.0]
    end = svc.wait(jobs[0]["id"])
    lost = sum(svc.get(f"/v1/jobs/{j['id']}")["status"] != "finished" for j in jobs)
    print(f"launches during the kill: {len(codes)} ({codes.count(201)} created, {codes.count(200)} answered the "
          f"existing job, {codes.count(0)} refused while down); jobs of that search: {len(jobs)}", flush=True)
    dup, cut = duplicated_trials(db_url, name, trials)
    return ["server -9 mid-request (8 clients launching)", "1", str(end["attempts"]), str(lost), "-", str(cut),
            str(dup + len(jobs) - 1)]


# -- setup --------------------------------------------------------------------------------------
def make_studies(work: Path, db_url: str | None = None) -> tuple[Path, str]:
    """The tiny studies `tiny` (no budget) and `tinyrun` (5 ms) in `work`, their database `db_url` (default: a
    SQLite file in `work`), with the supernet and the latency model built."""
    studies = work / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    for name, budgets in (("tiny", []), ("tinyrun", [5.0])):
        data = {**base, **{k: dict(v) for k, v in SIZES.items()}, "name": name}
        data["search"]["budgets_ms"] = budgets
        (studies / f"{name}.yaml").write_text(yaml.safe_dump(data))
    db_url = db_url or f"sqlite:///{work / 'service.db'}"
    for cmd in (["train-supernet"], ["latency"]):  # built before the clock starts
        subprocess.run([sys.executable, "-m", "nas_bert", *cmd, "--config", str(studies / "tiny.yaml"),
                        "--db", db_url], check=True, stdout=subprocess.DEVNULL)
    return studies, db_url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nas-bert-service"))
    ap.add_argument("--clients", default="1,8,32", help="clients polling back to back")
    ap.add_argument("--paced", default="8,32,128", help="clients polling once a second each (as the page, x2)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-faults", action="store_true")
    args = ap.parse_args()
    if args.workdir.exists():
        raise SystemExit(f"{args.workdir} exists; remove it or pass another --workdir")
    os.environ.setdefault("NAS_BERT_CACHE", str(args.workdir / "cache"))
    studies, db_url = make_studies(args.workdir)
    db = args.workdir / "service.db"
    svc = Service(studies, db_url, args.workdir / "serve.log")
    svc.start()
    try:
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores", flush=True)
        if not args.skip_load:
            plan = [(int(n), 0.0) for n in args.clients.split(",") if n] + [(int(n), 1.0) for n in
                                                                              args.paced.split(",") if n]
            rows = load_test(svc, db, plan, args.seconds)
            print(f"\nLoad: clients poll the job, the front and the job list for {args.seconds:g} s each, "
                  "while one search job runs\n")
            print(table(["clients", "each polls", "requests", "req/s", "p50 ms", "p95 ms", "errors", "trials/min alone",
                         "trials/min polled", "ratio"], rows), flush=True)
        if not args.skip_faults:
            rows = [kill_worker_mid_trial(svc, db, db_url), kill_worker_mid_stage(svc, db, db_url),
                    kill_server_mid_request(svc, db, db_url)]
            print("\nFaults\n")
            print(table(["fault", "kills", "attempts", "jobs lost", "stages redone", "trials cut, retried",
                         "trials duplicated"], rows))
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
