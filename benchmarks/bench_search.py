"""Search benchmark: trials per minute with memoised block scores vs end-to-end scoring cost,
and rank agreement (Kendall tau) between the approximate and the rescored loss.

    python benchmarks/bench_search.py --config studies/demo.yaml --budget-ms 12 --trials 150

Needs a trained supernet (`nas-bert train-supernet --config ...`). Runs the search into a copy
of the study database, so the study itself is untouched.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.search import finish_search, open_context, rescore, run_worker
from nas_bert.space import architecture as A
from nas_bert.study import load_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--budget-ms", type=float, required=True)
    ap.add_argument("--trials", type=int, default=150)
    ap.add_argument("--rescore-top", type=int, default=20, help="candidates rescored for the rank agreement")
    args = ap.parse_args()
    import torch

    study = load_study(args.config)
    src = Path(study.db_url.removeprefix("sqlite:///"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    shutil.copy(src, tmp / src.name)
    study = load_study(args.config, f"sqlite:///{tmp / src.name}",
                       {"search.rescore_top": args.rescore_top, "search.trials": args.trials})
    # a fresh search: drop the copy's search for this budget and every memoised block score
    import optuna

    from nas_bert.search import storage_for
    from nas_bert.search.storage import own_study_name

    try:  # this machine's search only: `optuna_study_name` may name another machine's, which this one never resumes
        optuna.delete_study(study_name=own_study_name(study, args.budget_ms), storage=storage_for(study))
    except KeyError:
        pass
    with sqlite3.connect(tmp / src.name) as con:
        con.execute("DELETE FROM nasbert_block_scores")
        con.execute("DELETE FROM nasbert_architectures")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    ctx = open_context(study)
    budget = args.budget_ms
    t0 = time.perf_counter()
    run_worker(study, budget, args.trials, 0, ctx, progress=True)
    search_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = finish_search(ctx, budget, search_s)
    rescore_total = time.perf_counter() - t1
    # the cost of scoring architectures end to end, timed on fresh random ones
    emb = ctx.teacher.embeddings_spec()
    costs = []
    for seed in range(5):
        arch = A.sample(study.space, emb, 10_000 + seed)
        t = time.perf_counter()
        rescore(ctx.scorer.supernet, arch, ctx.rescore_cache)
        costs.append(time.perf_counter() - t)
    per_trial = search_s / args.trials
    e2e = statistics.median(costs)
    rows = [
        ["trials", str(args.trials)],
        ["block scores computed (rest memoised)", f"{ctx.scorer.computed} of {args.trials * study.space.blocks}"],
        ["search wall time", f"{search_s:.1f} s"],
        ["trials per minute", f"{60 / per_trial:.1f}"],
        ["seconds per trial", f"{per_trial:.3f}"],
        [f"end-to-end scoring of one architecture ({study.cfg.search.rescore_batches} batches)", f"{e2e:.3f} s"],
        ["end-to-end cost / trial cost", f"{e2e / per_trial:.1f}x"],
        ["rescoring of the top candidates", f"{summary.rescored} in {rescore_total:.1f} s"],
        ["Kendall tau (approx vs rescored)", "n/a" if summary.kendall_tau is None else f"{summary.kendall_tau:.2f}"],
        ["feasible trials / front size", f"{summary.feasible} / {len(summary.front)}"],
    ]
    print(table(["search benchmark", f"budget {budget:g} ms"], rows))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
