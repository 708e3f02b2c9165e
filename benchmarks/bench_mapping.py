"""Does the searched layer mapping beat the best heuristic after the full distillation, over seeds?

    nas-bert run --config studies/demo.yaml
    python benchmarks/bench_mapping.py --config studies/demo.yaml --seeds 0,1 [--only 13.59] [--all-heuristics]

Stage 6 (`nas-bert map-layers`) searches which teacher layer each student layer learns from with a DEAP GA whose
fitness is a short proxy distillation, then confirms its best mapping against the best heuristic (uniform, last,
the kept layers' own) with `mapping.confirm_seeds` more proxy runs each, and uses the heuristic unless the searched
mapping wins beyond noise. This benchmark checks that decision where it counts: each budget's chosen student is
distilled with the study's full recipe (`distill.steps`) under the searched mapping and under the heuristic (with
--all-heuristics: under every heuristic), once per --seeds (the distillation's seed: data order, dropout), and
evaluated under the study's protocol. The study's own distilled student is reused where it is the same run (the
mapping it used, at `distill.seed`).

Per budget and mapping: each seed's fidelity on the WordNet test glosses and on the man pages (nothing trains or
chooses on them) and its fine-tuned accuracy; their means; and each mapping's difference to the mapping the study
used, with two kinds of noise: a paired 90% bootstrap interval over the texts (the seeds' mean fidelity on the same
resamples, differenced resample by resample) and twice the standard error of the per-seed differences (seeds paired:
the same seed draws the same batches). A difference is beyond noise only when both exclude zero. Every run is
recorded in the study database (stage "bench-mapping"): a rerun resumes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, study_budgets, table
from nas_bert.data import load_task
from nas_bert.distill import StudentContext
from nas_bert.distill.students import distill_key, train_student
from nas_bert.evaluate import (
    EvaluationResult,
    evaluate_path,
    fidelity_bootstrap,
    load_student,
    paired_interval,
    stored_evaluation,
)
from nas_bert.evaluate.evaluation import _ood_default
from nas_bert.evaluate.vectors import sentence_vectors, teacher_vectors
from nas_bert.pipeline import Runner, student_stages
from nas_bert.record import Record
from nas_bert.space import Architecture
from nas_bert.store import Database
from nas_bert.study import Study, load_study
from nas_bert.teacher import load_teacher


class MappingRun(Record):
    """One distillation of a budget's student under one mapping and seed, and its evaluation."""

    mapping: list[int]
    seed: int
    student_path: str
    metrics: EvaluationResult
    boot: dict[str, list[float]]  # "wordnet" / "ood": fidelity on each bootstrap resample of the texts


def _bootstrap(study: Study, folder: str) -> dict[str, list[float]]:
    """The student's fidelity on the evaluation's texts (WordNet test glosses, the out-of-domain set), per bootstrap
    resample: the same resamples for every student, so two students' values pair up."""
    cfg, ctx_teacher = study.cfg.evaluate, load_teacher(study.cfg.teacher)  # the teacher alone: no corpus, no supernet
    sets = {"wordnet": list(load_task("wordnet", cfg)[0]["test"]["text"][: cfg.fidelity_texts])}
    if ood := _ood_default(cfg):
        sets["ood"] = ood
    student = load_student(folder)
    out = {}
    for name, texts in sets.items():
        s = sentence_vectors(student, ctx_teacher.tokenizer, texts, cfg.batch_size, cfg.fidelity_max_seq_length, "cpu",
                             ctx_teacher.pooling)
        t = teacher_vectors(ctx_teacher, texts, cfg, "cpu")
        out[name] = [round(v, 6) for v in fidelity_bootstrap(s, t, centered=cfg.fidelity_centered)]
    return out


def _evaluate(study: Study, folder: str) -> EvaluationResult:
    cfg = study.cfg.evaluate
    stored = stored_evaluation(Database(study.db_url), study.name, str(Path(folder).resolve()), "wordnet", cfg)
    return EvaluationResult(**stored) if stored else evaluate_path(study, folder, False, "wordnet", cfg)


def run_one(study: Study, budget: float, arch: Architecture, start: str, name: str, mapping: list[int], seed: int,
            reuse: str | None) -> MappingRun:
    """The student distilled under `mapping` with the distillation seed `seed` (or the study's own run, `reuse`)."""
    seeded = load_study(study.file, db_url=study.db_url, overrides={"distill.seed": seed})
    folder = reuse
    if folder is None:
        ctx = StudentContext.open(seeded)
        root = (study.workdir / "bench_mapping" / f"{budget:g}ms" / f"{name}-seed{seed}"
                / distill_key(ctx, arch, start, mapping))
        module = ctx.start(arch, start, seeded.cfg.distill.freeze_embeddings)
        path = train_student(ctx, arch, module, mapping, root, seeded.cfg.distill.steps, label=f"{name} seed {seed}")[3]
        folder = str(path)
    return MappingRun(mapping=mapping, seed=seed, student_path=folder, metrics=_evaluate(seeded, folder),
                      boot=_bootstrap(seeded, folder))


