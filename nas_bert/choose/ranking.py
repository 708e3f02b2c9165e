"""How a budget's finalists are ranked and how far the ranking can be trusted: their records, successive
halving's cut, the choice, the margin against the best of the other kind (a paired bootstrap interval of the
difference) and the proxies' agreement. Pure: no training, no database (`finalists` runs and stores them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import ConfigDict

from nas_bert.choose.seeds import LEVEL as PAIRED_LEVEL  # the paired intervals' level: beyond noise or not
from nas_bert.choose.seeds import SeedInterval, seed_interval, weighted
from nas_bert.evaluate import paired_interval
from nas_bert.record import Record
from nas_bert.search import SearchResult, kendall_tau, proxy_of
from nas_bert.study import Study

# a finalist's zero-step figures, by the search.proxy each stands for (`zero_step_proxies`)
ZERO_STEP = {"fidelity": "fidelity_before", "readout": "readout_before", "gain": "gain_before"}
BEFORE_KEYS = tuple(ZERO_STEP.values())
# a finalist's figures from one short distillation (a round's), as the rows and the rounds keep them
SCORE_KEYS = (*BEFORE_KEYS, "fidelity", "fidelity_interval", "fidelity_bootstrap", "best_step", "seconds", "probe",
              "measured_as", "seed_figures")


def zero_step_proxy(study: Study) -> str:
    """The search's proxy as a key of `ZERO_STEP` (auto as it resolves; blocks, scored on block states, by the
    fidelity, the zero-step figure nearest it)."""
    return p if (p := proxy_of(study)) in ZERO_STEP else "fidelity"


# -- the result ---------------------------------------------------------------------------------------
class Finalist(Record):
    """One finalist of a budget: who it is (a `Candidate`), what the cheap proxies and the timing run said, and its
    short distillation's result. A key a finalist lacks stays absent (a hand-designed student has no approximate
    loss; one measured over the budget was never distilled); keys of an older nas-bert's rows are kept."""

    model_config = ConfigDict(extra="allow")
    absent_unless_given: ClassVar[frozenset[str]] = frozenset({
        "predicted_ms", "approx_loss", "rescored_loss", "approx_rank", "reserve", "predicted_now_ms", "judged_ms",
        *BEFORE_KEYS, "fidelity", "fidelity_interval", "fidelity_bootstrap", "best_step", "seconds",
        "scored_at_budget_ms", "rounds", "probe", "measured_as", "screen_fidelity", "search_rank", "slowest_ms",
        "seed_figures"})

    name: str
    origin: str  # one of ORIGINS
    trial: int | None
    hash: str
    architecture: str
    arch_json: str
    params: int
    predicted_ms: float | None = None  # the search's latency model (None: a module outside its table)
    approx_loss: float | None = None
    rescored_loss: float | None = None
    approx_rank: int | None = None  # among the searched: by approximate loss, or by the screen where one ran
    search_rank: int | None = None  # with a screen: the rank by approximate loss
    screen_fidelity: float | None = None  # the screen's held-out fidelity (search.screen_steps; NaN: too few texts)
    reserve: bool | None = None  # timed in reserve, in the place of one of the top measured over the budget
    predicted_now_ms: float | None = None  # the calibration refitted in the finalists' timing run
    measured_ms: float
    slowest_ms: float | None = None  # with latency.finalist_runs > 1: its slowest run (`slowest_run`), judged
    judged_ms: float | None = None  # the time the budget judges (`judged_ms`)
    fidelity_before: float | None = None
    readout_before: float | None = None  # the readout proxies at the start (`zero_step_proxies`)
    gain_before: float | None = None
    fidelity: float | None = None  # held-out fidelity after the short distillation (NaN: too few texts)
    fidelity_interval: list[float] | None = None
    # the fidelity on each bootstrap resample of the held-out texts, the same resamples for every finalist (paired)
    fidelity_bootstrap: list[float | None] | None = None
    best_step: int | None = None
    seconds: float | None = None
    scored_at_budget_ms: float | None = None  # distilled for another budget of the study, under the same protocol
    rounds: list[dict[str, Any]] | None = None  # successive halving: each round's steps and result (the last one's above)
    probe: dict[str, float] | None = None  # with search.choose_by task:NAME / finetune:NAME: that key -> its accuracy
    measured_as: str | None = None  # "evaluate": its last round measured as the export is (distill.steps, the
    # evaluation's fine-tuning: search.choose_protocol.last_round)
    # search.choose_protocol.last_round_seeds > 1: each run's fidelity and accuracies (the figures above: their mean)
    seed_figures: list[dict[str, Any]] | None = None
    over_budget: bool

    def first_fidelity(self) -> float | None:
        """The fidelity after the first round, which every finalist the budget holds reached."""
        return self.rounds[0].get("fidelity") if self.rounds else self.fidelity

    def judged_time(self) -> float:
        """The time the budget judged (`judged_ms`; the measured one for a row stored before it was kept)."""
        return self.judged_ms if self.judged_ms is not None else self.measured_ms


