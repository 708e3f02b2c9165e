"""The screen (search.screen_steps): a few distillation steps on other batches rank more of the search's students
than the rounds can afford; its best are the top searched finalists, every finalist is screened so the summary
ranks the screen against the first round, and a killed or repeated choice screens nothing twice."""

from __future__ import annotations

import json
from itertools import pairwise

from conftest import copy_study
from sqlalchemy import select

from nas_bert.choose import Candidate, choose
from nas_bert.choose import finalists as F
from nas_bert.choose.screen import SCREEN_SEED, rank_by_screen
from nas_bert.space import architecture as A
from nas_bert.store import Database, FinalistRow, ScreenRow
from nas_bert.study import load_study


def _cand(name: str, origin: str = "search", **proxies) -> Candidate:
    return Candidate(name, origin, A.Architecture(A.Embeddings(8, 4, 2, 16), ()), None, proxies)


def test_the_screen_ranks_the_pool_and_leaves_seeds_and_recipes_as_they_are() -> None:
    pool = [_cand(f"trial-{i}", approx_rank=i, pool=True, **({"reserve": True} if i >= 2 else {})) for i in range(6)]
    seed, recipe = _cand("fastest", seed=True), _cand("spread-2", "spread")
    scores = {c.name: v for c, v in zip(pool, [0.1, 0.5, float("nan"), 0.9, 0.3, 0.7], strict=True)}
    out = {c.name: c for c in rank_by_screen([seed, *pool, recipe], scores, top=2)}
    assert set(out) == {"fastest", "spread-2", "trial-3", "trial-5", "trial-1", "trial-4"}  # two NaN/worst left out
    assert [out[n].proxies["approx_rank"] for n in ("trial-3", "trial-5", "trial-1", "trial-4")] == [0, 1, 2, 3]
    assert not out["trial-3"].proxies.get("reserve") and not out["trial-5"].proxies.get("reserve")
    assert out["trial-1"].proxies["reserve"] and out["trial-4"].proxies["reserve"]
    assert out["trial-3"].proxies["search_rank"] == 3 and out["trial-3"].proxies["screen_fidelity"] == 0.9
    assert out["fastest"].proxies == {"seed": True} and out["spread-2"].proxies == {}


def test_the_screen_picks_the_top_searched_finalists_and_is_not_run_twice(searched_tiny, tmp_path, monkeypatch):
    study = load_study(copy_study(searched_tiny, tmp_path), overrides={
        "search.screen_steps": 2, "search.screen_pool": 6, "search.finalist_steps": 4, "distill.val_batches": 2,
        "latency.fresh_process": False})
    runs: list[tuple[str, int]] = []
    spans: set[tuple[int, int, int]] = set()  # the screen's (schedule length, warm-up, steps trained)
    real = F.train_loop

    def spy(*, cfg, desc, **kw):
        runs.append((desc.removeprefix("finalist "), cfg.seed))
        if cfg.seed == study.cfg.distill.seed + SCREEN_SEED:
            spans.add((kw["total_steps"], cfg.warmup_steps, kw["stop_after"]))
        return real(cfg=cfg, desc=desc, **kw)

    monkeypatch.setattr(F, "train_loop", spy)
    fin = choose(study, 5.0, progress=False)
    seed = study.cfg.distill.seed
    screened = {n for n, s in runs if s == seed + SCREEN_SEED}
    with Database(study.db_url).session() as s:
        rows = s.scalars(select(ScreenRow).where(ScreenRow.study == study.name)).all()
    assert len(rows) == len(screened) and all("fidelity" in json.loads(r.metrics_json) for r in rows)
    held = [f for f in fin.finalists if not f.over_budget]
    assert {f.name for f in held} <= screened  # every finalist the budget holds was screened, once
    assert all(f.screen_fidelity is not None for f in held)
    # the top searched finalists are the screen's best: their rank is its order, the search's rank kept beside it
    ranked = sorted((f for f in held if f.origin == "search" and not getattr(f, "seed", False)
                     and not getattr(f, "shrunk_of", None) and not getattr(f, "grown_of", None)),
                    key=lambda f: f.approx_rank)
    assert ranked and all(a.screen_fidelity >= b.screen_fidelity for a, b in pairwise(ranked))
    assert "screen_fidelity" in fin.kendall_tau_vs_fidelity
    # the screen trains the first 2 steps of the first round's schedule (its length and warm-up), not a squeezed one
    steps = study.cfg.search.finalist_steps
    assert spans == {(steps, max(1, steps // 10), 2)} and steps > 2
    # the first round is the finalists' own seed: the screen shares no batch with it
    assert {s for n, s in runs if n in {f.name for f in held} and s != seed + SCREEN_SEED} == {seed}
    runs.clear()
    again = choose(study, 5.0, progress=False)  # stored: nothing is screened or distilled again
    assert runs == [] and again.chosen.name == fin.chosen.name
    # a student's screen changed since its finalist row was stored (a screen made anew): the choice reports this
    # run's screen, not the copy the row kept
    with Database(study.db_url).session() as s:
        for r in s.scalars(select(ScreenRow).where(ScreenRow.study == study.name)):
            r.metrics_json = json.dumps({**json.loads(r.metrics_json), "fidelity": 0.123})
        # and its row kept facts of the student as it stood then (a reserve, a search rank): this choice's stand
        for r in s.scalars(select(FinalistRow).where(FinalistRow.study == study.name)):
            r.metrics_json = json.dumps({**json.loads(r.metrics_json), "reserve": True, "search_rank": 999})
    third = choose(study, 5.0, progress=False)
    assert {f.screen_fidelity for f in third.finalists if not f.over_budget} == {0.123}
    assert third.replacements == again.replacements and third.chosen.name == fin.chosen.name
    assert all(getattr(f, "search_rank", None) != 999 for f in third.finalists)