def _mean(runs: list[MappingRun], key: str) -> float:
    return statistics.mean(getattr(r.metrics, key) for r in runs)


def _difference(a: list[MappingRun], b: list[MappingRun], key: str, boot: str) -> str:
    """Mean of a - b over seeds, its paired interval over texts and 2 se over seeds; 'beyond' when both exclude 0."""
    diffs = [getattr(x.metrics, key) - getattr(y.metrics, key) for x, y in zip(a, b, strict=True)]
    d = statistics.mean(diffs)
    two_se = 2 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    lo, hi = paired_interval([float(np.mean(v)) for v in zip(*(r.boot[boot] for r in a), strict=True)],
                             [float(np.mean(v)) for v in zip(*(r.boot[boot] for r in b), strict=True)])
    beyond = (lo > 0 or hi < 0) and abs(d) > two_se
    return f"{d:+.3f} ({lo:+.3f}..{hi:+.3f}; 2 se {two_se:.3f}){' beyond' if beyond else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--seeds", default="0,1", help="distillation seeds (comma-separated; at least two)")
    ap.add_argument("--only", default="", help="these of the study's budgets (ms, comma-separated)")
    ap.add_argument("--all-heuristics", action="store_true", help="every heuristic mapping, not only the best one")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if len(seeds) < 2:
        sys.exit(f"--seeds {args.seeds}: give at least two seeds, e.g. --seeds 0,1")
    t0 = time.time()
    study = load_study(args.config)
    print(f"command: python {' '.join(sys.argv)}\nmachine: {cpu_name()}\n")
    r = Runner(study)
    budgets = study_budgets(study, r.db, args.only)
    rows, verdicts = [], []
    for b in sorted(budgets, reverse=True):
        stages = student_stages(r, study, b)  # finished by `nas-bert run`: read back, not redone
        chosen, d, m = stages.chosen, stages.distill, stages.mapping
        arch, start = Architecture.from_json(chosen.arch_json), chosen.origin
        used = (m.decision or {}).get("used", "searched")
        heuristics = dict(sorted(m.baselines.items(), key=lambda kv: kv[1].fitness))
        named = {"searched": m.best.mapping, **{k: v.mapping for k, v in heuristics.items()}}
        if not args.all_heuristics:
            best = next(iter(heuristics))
            named = {k: v for k, v in named.items() if k in ("searched", used, best)}
        by_mapping: dict[tuple[int, ...], str] = {}
        for name, mp in named.items():  # one run per distinct mapping, named by every name it has
            by_mapping[tuple(mp)] = f"{by_mapping[tuple(mp)]} = {name}" if tuple(mp) in by_mapping else name
        if len(by_mapping) < 2:
            print(f"{b:g} ms: the searched mapping is the heuristic {d.mapping}: nothing to compare")
            continue
        runs: dict[str, list[MappingRun]] = {}
        for mp, name in by_mapping.items():
            for seed in seeds:
                reuse = d.student_path if list(mp) == d.mapping and seed == study.cfg.distill.seed else None
                key = f"{b:g}ms:{'-'.join(map(str, mp))}:seed{seed}"
                runs.setdefault(name, []).append(r.stage(
                    "bench-mapping", key, ("distill", "evaluate"),
                    lambda b=b, mp=mp, name=name, seed=seed, reuse=reuse, arch=arch, start=start: run_one(
                        study, b, arch, start, name.split(" = ")[0], list(mp), seed, reuse), MappingRun))
        ref = next(n for n, rs in runs.items() if rs[0].mapping == d.mapping)
        fitness = {"searched": m.best.fitness, **{k: v.fitness for k, v in heuristics.items()}}
        for name, rs in runs.items():
            proxy = min(fitness[n] for n in name.split(" = "))
            rows.append([f"{b:g}", name + (" (used)" if name == ref else ""), str(rs[0].mapping), f"{proxy:.4f}",
                         " / ".join(f"{x.metrics.fidelity:.3f}" for x in rs), f"{_mean(rs, 'fidelity'):.3f}",
                         f"{_mean(rs, 'ood_fidelity'):.3f}", f"{_mean(rs, 'accuracy'):.3f}",
                         "-" if name == ref else _difference(rs, runs[ref], "fidelity", "wordnet"),
                         "-" if name == ref else _difference(rs, runs[ref], "ood_fidelity", "ood")])
        decision = m.decision or {}
        verdicts.append(f"{b:g} ms: stage 6 used {ref} ({decision.get('reason', 'no confirmation recorded')})")
    print(table(["budget ms", "mapping", "teacher layers", "proxy loss", "fidelity per seed", "fidelity", "man pages",
                 "accuracy", "fidelity - used (90% texts; 2 se seeds)", "man pages - used"], rows))
    print(f"\nseeds {seeds}; distillation {study.cfg.distill.steps} steps x {study.cfg.distill.batch_size} sequences "
          "per run; proxy loss: stage 6's held-out loss after its short proxy distillation (lower is better)")
    print("\n".join(verdicts))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