class Margin(Record):
    """How the budget's student compares with the best finalist of the other kind (a hand-designed point if a
    searched one won, else the best searched one), at the longest distillation both had."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"seeded"})

    rival: str
    rival_origin: str
    steps: int
    fidelity: float
    rival_fidelity: float
    delta: float  # fidelity - rival_fidelity
    # the paired bootstrap interval of delta over the held-out texts (both students on the same resamples), at
    # `level`; None for finalists scored before their resamples were kept
    delta_interval: list[float] | None = None
    level: float = PAIRED_LEVEL
    beyond_interval: bool  # the paired interval of delta excludes 0 (before: the rival lies outside ours)
    # search.choose_by's other criteria both have ("task:NAME" / "finetune:NAME" -> [chosen's, rival's])
    scores: dict[str, list[float]] | None = None
    # search.choose_by's weights where they are more than the fidelity, and [chosen's, rival's] weighted sum
    by: dict[str, float] | None = None
    by_score: list[float] | None = None
    # the last round run several times (search.choose_protocol.last_round_seeds) by both: the chosen minus the
    # rival on search.choose_by's score ("score") and on each of its terms, intervals holding the runs' spread
    seeded: dict[str, SeedInterval] | None = None


class FinalistsResult(Record):
    """Stage 5's result for one budget: the finalists ranked by fidelity, the student chosen and how far the
    ranking can be trusted."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"timing", "margin", "passed_over", "seeded",
                                                                 "kept_within_noise", "tied_with_recipe", "tie_at_edge"})

    study: str
    budget_ms: float
    finalists: list[Finalist]
    chosen: Finalist
    baseline_won: bool
    over_budget: bool  # nothing the budget holds when measured: the fastest searched student, flagged
    kendall_tau_vs_fidelity: dict[str, float | None]  # proxy -> tau with the fidelity ranking
    runner_up: str | None
    separated: bool  # the two best's intervals do not overlap
    margin: Margin | None = None  # the chosen against the best of the other kind (searched vs hand-designed)
    dropped_over_budget: list[str]
    replacements: list[str]
    timing: dict[str, Any] | None = None  # the timing run's record (drift, teacher_ms, refit_*); `choose` only
    # a mixed search.choose_by: searched finalists ranked above the chosen one that a hand-designed finalist of
    # their last round beat on fidelity beyond the paired interval (name -> that finalist)
    passed_over: dict[str, str] | None = None
    seeded: SeedInterval | None = None  # the last round run several times: the two best's difference, seeds and all
    # search.choose_protocol.round_seeds > 1: finalists kept past a cut's better half, within noise of the one at
    # the cut (name -> that finalist)
    kept_within_noise: dict[str, str] | None = None
    # search.choose_protocol.ties "recipe": searched finalists ranked first that did not beat the best hand-designed
    # finalist beyond noise on search.choose_by's score, passed over for it (name -> that finalist)
    tied_with_recipe: dict[str, str] | None = None
    # the same rule's tie left to the searched finalist: the recipe it tied is judged within the latency model's
    # error of the budget, so it may well be over the budget at export (name -> that recipe)
    tie_at_edge: dict[str, str] | None = None


