"""Does supernet training pay in the space made from the teacher? Every point's fidelity untrained and trained.

    python benchmarks/bench_refine.py --config studies/demo.yaml --steps 160

The space made from the teacher (`search_space: auto`) starts every point from the teacher's own weights,
importance-ordered, so a point is a copy of the teacher's most important units, and the hand-designed
students are exactly themselves. Block-wise supernet training (NAS-BERT's: block b learns the teacher's
state b -> b+1 through sampled paths) may refine the narrow and shallow points, or make them worse. This
benchmark builds the supernet untrained, trains a copy for --steps with the study's supernet settings (the
teacher's own full-width layers frozen), and scores the same points in both: every hand-designed point of
each family and --random random points, by the zero-step fidelity of the extracted student's pooled output to
the teacher's (the search's proxy) on held-out glosses. It prints one row per point and a summary per family
with the training's CPU time: the study's `supernet.steps` should be 0 unless training wins.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.data import load_corpus, make_collator
from nas_bert.search.scoring import fidelity_proxy
from nas_bert.space import families, sample
from nas_bert.study import load_study
from nas_bert.supernet import BlockwiseObjective, ValidationCache, build_supernet
from nas_bert.teacher import load_teacher
from nas_bert.train import make_accelerator, train_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--steps", type=int, default=160, help="supernet training steps for the trained copy")
    ap.add_argument("--random", type=int, default=12, help="random points scored besides the families")
    ap.add_argument("--val-batches", type=int, default=8)
    args = ap.parse_args()
    study = load_study(args.config)
    if not study.space.layer_slots:
        sys.exit(f"study {args.config} searches '{study.space.name}', not a space made from the teacher; "
                 "set search_space: auto")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    device = study.device()
    teacher = load_teacher(study.cfg.teacher, device)
    corpus = load_corpus(study.cfg.corpus, teacher.tokenizer)
    cfg = study.cfg.supernet
    untrained = build_supernet(study, teacher, cfg.seed, corpus).eval()
    trained = copy.deepcopy(untrained)
    collator = make_collator(teacher.tokenizer, study.cfg.corpus)
    val = ValidationCache.build(teacher, corpus["validation"], collator, cfg.val_batches, cfg.batch_size,
                                study.space.blocks, device)
    objective = BlockwiseObjective(teacher, study.space, cfg.sampling, cfg.seed, val, 0, cfg.sandwich_every)
    t0, c0 = time.perf_counter(), time.process_time()
    train_loop(model=trained, objective=objective, dataset=corpus["train"], collator=collator,
               cfg=cfg.model_copy(update={"steps": args.steps, "eval_every": args.steps}), total_steps=args.steps,
               ckpts=None, accelerator=make_accelerator(device), meta={}, desc="supernet (refine)")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    trained.eval()
    # held-out glosses the training never saw (another seed than the training's validation batches)
    held = ValidationCache.build(teacher, corpus["validation"], collator, args.val_batches, 32, study.space.blocks,
                                 device, seed=99)
    emb = teacher.embeddings_spec()
    points = {name: (kind, arch) for name, (kind, arch) in families(study.space, emb).items()}
    rng = random.Random(7)
    for i in range(args.random):
        points[f"random-{i}"] = ("random", sample(study.space, emb, rng))
    rows: list[list[str]] = []
    per: dict[str, list[float]] = {}
    for name, (kind, arch) in points.items():
        before = 1 - fidelity_proxy(untrained, arch, held, teacher)
        after = 1 - fidelity_proxy(trained, arch, held, teacher)
        per.setdefault(kind, []).append(after - before)
        rows.append([kind, name, f"{arch.params() / 1e6:.2f}M", f"{before:.3f}", f"{after:.3f}", f"{after - before:+.3f}"])
    print(table(["family", "point", "params", "fidelity untrained", f"after {args.steps} steps", "change"], rows))
    summary = [[k, str(len(v)), f"{statistics.mean(v):+.4f}", f"{min(v):+.3f}", f"{max(v):+.3f}",
                f"{sum(d > 0 for d in v)}/{len(v)}"] for k, v in per.items()]
    print()
    print(table(["family", "points", "mean change", "worst", "best", "improved"], summary))
    print(f"\ntraining: {args.steps} steps x {cfg.batch_size} sequences, {wall:.0f} s wall, {cpu / 60:.1f} CPU minutes; "
          f"fidelity on {args.val_batches} x 32 held-out glosses (Spearman of pairwise cosines, centred)")


if __name__ == "__main__":
    main()
