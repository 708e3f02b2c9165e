"""Which zero-step proxy ranks a study's finalists as their short distillations do?

    nas-bert run --config studies/quality.yaml          # or any study whose finalists were chosen
    python benchmarks/bench_proxy.py --config studies/quality.yaml --texts 256 --alphas 1,3,10

For every finalist the study's finalists' stage distilled (every budget), the extracted start (the supernet's
point, untrained) is scored on --texts held-out validation glosses two ways: the zero-step fidelity of its
pooled output to the teacher's (`search.proxy: fidelity`, the default in a space made from the teacher) and the
same after a cross-fitted linear readout (`search.proxy: readout`) at each ridge penalty --alphas, and the
readout's "gain" (`search.proxy: gain`, `readout_gain`): the fidelity of what
the student's mapped vectors add over the embeddings alone (both mapped at the first alpha) to what the
teacher's vectors hold beyond those, 0 for the embeddings alone, which a bag of embeddings' linear
decodability lets the readout overrate; with "readout + gain", their sum. The table gives, per budget, the
Kendall tau of each against the finalists' first-round fidelity (the distillation every finalist had), and per
finalist the scores. Nothing is trained: it reads the study database and the supernet.

With --distil-seeds 1,2 every finalist's first round is distilled again (the finalists' stage's own
`short_distill`, same steps, no fine-tuning) with each of those distillation seeds (the study's was
`distill.seed`): the table then adds how well one seed's first round ranks the finalists as another's does (the
target's own repeatability, a ceiling for any zero-step proxy against one seed) and each proxy's tau against the
mean over all seeds. With --few-steps 10,20 each finalist is also distilled that many steps (another seed's
batches, --few-steps-seed) and that fidelity ranked like a zero-step proxy: what a proxy that trains a little
would add.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from scipy.stats import kendalltau
from sqlalchemy import select
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.choose.candidates import Candidate
from nas_bert.choose.finalists import short_distill
from nas_bert.data.tasks import load_task
from nas_bert.distill import StudentContext
from nas_bert.evaluate import fidelity, readout_fidelity, readout_gain
from nas_bert.evaluate.vectors import sentence_vectors
from nas_bert.space import Architecture
from nas_bert.store import Database, FinalistRow
from nas_bert.study import load_study


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--texts", type=int, default=256, help="held-out validation glosses scored")
    p.add_argument("--alphas", default="1,3", help="ridge penalties of the readout (comma-separated)")
    p.add_argument("--few-steps", default="", help="also a proxy that distils each finalist these few steps "
                   "(comma-separated) and scores its fidelity, with --few-steps-seed")
    p.add_argument("--few-steps-schedule", choices=("first-round", "own"), default="first-round",
                   help="first-round: the first few steps of the first round's learning-rate schedule (the screen's, "
                        "search.screen_steps); own: a whole schedule of those few steps (the screen before 4d4f974)")
    p.add_argument("--few-steps-seed", type=int, default=1, help="its distillation seed (other batches than the "
                   "recorded first round's)")
    p.add_argument("--distil-seeds", default="", help="distil every finalist's first round again with these "
                   "seeds (comma-separated; the study's distill.seed is the recorded one)")
    args = p.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    study = load_study(args.config)
    ctx = StudentContext.open(study)
    t = ctx.teacher
    texts = list(load_task("wordnet", study.cfg.evaluate)[0]["validation"]["text"][:args.texts])
    cfg = study.cfg.evaluate

    def vectors(encoder: torch.nn.Module) -> torch.Tensor:
        return sentence_vectors(encoder, t.tokenizer, texts, cfg.batch_size, cfg.fidelity_max_seq_length, "cpu",
                                t.pooling)

    class EmbeddingsAlone(torch.nn.Module):  # the teacher's embedding output, pooled as the teacher pools
        def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(last_hidden_state=t.encoder.embeddings(input_ids=input_ids))

    teacher = vectors(t.encoder)
    with torch.no_grad():
        embeddings = vectors(EmbeddingsAlone())

    def gain(vecs: torch.Tensor) -> float:  # `search.proxy: gain`
        return readout_gain(vecs, embeddings, teacher, alphas[0])
    with Database(study.db_url).session() as s:
        rows = [(r.budget_ms, r.name, r.origin, r.arch_json, json.loads(r.metrics_json)) for r in s.scalars(
            select(FinalistRow).where(FinalistRow.study == study.name).order_by(FinalistRow.id))]
    keys = ["fidelity", *[f"readout {a:g}" for a in alphas], "gain", "readout + gain"]
    by_budget: dict[float, dict[str, dict]] = {}
    for budget, name, origin, arch_json, m in rows:
        first = (m.get("rounds") or [{}])[0].get("fidelity", m.get("fidelity"))
        if first is None:  # measured over the budget: never distilled
            continue
        arch = Architecture.from_json(arch_json)
        vecs = vectors(ctx.supernet.extract(arch, t.encoder.embeddings).eval())
        by_budget.setdefault(budget, {})[name] = {"origin": origin, "arch": arch, "first round": first,
                                                  "fidelity": fidelity(vecs, teacher),
                                                  **{f"readout {a:g}": readout_fidelity(vecs, teacher, a) for a in alphas},
                                                  "gain": gain(vecs)}
        scores = by_budget[budget][name]
        scores["readout + gain"] = scores[f"readout {alphas[0]:g}"] + scores["gain"]
    for k in (int(x) for x in args.few_steps.split(",") if x):  # a proxy that trains a little, on other batches
        key = f"{k} steps" + (" (own schedule)" if args.few_steps_schedule == "own" else "")
        distil(ctx, by_budget, k, args.few_steps_seed, key,
               study.cfg.search.finalist_steps if args.few_steps_schedule == "first-round" else None)
        keys.append(key)
    if seeds := [int(x) for x in args.distil_seeds.split(",") if x]:
        again(ctx, by_budget, seeds)
    print(f"# bench_proxy: study '{study.name}', {len(texts)} validation glosses, {cpu_name()}")
    def tau(d: dict[str, dict], x: str, y: str) -> str:  # Kendall tau of two scores over a budget's finalists
        return f"{kendalltau([v[x] for v in d.values()], [v[y] for v in d.values()]).statistic:.2f}"
    print(table(["budget ms", "finalists", *[f"tau {k}" for k in keys]], [
        [f"{b:g}", str(len(d)), *[tau(d, k, "first round") for k in keys]] for b, d in sorted(by_budget.items())]))
    print()
    print(table(["budget ms", "finalist", "origin", "first round", *keys], [
        [f"{b:g}", n, v["origin"], f"{v['first round']:.3f}", *[f"{v[k]:.3f}" for k in keys]]
        for b, d in sorted(by_budget.items()) for n, v in sorted(d.items(), key=lambda kv: -kv[1]["first round"])]))
    if seeds:
        print(f"\n# the first round ({study.cfg.search.finalist_steps} steps) distilled again with seeds "
              f"{args.distil_seeds} (recorded: seed {study.cfg.distill.seed})")
        print(table(["budget ms", "finalists", *[f"tau first round vs seed {k}" for k in seeds],
                     *[f"tau {k} vs seed mean" for k in keys]], [
            [f"{b:g}", str(len(d)), *[tau(d, "first round", f"seed {k}") for k in seeds],
             *[tau(d, k, "seed mean") for k in keys]] for b, d in sorted(by_budget.items())]))
        print(table(["budget ms", "finalist", "first round", *[f"seed {k}" for k in seeds], "seed mean"], [
            [f"{b:g}", n, f"{v['first round']:.3f}", *[f"{v[f'seed {k}']:.3f}" for k in seeds], f"{v['seed mean']:.3f}"]
            for b, d in sorted(by_budget.items()) for n, v in sorted(d.items(), key=lambda kv: -kv[1]["seed mean"])]))


def distil(ctx: StudentContext, by_budget: dict[float, dict[str, dict]], steps: int, seed: int, key: str,
           schedule_steps: int | None = None) -> None:
    """Each finalist distilled `steps` steps from its start with distillation seed `seed` (`short_distill`, as the
    finalists' stage does; no fine-tuning; with `schedule_steps`, the first `steps` of a schedule that long, as the
    screen does); its best held-out fidelity stored as `key` in its scores."""
    study = ctx.study
    recorded = study.cfg.distill
    try:
        study.cfg.distill = recorded.model_copy(update={"seed": seed})
        for budget, d in sorted(by_budget.items()):
            for name, v in tqdm(d.items(), desc=f"{budget:g} ms, {key}"):
                cand = Candidate(name=name, origin=v["origin"], arch=v["arch"])
                v[key] = short_distill(ctx, cand, steps, final=False, schedule_steps=schedule_steps)["fidelity"]
    finally:
        study.cfg.distill = recorded


def again(ctx: StudentContext, by_budget: dict[float, dict[str, dict]], seeds: list[int]) -> None:
    """Each finalist's first round distilled again with each seed; adds "seed K" and "seed mean" (over the recorded
    round and these) to its scores."""
    for seed in seeds:
        distil(ctx, by_budget, ctx.study.cfg.search.finalist_steps, seed, f"seed {seed}")
    for d in by_budget.values():
        for v in d.values():
            v["seed mean"] = (v["first round"] + sum(v[f"seed {k}"] for k in seeds)) / (1 + len(seeds))

if __name__ == "__main__":
    main()