class SearchReport(SearchResult):
    """`nas-bert search`'s result: the budget's search and its finalists' choice."""

    finalists: FinalistsResult


class TruncatedReference(Record):
    """The teacher's first `layers` layers, untouched, beside a budget's student: its measured time and fidelity."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"ood_fidelity", "ood_cosine"})

    name: str
    layers: int
    measured_ms: float
    fidelity: float | None
    cosine: float | None
    ood_fidelity: float | None = None  # absent without out-of-domain texts (`evaluate.ood_texts` 0)
    ood_cosine: float | None = None


def criterion(study: Study, final: bool = True) -> dict[str, float]:
    """`search.choose_by` as weights: "fidelity", "task:NAME" or "finetune:NAME" -> weight. Fine-tuning is scored
    in every round after the first only: `final` False leaves it out (the fidelity where nothing else is left)."""
    by = getattr(study.cfg.search, "choose_by", "fidelity")  # a stand-in study of a unit test may lack it
    weights = {by: 1.0} if isinstance(by, str) else dict(by)
    if not final:
        weights = {k: w for k, w in weights.items() if not k.startswith("finetune:")}
    return weights if any(weights.values()) else {"fidelity": 1.0}


def halve(names: list[str], results: dict[str, dict[str, Any]], by: dict[str, float] | None = None,
          runs: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Successive halving's cut: the better half (rounded up) of `names` by their latest result. With `runs` (each
    one's latest round as its row keeps it, several runs and per-example records: search.choose_protocol.round_seeds),
    also each one below the cut, in order, while the difference from the one at the cut lies within the interval
    that holds the runs' spread beside the texts' sampling (`seed_interval`): noise does not decide who trains on."""
    ranked = sorted(names, key=lambda n: _score(results[n], by), reverse=True)
    keep = math.ceil(len(names) / 2)
    if runs and by and keep:
        cut, pool = ranked[keep - 1], [runs[n] for n in ranked if n in runs]
        for name in ranked[keep:]:
            tie = seed_interval(runs[cut], runs[name], pool, by, name) if cut in runs and name in runs else None
            if tie is None or tie.interval[0] > 0:
                break
            keep += 1
    return ranked[:keep]


def _score(r: dict[str, Any] | Finalist, by: dict[str, float] | None = None) -> tuple[int, float]:
    """Rank key: the rounds reached, then the criterion at the last of them (`by`, search.choose_by's weights;
    None: the fidelity). NaN or a missing probe: ranks last."""
    get = r.get if isinstance(r, dict) else lambda k, d=None: getattr(r, k, d)
    score = weighted(get("fidelity"), get("probe"), by or {"fidelity": 1.0})
    return (len(get("rounds") or []), float("-inf") if math.isnan(score) else score)


