"""The service's hard cases, against a live `nas-bert serve` on 127.0.0.1 (the tiny study).

    python benchmarks/bench_faults.py [--workdir /tmp/nas-bert-faults] [--downloads 16] [--bodies 8]
                                      [--body-mb 200] [--stops 20]

1. Parallel downloads: the study run to the end, then --downloads clients ask at once for the archive
   of its new student (built on the first request): status codes, distinct sha256 of what they got.
2. Unauthenticated bodies: --bodies clients at once each send --body-mb MB to POST /v1/studies without
   the token (half with a Content-Length, half in chunks): the answers, how much each managed to send
   before the server closed, and the server's resident memory growth (sampled every 50 ms).
3. Stop, then resume at once, --stops times while a search job runs: the most processes that ran the
   job's command at one moment (sampled every 50 ms; 1 is right), and the job's processes left once it
   is stopped for good.
4. The teacher swapped for weights of the same size: the study run with its teacher in a folder of its
   own, one byte of the weights changed, `nas-bert status`: the stages to redo (all depend on the teacher).

With --postgres URL (an empty database), two more cases on it, with `nas-bert worker` processes (no server):

    python benchmarks/bench_faults.py --postgres postgresql+psycopg://... --skew 60 [--skew-jobs 4]
                                      [--pg-cases skew,kills]

5. Skewed clocks: two workers, one's clock --skew s ahead and one's behind (libfaketime preloaded),
   --skew-jobs search jobs queued: jobs run twice (a job claimed more than once, or its command running in
   two processes at one moment, sampled every 50 ms), trials duplicated.
6. kill -9, in turn, of the worker, of the job's command and of a process the command started (the
   finalists' timing process), each in the middle of a stage of a `run` job, a worker started again after
   each: jobs lost, stages redone (a stage recorded before a kill recorded again), trials duplicated,
   processes left.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_service
from benchmarks._common import cpu_name, table
from benchmarks.bench_service import AUTH, Service


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                kids.setdefault(int(fields[1]), []).append(int(p.name))
    return kids


def job_processes(server: int) -> list[int]:
    """Every process below the service's workers (the jobs' commands and what they started)."""
    kids = _children()
    workers = [c for c in kids.get(server, []) if " worker " in _cmdline(c) + " "]
    out, todo = [], [k for w in workers for k in kids.get(w, [])]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Calls `fn` every 50 ms until stopped; keeps the largest value."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.peak, self.done = fn, float("-inf"), threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.fn())
            except (OSError, ValueError):
                pass
            self.done.wait(0.05)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def downloads(svc: Service, study: str, n: int) -> list[str]:
    (student,) = svc.get(f"/v1/studies/{study}/students")["students"][:1]
    url = svc.url + student["download_url"]
    got: list[tuple[int, str]] = []
    start = threading.Barrier(n)

    def fetch() -> None:
        start.wait()
        r = httpx.get(url, timeout=600)
        got.append((r.status_code, hashlib.sha256(r.content).hexdigest() if r.status_code == 200 else "-"))

    threads = [threading.Thread(target=fetch) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted({c for c, _ in got})
    return [f"{n} parallel downloads of a new student", f"{sum(c == 200 for c, _ in got)}/{n} answered 200",
            f"codes {codes}", f"{len({h for c, h in got if c == 200})} distinct sha256"]


def bodies(svc: Service, n: int, mb: int) -> list[str]:
    pid = svc.proc.pid  # type: ignore[union-attr]
    before = rss_mb(pid)
    sampler = Sampler(lambda: rss_mb(pid))
    sampler.start()
    sent: list[int] = []
    answers: list[str] = []

    def upload(i: int) -> None:
        count = [0]

        def chunks():
            block = b"x" * (1 << 20)
            for _ in range(mb):
                count[0] += len(block)
                yield block

        headers = {"Content-Type": "application/yaml"}
        if i % 2 == 0:
            headers["Content-Length"] = str(mb << 20)
        try:
            r = httpx.post(svc.url + "/v1/studies", content=chunks(), headers=headers, timeout=120)
            answers.append(str(r.status_code))
        except httpx.HTTPError as e:  # the server answered and closed while the body was still going out
            answers.append(f"closed ({type(e).__name__})")
        sent.append(count[0])

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    growth = sampler.stop() - before
    return [f"{n} unauthenticated bodies of {mb} MB at once", f"answers {sorted(set(answers))}",
            f"sent at most {max(sent) / (1 << 20):.1f} MB of {mb}", f"server RSS +{growth:.1f} MB"]


def stop_resume(svc: Service, study: str, stops: int) -> list[str]:
    job = svc.post(f"/v1/studies/{study}/jobs", {"budget_ms": 9, "trials": 100000})
    server = svc.proc.pid  # type: ignore[union-attr]

    def running_commands() -> float:
        return float(sum("--latency-budget-ms 9" in _cmdline(p) and " -m nas_bert search " in _cmdline(p)
                         for p in job_processes(server)))

    deadline = time.time() + 300
    while running_commands() < 1 and time.time() < deadline:
        time.sleep(0.2)
    sampler = Sampler(running_commands)
    sampler.start()
    refused = 0
    for _ in range(stops):
        time.sleep(1.0)  # let it run a moment
        svc.post(f"/v1/jobs/{job['id']}/stop")
        r = httpx.post(svc.url + f"/v1/jobs/{job['id']}/resume", headers=AUTH, timeout=120)
        refused += r.status_code != 200
    time.sleep(2.0)
    svc.post(f"/v1/jobs/{job['id']}/stop")
    most = sampler.stop()
    deadline = time.time() + 60
    while job_processes(server) and time.time() < deadline:
        time.sleep(0.2)
    left = len(job_processes(server))
    return [f"stop, then resume at once, x{stops} during a search", f"at most {most:.0f} run(s) at once",
            f"{refused} resume(s) refused", f"{left} process(es) left after the stop"]


def teacher_swap(work: Path, db_url: str, studies: Path) -> list[str]:
    from nas_bert.teacher.loading import tiny_teacher_dir

    folder = studies / "own-teacher"
    shutil.copytree(tiny_teacher_dir(), folder)
    data = yaml.safe_load((studies / "tinyrun.yaml").read_text())
    data.update(name="swap", teacher="own-teacher")
    (studies / "swap.yaml").write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "nas_bert"]
    subprocess.run([*cmd, "run", "--config", str(studies / "swap.yaml"), "--db", db_url], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status() -> list[dict]:
        out = subprocess.run([*cmd, "status", "--config", str(studies / "swap.yaml"), "--db", db_url, "--json"],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)["stages"]

    before = status()
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    data_bytes = bytearray(weights.read_bytes())
    data_bytes[-1] ^= 0x01
    weights.write_bytes(bytes(data_bytes))
    assert weights.stat().st_size == size
    after = status()
    redo = [f"{s['stage']} {s['key']}".strip() for s in after if s["state"] != "current"]
    return ["teacher weights changed, same size", (f"{sum(s['state'] == 'current' for s in before)}/{len(before)} "
            "current before"), f"{len(redo)}/{len(after)} to redo after", "why: " + (after[0]["why"] if after else "-")]


def make_studies(work: Path) -> tuple[Path, str]:
    """bench_service's two tiny studies, and `tinyrun` run to the end (its student is what is downloaded)."""
    studies, db_url = bench_service.make_studies(work)
    subprocess.run([sys.executable, "-m", "nas_bert", "run", "--config", str(studies / "tinyrun.yaml"), "--db", db_url],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return studies, db_url


# -- PostgreSQL: workers without a server -------------------------------------------------------------
def start_worker(studies: Path, db_url: str, log: Path, skew_s: float = 0.0) -> subprocess.Popen:
    """`nas-bert worker` (lease 6 s, heartbeat 1 s), its clock (and its children's) `skew_s` off (faketime)."""
    cmd = [sys.executable, "-m", "nas_bert", "worker", "--db", db_url, "--studies", str(studies), "--lease", "6",
           "--heartbeat", "1", "--poll", "0.5"]
    with open(log, "a") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=f, env=skewed_env(skew_s))


