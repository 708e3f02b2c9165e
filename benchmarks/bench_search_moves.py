"""The search's proxy quality reached per CPU minute: as configured, with progressive shrinking, with local moves.

    python benchmarks/bench_search_moves.py --config studies/demo.yaml --budget 5 --trials 150 --seeds 2 \
        --arms off,shrink,local

For one budget, the study's search run twice per sampler seed from the same seeds (the recipes and their grown
points go first, as in `nas-bert run`) on the same teacher, proxy and latency model: once as configured without
shrinking ("off"), once with `search.shrink_every` / `shrink_min_uses` (--every, --min-uses; "shrink"), once with
`search.local_moves` ("local": a climb from the best feasible point by one-step moves once the queue is empty). Each run's trials live in
an in-memory Optuna study; its proxy evaluations (the extracted student's zero-step fidelity) are the cost, so
the table gives, at every --report trials, the process CPU minutes spent and the best feasible proxy loss
(1 - fidelity; lower is better), the mean of the 5 best, and the feasible front's size. Then the options the
shrinking dropped. Runs the study's supernet and latency stages first where they have not run (in the study's
database, or --db).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.search.context import open_context
from nas_bert.search.loop import local_search, make_objective, make_sampler, seed_architectures
from nas_bert.search.shrinking import ShrinkingSampler, describe, feasible
from nas_bert.search.trial_space import trial_params
from nas_bert.study import load_study
from nas_bert.supernet import train_supernet


def run(ctx, budget: float, trials: int, cfg, tag: str, seeds: dict) -> list[dict]:
    """One search in memory; per trial the CPU seconds so far and the feasible trials' proxy losses."""
    sampler = make_sampler(cfg, 0)
    st = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for name, arch in seeds.items():
        st.enqueue_trial(trial_params(arch, ctx.study.space), user_attrs={"seed": name}, skip_if_exists=True)
    log: list[dict] = []
    t0 = time.process_time()

    def note(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        done = [x for x in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if feasible(x)]
        losses = sorted(x.values[0] for x in done)
        log.append({"n": len(s.trials), "cpu": time.process_time() - t0, "best": losses[0] if losses else None,
                    "best5": statistics.mean(losses[:5]) if losses else None,
                    "front": len(s.best_trials)})

    objective = make_objective(ctx, budget, trials, f"bench-shrink-{tag}")
    moves = [local_search(ctx, budget)] if cfg.local_moves else []
    st.optimize(objective, n_trials=trials, callbacks=[*moves, note], gc_after_trial=False)
    dropped = sampler.dropped(st) if isinstance(sampler, ShrinkingSampler) else {}
    log[-1]["dropped"] = dropped
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--db", default=None, help="the study database (default: the study's)")
    ap.add_argument("--budget", type=float, default=5.0)
    ap.add_argument("--trials", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=2, help="sampler seeds per arm")
    ap.add_argument("--every", type=int, default=30, help="shrink_every of the shrinking arm")
    ap.add_argument("--min-uses", type=int, default=4, help="shrink_min_uses of the shrinking arm")
    ap.add_argument("--report", type=int, default=30, help="a table row every this many trials")
    ap.add_argument("--arms", default="off,shrink", help="off, shrink, local (comma-separated)")
    args = ap.parse_args()
    study = load_study(args.config, args.db)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    train_supernet(study)  # resumable: nothing to do where it has run
    ctx = open_context(study, progress=False)
    seeds = seed_architectures(ctx, args.budget)
    arms = args.arms.split(",")
    logs: dict[tuple[str, int], list[dict]] = {}
    for seed in range(args.seeds):
        for arm in arms:
            cfg = study.cfg.search.model_copy(update={"seed": seed, "shrink_every": args.every if arm == "shrink" else 0,
                                                      "shrink_min_uses": args.min_uses, "local_moves": arm == "local"})
            logs[(arm, seed)] = run(ctx, args.budget, args.trials, cfg, f"{arm}-{seed}", seeds)
            print(f"  {arm} seed {seed}: {args.trials} trials, {logs[(arm, seed)][-1]['cpu'] / 60:.1f} CPU min",
                  file=sys.stderr)
    print(f"{args.budget:g} ms budget, {len(seeds)} seed points first, {args.trials} trials per search; shrink: every "
          f"{args.every} trials, options tried {args.min_uses}+ times never on the front; local: one-step moves\n")
    rows = []
    for n in range(args.report, args.trials + 1, args.report):
        row = [str(n)]
        for arm in arms:
            at = [logs[(arm, s)][n - 1] for s in range(args.seeds)]
            row += [f"{statistics.mean(a['cpu'] for a in at) / 60:.2f}",
                    f"{statistics.mean(a['best'] for a in at):.4f}",
                    f"{statistics.mean(a['best5'] for a in at):.4f}",
                    f"{statistics.mean(a['front'] for a in at):.1f}"]
        rows.append(row)
    head = ["trials"] + [f"{arm}: {c}" for arm in arms for c in ("CPU min", "best", "best 5", "front")]
    print(table(head, rows))
    print(f"\n(means over {args.seeds} sampler seeds; best = lowest feasible proxy loss, 1 - zero-step fidelity)")
    for s in range(args.seeds):
        if "shrink" in arms:
            dropped = logs[("shrink", s)][-1]["dropped"]
            print(f"seed {s}: shrinking dropped {sum(map(len, dropped.values()))} options: {describe(dropped) or 'none'}")


if __name__ == "__main__":
    main()