def summarise(study: Study, budget_ms: float, rows: Sequence[Finalist | dict[str, Any]],
              tied: dict[str, str] | None = None) -> FinalistsResult:
    """The ranking (the rounds of successive halving reached, then the fidelity in the last), the choice, the noise
    of the ranking, the proxies' agreement with the first round's fidelity and the margin against the best of the
    other kind (`rows`: the finalists, as `Finalist`s or their dicts; `tied`: searched finalists passed over for
    the recipe they did not beat beyond noise, `tie_to_recipe`)."""
    finalists = [Finalist.model_validate(r) for r in rows]
    by, steps = criterion(study), study.cfg.search.finalist_steps
    ok = sorted((r for r in finalists if not r.over_budget), key=lambda r: _score(r, by), reverse=True)
    passed: dict[str, str] = {}
    if ok:
        for chosen in ok:  # the first one no recipe beats on fidelity beyond noise (a recipe is never beaten so)
            if tied and chosen.name in tied:  # nor ties with one (a recipe never does)
                continue
            if (beaten := beaten_by_a_recipe(chosen, ok, steps, by)) is None:
                break
            passed[chosen.name] = beaten
    else:  # nothing the budget holds when measured: the fastest by the time the budget judges, flagged
        chosen = min(finalists, key=Finalist.judged_time)
    searched = [r for r in ok if r.origin == "search"]
    taus: dict[str, float | None] = {}
    for proxy in ("approx_loss", "rescored_loss"):
        pts = [(getattr(r, proxy), -r.first_fidelity()) for r in searched if getattr(r, proxy) is not None]
        taus[proxy] = kendall_tau(*map(list, zip(*pts, strict=True))) if len(pts) >= 3 else None
    # each zero-step proxy of every finalist (searched and hand-designed) against its first round's fidelity
    screened = ["screen_fidelity"] if any(r.screen_fidelity is not None for r in ok) else []  # search.screen_steps
    for key in (*BEFORE_KEYS, *screened):
        pts = [(-getattr(r, key), -r.first_fidelity()) for r in ok if getattr(r, key) is not None]
        taus[key] = kendall_tau(*map(list, zip(*pts, strict=True))) if len(pts) >= 3 else None
    runner = next((r for r in ok if r is not chosen and r.name not in passed), None)
    return FinalistsResult(
        study=study.name, budget_ms=budget_ms, finalists=finalists, chosen=chosen,
        baseline_won=chosen.origin != "search", over_budget=chosen.over_budget,
        kendall_tau_vs_fidelity=taus,
        runner_up=runner.name if runner else None,
        separated=bool(runner and told_apart(chosen, runner, steps)),
        dropped_over_budget=[r.name for r in finalists if r.over_budget],
        replacements=[r.name for r in finalists if r.reserve],
        **({"margin": m} if (m := margin(chosen, ok, steps, by)) is not None else {}),
        **({"passed_over": passed} if passed else {}),
        **({"tied_with_recipe": dict(tied)} if tied else {}),
    )


def tie_to_recipe(result: FinalistsResult, by: dict[str, float]) -> str | None:
    """The hand-designed finalist a searched choice does not beat beyond noise on search.choose_by's score, if
    any: the margin's rival, where it reached the chosen one's last round and the lower end of the interval of the
    score's difference is not above 0 (the last round run several times: the interval holding the runs' spread and
    the texts'; one run, chosen by the fidelity alone: the fidelity's paired interval over the texts). None: a
    recipe was chosen, the searched one beat the best recipe beyond noise, the recipes were cut by successive
    halving, or no interval of the score exists (one run and a mixed score: the ranking stands). A searched point is the best of many, each scored with noise, so its lead within noise is partly
    luck (the winner's curse); the recipe is the user's for free and fully known, so it keeps a tie."""
    m = result.margin
    if result.chosen.origin != "search" or m is None or m.rival_origin == "search":
        return None
    rival = next(r for r in result.finalists if r.name == m.rival)
    if len(rival.rounds or []) != len(result.chosen.rounds or []):  # a recipe successive halving cut lost there
        return None
    if m.seeded and "score" in m.seeded:
        lo = m.seeded["score"].interval[0]
    elif set(by) == {"fidelity"} and m.delta_interval:
        lo = m.delta_interval[0]
    else:
        return None
    return None if lo > 0 else m.rival


def beaten_by_a_recipe(r: Finalist, ok: list[Finalist], first_steps: int, by: dict[str, float]) -> str | None:
    """The hand-designed finalist of `r`'s last round that beats a searched `r` on fidelity beyond the paired
    interval, if any, when search.choose_by mixes the fidelity with another criterion. The mix may rank first a
    searched student that trades measurable agreement for an accuracy gain within its noise (one fine-tuning
    seed); a recipe the user has for free is then the floor: the searched student is passed over. Choosing by
    the fidelity alone (or by accuracy alone) passes over no one."""
    if r.origin != "search" or not by.get("fidelity") or set(by) == {"fidelity"}:
        return None
    for other in ok:
        if other.origin == "search" or len(other.rounds or []) != len(r.rounds or []):
            continue
        last = _last_common(r, other, first_steps)
        paired = _paired(last[1], last[2]) if last else None
        if paired is not None and paired[1] < 0:
            return other.name
    return None