def skewed_env(skew_s: float) -> dict[str, str]:
    """This environment with libfaketime preloaded `skew_s` off (not the `faketime` command, which would stand
    between this process and the worker: a signal to it would leave the worker running)."""
    if not skew_s:
        return dict(os.environ)
    libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not libs:
        raise SystemExit("libfaketime is not installed (Debian: apt-get install faketime)")
    return {**os.environ, "LD_PRELOAD": str(libs[0]), "FAKETIME": f"{skew_s:+g}s"}


def clock_offset(skew_s: float) -> float:
    """What a process under libfaketime reads as the time, minus this process's reading."""
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=skewed_env(skew_s),
                         check=True, capture_output=True, text=True).stdout
    return float(out) - time.time()


def pg_stage_rows(db_url: str, study: str) -> dict[tuple[str, str], str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            return {(st, k): f"{at}/{sec:.3f}" for st, k, at, sec in c.execute(text(
                "SELECT stage, key, finished_at, seconds FROM nasbert_stages WHERE study = :s"), {"s": study})}
    finally:
        engine.dispose()


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out += kids.get(p, [])
        todo += kids.get(p, [])
    return out


def wait_job(db: object, job_id: int, timeout: float = 1800) -> str:
    from nas_bert.service import jobs

    deadline = time.time() + timeout
    while time.time() < deadline:
        row = jobs.get(db, job_id)  # type: ignore[arg-type]
        if row is not None and row.status in ("finished", "failed", "stopped"):
            return row.status
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} did not end")


