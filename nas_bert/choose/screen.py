"""Stage 5's screen (`search.screen_steps`): a few distillation steps for more of the search's students than the
finalists' rounds can afford. A zero-step proxy sees where a student starts, not how fast it recovers: at the
quality study's 1/4 budget the zero-step gain ranked the finalists' first round at Kendall tau 0.67, while 20
steps of distillation on other batches ranked it at 0.96 (BENCHMARKS.md, "What the proxy misses at 1/4"). Those
steps are the first of the first round's own schedule (its warm-up and learning rates), not a whole schedule
squeezed into them: squeezed, the learning rate decays to zero by step 20 and a student that recovers by moving far
(a pruned feed-forward) is ranked below where its first round puts it (at the quality study's 1/8 budget tau 0.47
squeezed, 0.73 as the first round's first steps; BENCHMARKS.md). The screen's best go on as the top searched
finalists, the next in reserve; every finalist is screened, so the summary says how well the screen ranked the first
round. Each result is a row (`ScreenRow`), whatever budget asked for it: a killed choice continues, and a student
screened for one budget is not screened again for another.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tqdm.auto import tqdm

from nas_bert.choose.candidates import Candidate
from nas_bert.store import Database, ScreenRow, json_hash
from nas_bert.study import Study

# the screen's batches: a seed offset no round draws (a round draws distill.seed + the steps it continues from)
SCREEN_SEED = 1_000_003
KEEP = ("fidelity", "fidelity_bootstrap", "best_step", "seconds")


def screen_protocol(protocol: str, steps: int) -> str:
    """What a screen result depends on: the finalists' protocol (`finalists.protocol_hash`, with the first round's
    steps, whose schedule the screen trains the first `steps` of), its steps and seed."""
    return json_hash({"finalists": protocol, "screen_steps": steps, "seed": SCREEN_SEED, "schedule": "first-round"})


def screen(db: Database, study: Study, cands: Sequence[Candidate], protocol: str,
           distil: Callable[[Candidate], dict[str, Any]], progress: bool = True) -> dict[str, float]:
    """Name -> held-out fidelity after the screen, for each of `cands`: its stored row, else `distil(c)` (the
    finalists' short distillation with the screen's steps and seed), stored. A NaN fidelity ranks last."""
    proto = screen_protocol(protocol, study.cfg.search.screen_steps)
    out: dict[str, float] = {}
    todo = []
    for c in cands:
        if (m := _stored(db, study, c, proto)) is not None:
            out[c.name] = m["fidelity"]
        else:
            todo.append(c)
    for c in tqdm(todo, desc=f"screen ({study.cfg.search.screen_steps} steps)", disable=not progress):
        m = {k: v for k, v in distil(c).items() if k in KEEP}
        _store(db, study, c, proto, m)
        out[c.name] = m["fidelity"]
    return {n: v if v is not None and math.isfinite(v) else math.nan for n, v in out.items()}


def screened_pool(cands: Sequence[Candidate]) -> list[Candidate]:
    """The searched students the screen ranks: those the search's proxy or the rescored loss put forward (not the
    seeds, which stand as they are, nor hand-designed points)."""
    return [c for c in cands if c.origin == "search" and c.proxies.get("pool") and not c.proxies.get("seed")]


def rank_by_screen(cands: Sequence[Candidate], scores: dict[str, float], top: int) -> list[Candidate]:
    """`cands` with the screened pool ranked by the screen: its best `top` the top searched finalists (`approx_rank`
    0 .. top - 1, what the reserves and replacements key on), the next `top` in reserve, the rest left out; each
    keeps the search's own rank as `search_rank` and its screen as `screen_fidelity`. Ties keep the search's order."""
    pool = screened_pool(cands)
    order = sorted(pool, key=lambda c: -v if math.isfinite(v := scores[c.name]) else math.inf)  # stable: ties keep
    # the search's order
    ranked = {}
    for i, c in enumerate(order[: 2 * top]):
        proxies = {k: v for k, v in c.proxies.items() if k != "reserve"}
        proxies |= {"search_rank": c.proxies.get("approx_rank"), "approx_rank": i,
                    "screen_fidelity": scores[c.name], **({"reserve": True} if i >= top else {})}
        ranked[c.name] = Candidate(c.name, c.origin, c.arch, c.trial, proxies)
    names = {c.name for c in pool}
    return [ranked.get(c.name, c) for c in cands if c.name not in names or c.name in ranked]


def _stored(db: Database, study: Study, c: Candidate, proto: str) -> dict[str, Any] | None:
    with db.session() as s:
        row = s.scalars(select(ScreenRow).where(ScreenRow.study == study.name, ScreenRow.arch_hash == c.arch.hash(),
                                                ScreenRow.origin == c.origin, ScreenRow.protocol_hash == proto)).first()
        return json.loads(row.metrics_json) if row is not None else None


def _store(db: Database, study: Study, c: Candidate, proto: str, metrics: dict[str, Any]) -> None:
    try:
        with db.session() as s:
            s.add(ScreenRow(study=study.name, arch_hash=c.arch.hash(), origin=c.origin, protocol_hash=proto,
                            metrics_json=json.dumps(metrics)))
    except IntegrityError:  # another process screened it first (two searches sharing one database): theirs stands
        pass
