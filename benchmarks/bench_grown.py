"""Do the search's grown points beat the recipes they grow from? Each family's slowest member within a budget,
and that member grown by one teacher layer in the latency it leaves, distilled alike.

    python benchmarks/bench_grown.py --config studies/demo.yaml --budget 10 --steps 24

For the budget, every family's slowest member the latency model predicts within it (the recipes a user gets
for free) and each of those grown by one layer (`space.families.grown`: a dropped teacher layer kept with the
most heads and neurons that fit, the search's first step away from the recipes), plus --random random
points of the space within the budget, each given the same short distillation as the finalists
(`choose.finalists.short_distill`, --steps). Prints per point its predicted ms, zero-step fidelity (the
search's proxy), fidelity after the distillation with its interval, and the Kendall tau of the proxy against
the distilled fidelity; then per recipe the best of its grown points against it. The study's supernet and
latency stages must have run (`nas-bert run` or `nas-bert latency`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.choose.candidates import Candidate
from nas_bert.choose.finalists import short_distill
from nas_bert.distill import StudentContext
from nas_bert.latency import ensure_latency_model
from nas_bert.space import FAMILIES, families, grown, sample
from nas_bert.study import load_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--budget", type=float, default=10.0, help="latency budget in ms")
    ap.add_argument("--steps", type=int, default=24, help="distillation steps per point (the finalists' rounds)")
    ap.add_argument("--random", type=int, default=3, help="random points within the budget, for the proxy's tau")
    ap.add_argument("--families", default=",".join(FAMILIES), help="families whose slowest member is grown")
    args = ap.parse_args()
    study = load_study(args.config)
    if not study.space.layer_slots:
        sys.exit(f"study {args.config} searches '{study.space.name}', not a space made from the teacher")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    ctx = StudentContext.open(study)
    emb = ctx.teacher.embeddings_spec()
    lat = ensure_latency_model(ctx.db, study.space, emb, study.cfg.latency, progress=False)

    def fits(arch):
        ms = lat.predict(arch)
        return ms if ms <= args.budget else None

    points = families(study.space, emb)
    todo: list[tuple[str, str, object]] = []  # (name, kind, arch)
    recipes: dict[str, str] = {}
    for kind in args.families.split(","):
        members = [(fits(a), n) for n, (k, a) in points.items() if k == kind and fits(a) is not None]
        if not members:
            continue
        _, name = max(members)
        recipes[name] = kind
        todo.append((name, kind, points[name][1]))
        todo += [(f"{name}+layer{b}", "grown", a) for b, a in grown(study.space, points[name][1], fits).items()]
    rng, drawn = random.Random(11), 0
    while drawn < args.random:
        arch = sample(study.space, emb, rng)
        if fits(arch) is not None and arch.depth > 0:
            todo.append((f"random-{drawn}", "random", arch))
            drawn += 1
    rows, got = [], {}
    t0 = time.perf_counter()
    for name, kind, arch in todo:
        r = short_distill(ctx, Candidate(name, "search", arch), args.steps)
        got[name] = r
        lo, hi = r["fidelity_interval"]
        rows.append([name, kind, f"{lat.predict(arch):.2f}", f"{r['fidelity_before']:.3f}", f"{r['fidelity']:.3f}",
                     f"{lo:.3f}-{hi:.3f}"])
        print(f"  {name}: {r['fidelity']:.3f} ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    print(table(["point", "kind", "pred ms", "zero-step fid.", f"fid. after {args.steps} steps", "interval"], rows))
    tau = kendalltau([got[n]["fidelity_before"] for n, _, _ in todo], [got[n]["fidelity"] for n, _, _ in todo])[0]
    print(f"\nKendall tau, zero-step fidelity (the proxy) vs fidelity after {args.steps} steps: {tau:.2f} "
          f"over {len(todo)} points")
    summary = []
    for name, kind in recipes.items():
        kids = [n for n, k, _ in todo if k == "grown" and n.startswith(name + "+")]
        if not kids:
            summary.append([kind, name, f"{got[name]['fidelity']:.3f}", "-", "-", "nothing fits"])
            continue
        best = max(kids, key=lambda n: got[n]["fidelity"])
        by_proxy = max(kids, key=lambda n: got[n]["fidelity_before"])
        gain = got[best]["fidelity"] - got[name]["fidelity"]
        beyond = got[best]["fidelity_interval"][0] > got[name]["fidelity_interval"][1]
        summary.append([kind, name, f"{got[name]['fidelity']:.3f}", best, f"{gain:+.3f}{' (beyond)' if beyond else ''}",
                        f"{by_proxy} ({got[by_proxy]['fidelity'] - got[name]['fidelity']:+.3f})"])
    print()
    print(table(["family", "recipe", "fidelity", "best grown", "gain", "the proxy's pick (gain)"], summary))
    print(f"\n{len(todo)} points x {args.steps} steps in {time.perf_counter() - t0:.0f} s; budget {args.budget:g} ms "
          f"(predicted by the study's latency model); fidelity on the distillation's held-out glosses, 90% "
          f"bootstrap interval over texts")


if __name__ == "__main__":
    main()