def skewed_workers(studies: Path, db_url: str, work: Path, skew: float, n: int) -> list[str]:
    from nas_bert.service import jobs
    from nas_bert.store import Database

    db = Database(db_url)
    offsets = [clock_offset(skew), clock_offset(-skew)]
    budgets = [11.0 + i for i in range(n)]
    ids = [jobs.enqueue(db, "tiny", "search", b, {"trials": 12})[0].id for b in budgets]
    workers = [start_worker(studies, db_url, work / "worker-ahead.log", skew),
               start_worker(studies, db_url, work / "worker-behind.log", -skew)]
    wpids = {w.pid for w in workers}

    def most_at_once() -> float:  # the most processes running one job's command at one moment
        cmds = [_cmdline(p) for w in wpids for p in descendants(w)]
        return float(max((sum(f"--latency-budget-ms {b:g} " in c + " " for c in cmds) for b in budgets), default=0))

    sampler = Sampler(most_at_once)
    sampler.start()
    try:
        ends = [wait_job(db, j) for j in ids]
    finally:
        most = sampler.stop()
        for w in workers:
            w.send_signal(signal.SIGINT)
        for w in workers:
            w.wait(timeout=60)
    rows = [jobs.get(db, j) for j in ids]
    twice = sum(r.attempts > 1 for r in rows)  # type: ignore[union-attr]
    dup = sum(bench_service.duplicated_trials(db_url, search_name(studies, db_url, "tiny", b), 12)[0] for b in budgets)
    by = sorted({r.worker.rsplit(":", 1)[1] for r in rows})  # type: ignore[union-attr]
    return [f"2 workers, clocks {offsets[0]:+.0f} s / {offsets[1]:+.0f} s, {n} search jobs",
            f"{sum(e == 'finished' for e in ends)}/{n} finished, by {len(by)} workers",
            (f"jobs run twice {twice + int(most > 1)} (claims > 1: {twice}; most commands of one job at once "
             f"{most:.0f})"), f"trials duplicated {dup}"]


def search_name(studies: Path, db_url: str, study: str, budget_ms: float) -> str:
    from nas_bert.search.storage import own_study_name
    from nas_bert.study import load_study

    return own_study_name(load_study(studies / f"{study}.yaml", db_url), budget_ms)


