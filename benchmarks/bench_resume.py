"""Which stages `nas-bert run` redoes when one input changes, as observed on real runs.

    python benchmarks/bench_resume.py [--workdir /tmp/nas-bert-resume]

Runs the tiny study (tiny random teacher, tiny space, one budget; a few minutes on 2 cores) through
`nas-bert run` once, then, for each change below made on its own to a copy of that finished study
(the study file, or the search space file's content), runs `nas-bert run` again and records which
stages ran and which were skipped. The table is what a user gets who edits that key and reruns.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_name, table, tiny_sizes

SIZES = tiny_sizes(search={"budgets_ms": [5.0]})

# (what changed, study-file keys to set, change the space file's content)
CHANGES: list[tuple[str, dict[str, Any], bool]] = [
    ("nothing", {}, False),
    ("search space file content (same name)", {}, True),
    ("corpus.max_seq_length", {"corpus.max_seq_length": 24}, False),
    ("supernet.lr", {"supernet.lr": 0.002}, False),
    ("supernet.steps (more)", {"supernet.steps": 10}, False),
    ("latency.threads", {"latency.threads": 1}, False),
    ("search.trials", {"search.trials": 30}, False),
    ("search.budgets_ms (one added)", {"search.budgets_ms": [5.0, 6.0]}, False),
    ("mapping.population", {"mapping.population": 6}, False),
    ("distill.lr", {"distill.lr": 0.001}, False),
    ("evaluate.finetune_steps", {"evaluate.finetune_steps": 4}, False),
]
STAGES = ["supernet", "latency", "search", "finalists", "map-layers", "distill", "evaluate", "export", "reference"]


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def run(study_file: Path) -> tuple[dict[str, bool], float]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nas_bert", "run", "--config", str(study_file), "--json"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"nas-bert run failed for {study_file}:\n{done.stderr[-3000:]}")
    ran: dict[str, bool] = {}
    for s in json.loads(done.stdout)["stages"]:
        if s["key"] in ("", "5ms", "5"):  # the first budget's stages and the shared ones
            ran[s["stage"]] = ran.get(s["stage"], False) or not s["skipped"]
    return ran, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/nas-bert-resume")
    args = ap.parse_args()
    base = Path(args.workdir) / "base"
    shutil.rmtree(args.workdir, ignore_errors=True)
    base.mkdir(parents=True)
    space = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    (base / "space.yaml").write_text(yaml.safe_dump(space))
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(SIZES)
    data["search_space"] = "space.yaml"
    (base / "tiny.yaml").write_text(yaml.safe_dump(data))
    first, seconds = run(base / "tiny.yaml")
    print(f"first run: {seconds:.0f} s, stages {', '.join(s for s in STAGES if first.get(s))}", flush=True)
    rows = []
    for label, keys, edit_space in CHANGES:
        folder = Path(args.workdir) / label.split(" ")[0].replace(".", "-")
        shutil.copytree(base, folder)  # the study's database, checkpoints and files, as finished
        d = yaml.safe_load((folder / "tiny.yaml").read_text())
        for k, v in keys.items():
            set_key(d, k, v)
        (folder / "tiny.yaml").write_text(yaml.safe_dump(d))
        if edit_space:
            (folder / "space.yaml").write_text(yaml.safe_dump({**space, "conv_kernels": [3]}))
        ran, seconds = run(folder / "tiny.yaml")
        rows.append([label, *("**rerun**" if ran.get(s) else "no-op" for s in STAGES), f"{seconds:.0f}"])
        print(f"{label}: {', '.join(s for s in STAGES if ran.get(s)) or 'nothing'} ({seconds:.0f} s)", flush=True)
    print(f"\n{cpu_name()}; tiny study, budget 5 ms (the first budget's stages; an added budget runs its own)\n")
    print(table(["changed input", *STAGES, "s"], rows))


if __name__ == "__main__":
    main()
