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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nas-bert-faults"))
    ap.add_argument("--downloads", type=int, default=16)
    ap.add_argument("--bodies", type=int, default=8)
    ap.add_argument("--body-mb", type=int, default=200)
    ap.add_argument("--stops", type=int, default=20)
    args = ap.parse_args()
    if args.workdir.exists():
        raise SystemExit(f"{args.workdir} exists; remove it or pass another --workdir")
    os.environ.setdefault("NAS_BERT_CACHE", str(args.workdir / "cache"))
    t0 = time.time()
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
