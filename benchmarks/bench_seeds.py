"""How much of an accuracy difference is the fine-tuning seed? Students evaluated under several seeds.

    python benchmarks/bench_seeds.py --config studies/demo.yaml --seeds 0,1,2 \
        NAS=studies/demo/distill/<run>/best pruned=studies/demo/baselines/pruned-4-i512

Each student folder (a distilled or exported student, or a baseline's folder from bench_baselines.py) is copied to a
temporary folder (evaluation writes its nas_bert.json) and evaluated with the study's `evaluate` protocol, its
`seed` set to each of --seeds: the teacher is fine-tuned again under each seed (its baseline is per protocol), and
every student's accuracy ratio comes with its paired 90% interval over the test examples. The table gives each
student's accuracy per seed, its mean and standard deviation over the seeds, and the first student's difference to
each other per seed: a difference whose sign every seed agrees on and whose mean is well beyond the seeds' spread is
not the seed's doing. The last column is that difference with its paired 90% bootstrap interval over the test
examples (each example counted by its mean over the seeds): an interval that holds zero is a difference the test set
cannot tell from none. One seed gives that column alone (no spread). Evaluations are recorded in the study's
database (under the seed's protocol).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import accuracy_difference, cpu_name, table
from nas_bert.evaluate import evaluate_path
from nas_bert.study import load_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (evaluate.seed), comma-separated")
    ap.add_argument("students", nargs="+", help="NAME=FOLDER: the students to compare, the first the reference")
    args = ap.parse_args()
    named = dict(s.split("=", 1) if "=" in s else (Path(s).name, s) for s in args.students)
    for name, folder in named.items():
        if not (Path(folder) / "config.json").is_file():
            sys.exit(f"{name}={folder}: not a model folder (no config.json); give a distilled or exported student")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if not seeds:
        sys.exit(f"--seeds {args.seeds}: give one seed or more, comma-separated")
    t0 = time.time()
    study = load_study(args.config)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    acc: dict[str, dict[int, float]] = {n: {} for n in named}
    teacher: dict[int, float] = {}
    interval: dict[str, dict[int, str]] = {n: {} for n in named}
    correct: dict[str, list[str]] = {n: [] for n in named}
    with tempfile.TemporaryDirectory() as tmp:
        copies = {n: shutil.copytree(f, Path(tmp) / n) for n, f in named.items()}
        for seed in seeds:
            cfg = study.cfg.evaluate.model_copy(update={"seed": seed})
            for name, folder in copies.items():
                r = evaluate_path(study, str(folder), cfg=cfg)
                acc[name][seed], teacher[seed] = r.accuracy, r.teacher_accuracy
                interval[name][seed] = ("" if r.accuracy_ratio_low is None else
                                        f" ({r.accuracy_ratio_low:.2f}-{r.accuracy_ratio_high:.2f})")
                correct[name].append(r.test_correct or "")
                print(f"seed {seed}: {name} accuracy {r.accuracy:.3f}, teacher {r.teacher_accuracy:.3f}")
    ref = next(iter(named))

    def sd(values: list[float]) -> str:
        return f"{statistics.stdev(values):.3f}" if len(values) > 1 else "-"

    def pooled(name: str) -> str:
        """reference minus `name` over the seeds, with its paired 90% interval over the test examples"""
        return "" if name == ref else accuracy_difference(correct[ref], correct[name], digits=4)

    rows = [["teacher", *(f"{teacher[s]:.3f}" for s in seeds), f"{statistics.mean(teacher.values()):.3f}",
             sd(list(teacher.values())), "", ""]]
    for name in named:
        a = [acc[name][s] for s in seeds]
        diff = "" if name == ref else (
            " / ".join(f"{acc[ref][s] - acc[name][s]:+.3f}" for s in seeds)
            + f" (mean {statistics.mean(acc[ref][s] - acc[name][s] for s in seeds):+.3f})")
        rows.append([name, *(f"{acc[name][s]:.3f}{interval[name][s]}" for s in seeds), f"{statistics.mean(a):.3f}",
                     sd(a), diff, pooled(name)])
    print()
    print(table(["model", *(f"seed {s} (ratio 90%)" for s in seeds), "mean", "sd", f"{ref} minus it, per seed",
                 f"{ref} minus it (paired 90%, test examples)"], rows))
    print(f"\naccuracy: {study.cfg.evaluate.finetune_steps} fine-tuning steps, test set of "
          f"{study.cfg.evaluate.max_eval_examples} at most; ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
