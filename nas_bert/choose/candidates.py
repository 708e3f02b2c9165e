"""Who may be a budget's finalist: the searched students the cheap proxies like best, and the hand-designed
students (the teacher's first layers, the teacher narrowed or with its feed-forward pruned) worth timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import select

from nas_bert.distill import StudentContext
from nas_bert.errors import NasBertError
from nas_bert.search import fits_within, latency_error, optuna_study_name, recipe_hashes, storage_for
from nas_bert.space import Architecture, families, neighbours
from nas_bert.store import ArchitectureRow, Database
from nas_bert.study import Study
from nas_bert.supernet import pruned_architecture, truncated_architecture, uniform_architecture

ORIGINS = ("search", "truncated", "uniform", "pruned", "spread", "spread-pruned", "minitron")


@dataclass
class Candidate:
    """A student that may become the budget's: where it comes from, and what the cheap proxies said."""

    name: str
    origin: str  # one of ORIGINS
    arch: Architecture
    trial: int | None = None
    proxies: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "trial": self.trial, "hash": self.arch.hash(),
                "architecture": str(self.arch), "arch_json": self.arch.canonical_json(), "params": self.arch.params(),
                **self.proxies}


def search_candidates(db: Database, study: Study, budget_ms: float, pool: int = 0) -> list[Candidate]:
    """The searched students the proxies like best: the top `rescore_top` distinct feasible ones by approximate
    loss, the same by rescored loss, and the seed students (the fastest, the teacher's first layers); and as
    many again by approximate loss in reserve (proxy "reserve"), timed with them, each to take the place of
    one of the top that is measured over the budget (the ones the latency model under-predicted).

    With `pool` (search.screen_pool, for the screen) the best `pool` by approximate loss (at least as many as
    above), tagged "pool" with those by rescored loss, and the seeds tagged "seed": `screen.rank_by_screen` then
    decides which are the top and which the reserves."""
    st = optuna.load_study(study_name=optuna_study_name(study, budget_ms), storage=storage_for(study))
    feasible = [t for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values[1] <= budget_ms]
    first: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(feasible, key=lambda t: t.number):
        first.setdefault(t.user_attrs["arch_hash"], t)
    with db.session() as s:
        rows = {r.hash: r for r in s.scalars(select(ArchitectureRow).where(
            ArchitectureRow.study == study.name, ArchitectureRow.hash.in_(list(first))))}
    top = study.cfg.search.rescore_top
    # in a space made from the teacher its hand-designed points are finalists as their families: the search
    # contributes the best of the rest
    recipes = recipe_hashes(study, Architecture.from_json(next(iter(rows.values())).arch_json).embeddings) \
        if rows else set()
    own = [h for h in first if h not in recipes]
    by_approx = sorted(own, key=lambda h: rows[h].approx_loss)[:max(2 * top, pool)]
    rescored = [h for h in own if rows[h].rescored_loss is not None]
    by_rescored = sorted(rescored, key=lambda h: rows[h].rescored_loss)[:top]
    # in a space made from the teacher the seeds are its hand-designed points, judged by their families: only the
    # fastest is a seed finalist (the others are finalists where the proxies rank them among the best)
    family_seeds = study.space.layer_slots
    seeds = [h for h, t in first.items() if "seed" in t.user_attrs
             and (not family_seeds or t.user_attrs["seed"] == "fastest")]
    core = {*seeds, *by_approx[:top], *by_rescored}
    out = []
    for h in dict.fromkeys([*seeds, *by_approx, *by_rescored]):
        t, r = first[h], rows[h]
        name = t.user_attrs.get("seed") or f"trial-{t.number}"
        proxies = {"predicted_ms": r.predicted_ms, "approx_loss": r.approx_loss, "rescored_loss": r.rescored_loss}
        if h in by_approx:
            proxies["approx_rank"] = by_approx.index(h)
        if h not in core:
            proxies["reserve"] = True
        if pool:
            proxies |= {"seed": True} if h in seeds else {"pool": True}
        out.append(Candidate(name, "search", Architecture.from_json(r.arch_json), t.number, proxies))
    return out


def shrunk_reserves(cands: list[Candidate], space: Any, latency: Any, top: int, taken: set[str] = frozenset(),
                    levels: int = 1) -> list[Candidate]:
    """Per searched student among the top `top` by approximate loss, a chain of `levels` smaller points in
    reserve, each one step from the last (`space.neighbours`), named "<student>.<move>[.<move>...]": of the points
    one step from it that are no finalist already (`taken`: their hashes), the slowest predicted at least
    (2^k - 1) / 2 times the latency model's leave-one-out error e (3% at the least) below the student at level k
    (0.5e, 1.5e, 3.5e, ...) and, from the second level on, at least e, 2e, ... below the last, else the fastest of
    them (the nearest to that mark). A searched student grown to the
    budget's edge that is measured over the budget is then replaced by the largest of its chain that the budget
    holds, not by a student of another shape. The steps start small and double: a student a few per cent over
    keeps nearly all it had (the demo at fb97009: spread-3+layer1, judged 6% over its prediction, had one head fewer
    or 256 neurons fewer 2-3% below it at a zero-step fidelity of 0.694-0.697; a first step of a whole error, 3.5%,
    took its width to 320, 0.628), and a model 10-20% off still finds a point the budget holds."""
    return _chains(cands, space, latency, top, taken, levels, up=False)