def kills_mid_stage(studies: Path, db_url: str, work: Path) -> list[list[str]]:
    from nas_bert.service import jobs
    from nas_bert.store import Database

    db = Database(db_url)
    job = jobs.enqueue(db, "tinyrun", "run")[0].id
    log = work / "worker-kills.log"
    worker = start_worker(studies, db_url, log)
    out = []

    def command() -> int | None:
        kids = _children().get(worker.pid, [])
        return kids[0] if kids else None

    def timing_process() -> int | None:
        cmd = command()
        # a timing process is spawned by multiprocessing (its resource tracker is not one)
        return next((p for p in descendants(cmd) if "spawn_main" in _cmdline(p)), None) if cmd else None

    # (what is killed, the stage recorded before it, how to find its pid)
    plan = [("worker", ("latency", ""), lambda: worker.pid),  # in the search
            ("a timing process of the command", ("search", "5ms"), timing_process),  # in the finalists' timing
            ("the job's command", ("map-layers", "5ms"), command)]  # in the distillation
    for what, after, find in plan:
        deadline = time.time() + 900
        while after not in pg_stage_rows(db_url, "tinyrun") and time.time() < deadline:
            time.sleep(0.1)
        pid = None
        while pid is None and time.time() < deadline:
            pid = find()
            time.sleep(0.05)
        time.sleep(0.5)  # inside the next stage
        before = pg_stage_rows(db_url, "tinyrun")
        below = descendants(pid) if pid else []
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        print(f"killed {what} (pid {pid}) after stage {' '.join(after).strip()}", flush=True)
        time.sleep(3)
        left = sum(pid_alive_not_zombie(p) for p in below)
        if worker.poll() is not None:  # the worker itself died: another is started
            worker = start_worker(studies, db_url, log)
        for _ in range(20):  # the job fails within seconds of the kill, or goes on
            row = jobs.get(db, job)
            if row.status != "running":  # type: ignore[union-attr]
                break
            time.sleep(1)
        status = row.status  # type: ignore[union-attr]
        if status == "failed":
            print(f"  the job failed: {row.error}; resumed", flush=True)  # type: ignore[union-attr]
            jobs.resume(db, job)
        end = wait_job(db, job) if what == plan[-1][0] else None
        out.append((what, before, left, status))
    final = pg_stage_rows(db_url, "tinyrun")
    row = jobs.get(db, job)
    worker.send_signal(signal.SIGINT)
    worker.wait(timeout=60)
    dup, cut = bench_service.duplicated_trials(db_url, search_name(studies, db_url, "tinyrun", 5), 24)
    rows = []
    for what, before, left, status in out:
        redone = sum(final.get(k) != v for k, v in before.items())
        rows.append([f"kill -9 of {what} mid-stage (run job)", f"job {status} after it; finally {end}",
                     f"stages redone {redone}; processes left {left}",
                     f"attempts {row.attempts}; trials cut {cut}, duplicated {dup}"])  # type: ignore[union-attr]
    return rows


def pid_alive_not_zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def postgres_cases(work: Path, db_url: str, skew: float, n: int, cases: list[str]) -> list[list[str]]:
    studies, _ = bench_service.make_studies(work, db_url)
    rows = []
    if "skew" in cases:
        rows.append(skewed_workers(studies, db_url, work, skew, n))
        print(" | ".join(rows[-1]), flush=True)
    if "kills" in cases:
        rows += kills_mid_stage(studies, db_url, work)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nas-bert-faults"))
    ap.add_argument("--downloads", type=int, default=16)
    ap.add_argument("--bodies", type=int, default=8)
    ap.add_argument("--body-mb", type=int, default=200)
    ap.add_argument("--stops", type=int, default=20)
    ap.add_argument("--postgres", default=None, help="an empty PostgreSQL database: only the cases 5 and 6, on it")
    ap.add_argument("--skew", type=float, default=60.0, help="seconds the two workers' clocks are off (case 5)")
    ap.add_argument("--skew-jobs", type=int, default=4)
    ap.add_argument("--pg-cases", default="skew,kills", help="which of the PostgreSQL cases (5: skew, 6: kills)")
    args = ap.parse_args()
    if args.workdir.exists():
        raise SystemExit(f"{args.workdir} exists; remove it or pass another --workdir")
    os.environ.setdefault("NAS_BERT_CACHE", str(args.workdir / "cache"))
    t0 = time.time()
    if args.postgres:
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores; PostgreSQL", flush=True)
        rows = postgres_cases(args.workdir, args.postgres, args.skew, args.skew_jobs, args.pg_cases.split(","))
        print()
        print(table(["case", "result", "detail", "measure"], rows))
        print(f"\n{time.time() - t0:.0f} s in all")
        return
    studies, db_url = make_studies(args.workdir)
    svc = Service(studies, db_url, args.workdir / "serve.log")
    svc.start()
    rows = []
    try:
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores", flush=True)
        for case in (lambda: downloads(svc, "tinyrun", args.downloads), lambda: bodies(svc, args.bodies, args.body_mb),
                     lambda: stop_resume(svc, "tiny", args.stops)):
            rows.append(case())
            print(" | ".join(rows[-1]), flush=True)
    finally:
        svc.stop()
    rows.append(teacher_swap(args.workdir, db_url, studies))
    print()
    print(table(["case", "result", "detail", "measure"], rows))
    print(f"\n{time.time() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