def _rounds(r: Finalist, first_steps: int) -> dict[int, dict[str, Any]]:
    """A finalist's results by the steps of short distillation they had."""
    if r.rounds:
        out = {int(x["steps"]): x for x in r.rounds}
        top = max(out)  # the last round's accuracies are the finalist's own (a round stored without them)
        return out | ({top: {**out[top], "probe": r.probe}} if r.probe and "probe" not in out[top] else {})
    return {first_steps: {"fidelity": r.fidelity, "fidelity_interval": r.fidelity_interval,
                          "fidelity_bootstrap": r.fidelity_bootstrap, "probe": r.probe}}


def _last_common(a: Finalist, b: Finalist, first_steps: int) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """The most steps both finalists reached, and each one's result there (None: no round in common)."""
    ours, theirs = _rounds(a, first_steps), _rounds(b, first_steps)
    common = sorted(set(ours) & set(theirs))
    return (common[-1], ours[common[-1]], theirs[common[-1]]) if common else None


def _paired(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float] | None:
    """The paired interval of a's fidelity minus b's (two results of the same round), or None without resamples."""
    x, y = a.get("fidelity_bootstrap"), b.get("fidelity_bootstrap")
    if not x or not y or len(x) != len(y):
        return None
    lo, hi = paired_interval(x, y, PAIRED_LEVEL)
    return None if math.isnan(lo) else (lo, hi)


def told_apart(first: Finalist, second: Finalist, first_steps: int) -> bool:
    """Whether the two best are told apart: the paired interval of their difference at the most steps both reached
    lies above 0 (finalists scored before their resamples were kept: their own intervals do not overlap)."""
    last = _last_common(first, second, first_steps)
    paired = _paired(last[1], last[2]) if last else None
    if paired is not None:
        return paired[0] > 0
    a, b = first.fidelity_interval, second.fidelity_interval
    return bool(a and b and b[1] < a[0])  # NaN: False


def margin(chosen: Finalist, ok: list[Finalist], first_steps: int, by: dict[str, float] | None = None
           ) -> Margin | None:
    """The chosen student against the best-ranked finalist of the other kind, at the most steps both reached; with
    `by` (search.choose_by's weights) mixing more than the fidelity, both students' weighted sums too."""
    rivals = [r for r in ok if (r.origin == "search") != (chosen.origin == "search")]
    if not rivals or chosen.fidelity is None:
        return None
    rival = rivals[0]
    last = _last_common(chosen, rival, first_steps)
    if last is None:
        return None
    steps, a, b = last
    if a.get("fidelity") is None or b.get("fidelity") is None:
        return None
    paired = _paired(a, b)
    if paired is not None:  # the difference's own interval: beyond noise when it excludes 0
        beyond = paired[0] > 0 or paired[1] < 0
    else:  # finalists scored before their resamples were kept: the rival outside the chosen one's interval
        lo, hi = a.get("fidelity_interval") or [math.nan, math.nan]
        beyond = bool(not lo <= b["fidelity"] <= hi)
    mine, theirs = a.get("probe") or {}, b.get("probe") or {}  # the accuracies of that round, measured alike
    scores = {k: [mine[k], theirs[k]] for k in mine if k in theirs}
    mixed = bool(by) and set(by) != {"fidelity"} and all(k == "fidelity" or k in scores for k in by)
    by_score = ([_score({**x, "probe": p}, by)[1] for x, p in ((a, mine), (b, theirs))] if mixed else None)
    return Margin(rival=rival.name, rival_origin=rival.origin, steps=steps, fidelity=a["fidelity"],
                  rival_fidelity=b["fidelity"], delta=a["fidelity"] - b["fidelity"],
                  delta_interval=list(paired) if paired is not None else None, beyond_interval=beyond,
                  scores=scores or None, by=dict(by) if mixed else None, by_score=by_score)


def rounds_seen(f: FinalistsResult, first_steps: int) -> list[list[int]]:
    """How many finalists each round of successive halving distilled: [[steps, count], ...]."""
    seen: dict[int, int] = {}
    for r in f.finalists:
        if not r.over_budget:
            for steps in [int(x["steps"]) for x in r.rounds] if r.rounds else [first_steps]:
                seen[steps] = seen.get(steps, 0) + 1
    return [[k, v] for k, v in sorted(seen.items())]