def grown_reserves(cands: list[Candidate], space: Any, latency: Any, top: int, taken: set[str] = frozenset(),
                   levels: int = 1) -> list[Candidate]:
    """The mirror of `shrunk_reserves`: per searched student among the top `top`, a chain of `levels` larger points,
    each one step from the last, the fastest predicted at least 0.5e, 1.5e, ... above the student (and from the
    second level on at least e, 2e, ... above the last), else the slowest of them, none predicted more than
    2^levels x e above it; proxies "grown_of" and "grow_level". A latency model that over-predicts leaves a searched
    student measured well under its budget (the quality study at 8d40a5a: its 1/8 student judged 2.20 ms against
    2.63, predicted 2.57): timed beside it, the largest of its chain the budget holds with the model's error to
    spare takes its place (`replace_under_budget`)."""
    return _chains(cands, space, latency, top, taken, levels, up=True)


def grown_recipes(family: dict[str, Candidate], space: Any, latency: Any, budget_ms: float, taken: set[str] = frozenset(),
                  levels: int = 1, up: bool = True) -> list[Candidate]:
    """`grown_reserves` for the hand-designed points: of each family the slowest member the latency model predicts
    within the budget, a chain of `levels` larger points ("spread-2-i768.L0.neurons1024"), searched points that
    spend the latency the recipe leaves unused. Timed with the finalists; where one holds with the model's error to
    spare it is a searched finalist beside its recipe (`grown_beside`), so the search can beat a recipe with the
    recipe's own weights and a little more. `up` False: the chain of smaller points (`shrunk_reserves`' rule,
    "shrunk_of"), for a recipe judged at the budget's edge (`held_below`)."""
    best: dict[str, Candidate] = {}
    for c in family.values():
        p = c.proxies.get("predicted_ms")
        if p is not None and p <= budget_ms and (c.origin not in best or p > best[c.origin].proxies["predicted_ms"]):
            best[c.origin] = c
    picked = [Candidate(c.name, c.origin, c.arch, None, {"approx_rank": 0}) for c in best.values()]
    out = _chains(picked, space, latency, 1, taken, levels, up=up, origins=frozenset(best))
    for c in out:
        c.proxies.pop("approx_rank", None)
    return out


def held_below(finalists: list[Candidate], shrunk: list[Candidate], judged: dict[str, float], budget_ms: float,
               spare: float) -> list[Candidate]:
    """Per hand-designed finalist judged within the budget but not with `spare` (the latency model's error, a
    fraction) to spare, the largest of its shrunk chain (`grown_recipes(up=False)`) judged within the budget less
    `spare`: a searched finalist beside it. A recipe at the budget's edge may be over the budget when timed again at
    export (the quality study at f2e6f95: spread-3 judged 10.46 ms against 10.52 among the finalists, 10.85 at
    export); a step smaller keeps nearly all it had and holds."""
    edge = {c.name for c in finalists if c.origin != "search" and budget_ms * (1 - spare) < judged[c.name] <= budget_ms}
    out: dict[str, Candidate] = {}
    for c in sorted((c for c in shrunk if c.name in judged), key=lambda c: -judged[c.name]):
        of = c.proxies["shrunk_of"]
        if of in edge and of not in out and judged[c.name] <= budget_ms * (1 - spare):
            out[of] = Candidate(c.name, c.origin, c.arch, c.trial,
                                {**{k: v for k, v in c.proxies.items() if k != "reserve"}, "beside_recipe": of})
    return list(out.values())


