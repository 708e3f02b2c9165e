"""How accuracy retention depends on the evaluation's fine-tuning: a study's exported students and its teacher,
fine-tuned under protocols of several lengths and seeds, tested on the same texts.

    nas-bert run --config studies/quality.yaml          # or any study that exported its students
    python benchmarks/bench_retention.py --config studies/quality.yaml --protocols 300:6000,1000:20000 \\
        --seeds 0,1 --test 5000

Each protocol is STEPS:TRAIN (fine-tuning steps, training examples of the study's first task; WordNet
supersenses by default); everything else is the study's `evaluate` recipe (rates, batch, warm-up, sequence
length). Every model of a protocol and seed sees the same examples in the same order and is tested on the same
--test texts, so retention (student / teacher accuracy, same protocol and seed) pairs up. The students are the
export folder's (index.json), as a user loads them (--budgets: only those budgets'), and any other student folders
named by --models (e.g. bench_baselines.py's family members), fine-tuned beside them. A short fine-tuning measures
how fast a model adapts more than what it reaches: if the teacher gains with more steps, so can retention.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.data.tasks import load_task
from nas_bert.evaluate import load_student
from nas_bert.evaluate.evaluation import finetune, tasks_to_run
from nas_bert.study import load_study
from nas_bert.teacher import load_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--protocols", default="300:6000,1000:20000", help="STEPS:TRAIN, comma-separated")
    p.add_argument("--seeds", default="0,1", help="fine-tuning seeds (head, dropout, order), comma-separated")
    p.add_argument("--test", type=int, default=5000, help="test (and validation) examples of the task")
    p.add_argument("--export", default=None, help="the export folder (default: the study's)")
    p.add_argument("--budgets", default="", help="only the exported students of these budgets (ms, comma-separated)")
    p.add_argument("--models", default="", help="more student folders, NAME=PATH, comma-separated (e.g. "
                   "spread-3=studies/quality/baselines/spread-3/<run>/student)")
    args = p.parse_args()
    study = load_study(args.config)
    folder = Path(args.export) if args.export else study.workdir / "export"
    if not (folder / "index.json").is_file():
        raise SystemExit(f"{folder} has no index.json; run `nas-bert export` (or `nas-bert run`) for the study first")
    protocols = [tuple(int(x) for x in s.split(":")) for s in args.protocols.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    teacher = load_teacher(study.cfg.teacher, "cpu")
    index = sorted(json.loads((folder / "index.json").read_text())["students"], key=lambda s: s["budget_ms"])
    if budgets := [float(b) for b in args.budgets.split(",") if b]:
        index = [s for s in index if any(abs(s["budget_ms"] - b) < 1e-6 for b in budgets)]
    entries = [m for m in args.models.split(",") if m]
    if bad := [m for m in entries if "=" not in m]:
        raise SystemExit(f"--models takes NAME=PATH entries; {bad[0]!r} has no '='")
    extra = dict(m.split("=", 1) for m in entries)
    models = {"teacher": teacher.encoder, **{s["name"]: load_student(folder / s["name"]).eval() for s in index},
              **{name: load_student(path).eval() for name, path in extra.items()}}
    task = tasks_to_run(study.cfg.evaluate, None)[0]
    acc: dict[tuple[int, int, int], dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for steps, train in protocols:
        for seed in seeds:
            cfg = study.cfg.evaluate.model_copy(update={"finetune_steps": steps, "max_train_examples": train,
                                                        "max_eval_examples": args.test, "seed": seed})
            dd, names = load_task(task, cfg)
            for name, encoder in models.items():
                t0 = time.perf_counter()
                acc.setdefault((steps, train, seed), {})[name] = finetune(
                    encoder, teacher.tokenizer, dd, names, cfg, desc=f"{name} {steps}:{train} seed {seed}")[1]
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
                print(f"{steps}:{train} seed {seed} {name}: {acc[(steps, train, seed)][name]:.4f}", flush=True)
    print(f"\n# bench_retention: study '{study.name}', task {task if isinstance(task, str) else task.name}, "
          f"{len(dd['test'])} test examples, {cpu_name()}, {torch.get_num_threads()} threads")
    rows = []
    for steps, train in protocols:
        runs = [acc[(steps, train, s)] for s in seeds]
        for name in models:
            per = [r[name] for r in runs]
            ret = [r[name] / r["teacher"] for r in runs]
            rows.append([f"{steps}:{train}", name, " ".join(f"{a:.4f}" for a in per), f"{sum(per) / len(per):.4f}",
                         "" if name == "teacher" else " ".join(f"{x:.3f}" for x in ret),
                         "" if name == "teacher" else f"{sum(ret) / len(ret):.3f}"])
    print(table(["steps:train", "model", "accuracy per seed", "mean", "retention per seed", "mean retention"], rows))
    print("\nfine-tuning time, all protocols and seeds: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
