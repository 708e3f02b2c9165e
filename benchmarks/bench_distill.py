"""Distillation benchmark: each chosen student of a study before and after stage 7, beside the teacher,
and the layer-mapping search's best mapping against the uniform and last-layer baselines.

    python benchmarks/bench_distill.py --config studies/demo.yaml

Needs a study on which `nas-bert run` (or map-layers and distill for each budget) has finished.
"before" is the student extracted from the supernet (the teacher's embeddings, the supernet's
slices); "after" is the distilled folder. All are evaluated under the study's one protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.distill import StudentContext, trial_architecture
from nas_bert.evaluate import evaluate_encoder, load_student, teacher_baseline
from nas_bert.store import DistillRun, MappingEval
from nas_bert.study import load_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--task", default="wordnet")
    args = ap.parse_args()
    t0 = time.time()
    study = load_study(args.config)
    ctx = StudentContext.open(study)
    cfg, device = study.cfg.evaluate, study.device()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    base = teacher_baseline(ctx.db, study.name, ctx.teacher, cfg, args.task, device)
    with ctx.db.session() as s:
        runs = s.scalars(select(DistillRun).where(DistillRun.study == study.name, DistillRun.status == "finished")).all()
    quality, mappings = [], []
    for run in sorted(runs, key=lambda r: r.budget_ms or 0):
        arch = trial_architecture(ctx.db, study, run.trial_number, run.budget_ms)
        extracted = ctx.supernet.extract(arch, ctx.teacher.encoder.embeddings).eval()
        distilled = load_student(Path(run.student_path)).eval()
        report = json.loads(run.report_json)
        for label, model, final in (("extracted (before)", extracted, report["before"].get("final")),
                                    ("distilled (after)", distilled, report["after"].get("final"))):
            m = evaluate_encoder(model, ctx.teacher.tokenizer, ctx.teacher, cfg, args.task, device, teacher_result=base)
            quality.append([f"{run.budget_ms:g}", arch.hash()[:8], label, f"{arch.params():,}", f"{final:.4f}",
                            f"{m['fidelity']:.3f}", f"{m['accuracy']:.3f}", f"{m['accuracy_ratio']:.3f}",
                            f"{m['label_loyalty']:.3f}", f"{m['probability_loyalty']:.3f}"])
        with ctx.db.session() as s:
            evals = {r.mapping_json: (r.fitness, r.origin) for r in s.scalars(
                select(MappingEval).where(MappingEval.study == study.name, MappingEval.arch_hash == arch.hash()))}
        best_key = min(evals, key=lambda k: evals[k][0])
        for origin in ("uniform", "last"):
            key = next((k for k, v in evals.items() if v[1] == origin), None)
            if key is not None:
                mappings.append([f"{run.budget_ms:g}", origin, key, f"{evals[key][0]:.5f}", ""])
        gain = (evals[next(k for k, v in evals.items() if v[1] == "uniform")][0] - evals[best_key][0])
        mappings.append([f"{run.budget_ms:g}", f"best of {len(evals)} evaluated", best_key, f"{evals[best_key][0]:.5f}",
                         f"{100 * gain / evals[best_key][0]:+.2f}% vs uniform"])
    print(f"teacher {study.cfg.teacher}: accuracy {base['accuracy']:.3f} on {args.task}\n")
    print("1. students before and after distillation (same evaluation protocol and seed)")
    print(table(["budget ms", "student", "weights", "params", "held-out final MSE", "fidelity", "accuracy",
                 "acc / teacher", "label loyalty", "prob. loyalty"], quality))
    print("\n2. layer mappings: proxy-distillation fitness (held-out final-state MSE, lower is better)")
    print(table(["budget ms", "mapping", "teacher layers", "fitness", "note"], mappings))
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