def _chains(cands: list[Candidate], space: Any, latency: Any, top: int, taken: set[str], levels: int,
            up: bool, origins: frozenset[str] = frozenset({"search"})) -> list[Candidate]:
    err = max(latency_error(latency), 0.03)
    sign = 1 if up else -1
    of, level_key = ("grown_of", "grow_level") if up else ("shrunk_of", "shrink_level")
    taken, out = set(taken), []
    for c in cands:
        if c.origin not in origins or c.proxies.get("reserve") or c.proxies.get("approx_rank", top) >= top:
            continue
        name, arch, predicted = c.name, c.arch, latency.predict(c.arch)
        start = predicted
        for level in range(1, levels + 1):
            # the points one step from the last: smaller than it, or larger and within 2^levels x e of the student
            fits = fits_within(latency, start * (1 + err * 2**levels) if up else predicted)
            moves = {m: (ms, a) for m, a in neighbours(space, arch, fits).items()
                     if sign * ((ms := latency.predict(a)) - predicted) > 0 and a.hash() not in taken}
            if not moves:
                break
            mark = start * (1 + sign * err * (2**level - 1) / 2)
            if level > 1:  # and from the second on, at least e, 2e, ... from the last, however far it went
                last = predicted * (1 + sign * err * 2 ** (level - 2))
                mark = max(mark, last) if up else min(mark, last)
            clear = {m: v for m, v in moves.items() if sign * (v[0] - mark) >= 0}
            nearest = (min if up else max)  # of those past the mark, the one nearest it; else the farthest step
            move, (predicted, arch) = (nearest(clear.items(), key=lambda kv: (kv[1][0], kv[0])) if clear else
                                       (max if up else min)(moves.items(), key=lambda kv: (kv[1][0], kv[0])))
            name = f"{name}.{move}"
            taken.add(arch.hash())
            out.append(Candidate(name, "search", arch, None,
                                 {"predicted_ms": predicted, "approx_rank": c.proxies["approx_rank"], "reserve": True,
                                  of: c.name, level_key: level}))
    return out


def baseline_family(ctx: StudentContext) -> dict[str, Candidate]:
    """The hand-designed students: the teacher's first k layers; the teacher's depth at smaller widths
    (every `finalist_width_step` heads), its units ranked by importance; and the teacher's first k layers
    with their feed-forward pruned to each smaller ratio of the search space (its most important neurons)."""
    t = ctx.teacher
    if ctx.study.space.layer_slots:  # a space made from the teacher names its hand-designed points
        return {name: Candidate(name, kind, arch) for name, (kind, arch) in
                families(ctx.study.space, t.embeddings_spec()).items()}
    hs = t.hidden_size // int(t.config.num_attention_heads)
    step = hs * ctx.study.cfg.search.finalist_width_step
    out = {f"truncated-{k}": Candidate(f"truncated-{k}", "truncated", truncated_architecture(t, k))
           for k in range(1, t.num_layers)}
    out |= {f"uniform-{w}": Candidate(f"uniform-{w}", "uniform", uniform_architecture(t, w))
            for w in range(step, t.hidden_size, step)}
    full = int(t.config.intermediate_size)
    ratios = sorted(ctx.study.space.ffn_ratios)
    for inner in (full * r // ratios[-1] for r in ratios[:-1]):
        out |= {f"pruned-{k}-i{inner}": Candidate(f"pruned-{k}-i{inner}", "pruned", pruned_architecture(t, k, inner))
                for k in range(1, t.num_layers + 1)}
    return out


def family_to_time(family: dict[str, Candidate], predict: Any, budget_ms: float, keep: int = 3,
                   reach: float = 1.0) -> dict[str, Candidate]:
    """The hand-designed students worth timing for a budget: of each family the `keep` slowest that the latency
    model predicts within the budget, and the fastest it predicts over it but within `reach` x the budget (`holds`
    lets it stand where it measures within the budget less the model's error, as far as a searched student's grown
    point may reach: 1 + 2^search.reserve_grows x that error), any member it cannot predict (made of modules outside
    the space's table), and of the truncated teachers every one within the budget and the first over it (the
    untouched reference beside the budget's student is the one of the nearest measured latency, which these
    bracket). Only each family's slowest member that the budget holds becomes a finalist: the rest need no timing
    run (the demo at 63faf7e timed 34 students per budget, 12-15 of them members predicted over the budget)."""
    out: dict[str, Candidate] = {}
    for origin in dict.fromkeys(c.origin for c in family.values()):
        members = {n: c for n, c in family.items() if c.origin == origin}
        for c in members.values():  # kept in its finalist row: export sets it beside the measured time
            try:
                c.proxies["predicted_ms"] = predict(c.arch)
            except NasBertError:
                c.proxies["predicted_ms"] = None
        pred = {n: c.proxies["predicted_ms"] for n, c in members.items()}
        within = sorted((n for n, v in pred.items() if v is not None and v <= budget_ms), key=lambda n: pred[n])
        over = sorted((n for n, v in pred.items() if v is not None and v > budget_ms), key=lambda n: pred[n])
        keepers = {n for n, v in pred.items() if v is None} | set(within[-keep:] if keep else [])
        keepers |= {n for n in over[:1] if pred[n] <= reach * budget_ms or origin == "truncated"}
        if origin == "truncated":  # every one the budget may hold
            keepers |= set(within)
        out |= {n: c for n, c in members.items() if n in keepers}
    return out
