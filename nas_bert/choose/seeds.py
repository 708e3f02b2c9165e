"""A last round run several times (search.choose_protocol.last_round_seeds): its runs as a row keeps them, their
mean as the ranking reads it, and the interval of the two best's difference that holds the training runs' spread
beside the texts' sampling. Pure: no training, no database."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from nas_bert.evaluate import bootstrap_interval
from nas_bert.record import Record

LEVEL = 0.9  # the level of the intervals that say whether the budget's winner won beyond noise
# what a row keeps of each run of a round beyond its first (search.choose_protocol.last_round_seeds), and what it
# keeps beside the figures for the intervals alone (which validation examples each fine-tuning got right)
SEED_KEYS = ("fidelity", "fidelity_bootstrap", "probe", "probe_correct", "best_step", "seconds", "continued_from")
RUN_KEYS = ("probe_correct", "seeds")


class SeedInterval(Record):
    """The two best of a last round run several times (search.choose_protocol.last_round_seeds): the difference of
    their mean search.choose_by scores, with an interval that holds the training runs' spread (the seeds' variance,
    pooled over the round's finalists) beside the texts' sampling (the fidelity's paired bootstrap, the accuracies'
    paired per-example differences on validation), at `level` (normal)."""

    rival: str
    seeds: int
    delta: float  # the chosen's mean score minus the rival's
    interval: list[float]
    level: float = LEVEL
    training_sd: float  # one run's standard deviation of the score (the seeds' spread, pooled)
    texts_sd: float  # the difference's standard deviation from the texts' sampling alone
    # the accuracies' sampling is missing where no run kept which examples it got right (rows of an older nas-bert)
    accuracy_paired: bool = True


# -- a last round run several times (search.choose_protocol.last_round_seeds) ----------------------------------
def runs_of(r: dict[str, Any]) -> list[dict[str, Any]]:
    """A round's runs as a row keeps them: its first, then those it keeps under "seeds"."""
    return [r, *(r.get("seeds") or [])]


def seed_mean(r: dict[str, Any]) -> dict[str, Any]:
    """A round as the ranking reads it: with several runs, the mean of their fidelities (and of their paired
    bootstrap values, resample by resample, the interval from those) and accuracies, each run's in
    `seed_figures`; the per-example records left to the row."""
    out = {k: v for k, v in r.items() if k not in RUN_KEYS}
    runs = runs_of(r)
    if len(runs) == 1:
        return out
    out["fidelity"] = float(np.mean([x["fidelity"] for x in runs]))
    boots = [x.get("fidelity_bootstrap") for x in runs]
    if all(boots) and len({len(b) for b in boots}) == 1:
        out["fidelity_bootstrap"] = [None if any(v is None or math.isnan(v) for v in vals)
                                     else round(float(np.mean(vals)), 5) for vals in zip(*boots, strict=True)]
        out["fidelity_interval"] = list(bootstrap_interval([v for v in out["fidelity_bootstrap"] if v is not None]))
    keys = set.intersection(*(set(x.get("probe") or {}) for x in runs))
    if keys:
        out["probe"] = {k: float(np.mean([x["probe"][k] for x in runs])) for k in sorted(keys)}
    out["seed_figures"] = [{"fidelity": x["fidelity"], **({"probe": x["probe"]} if x.get("probe") else {})}
                           for x in runs]
    return out


def weighted(fidelity: float | None, probe: dict[str, float] | None, by: dict[str, float]) -> float:
    """The search.choose_by score of one result: `by`'s weights on its fidelity and probe accuracies (NaN where a
    figure it weighs is missing)."""
    probe = probe or {}
    pairs = [(w, fidelity if k == "fidelity" else probe.get(k)) for k, w in by.items() if w]
    return float(sum(w * (math.nan if v is None else v) for w, v in pairs))


def _mix(run: dict[str, Any], by: dict[str, float]) -> float:
    """One run's search.choose_by score."""
    return weighted(run.get("fidelity"), run.get("probe"), by)


def seed_interval(a: dict[str, Any], b: dict[str, Any], pool: Sequence[dict[str, Any]], by: dict[str, float],
                  rival: str, level: float = LEVEL) -> SeedInterval | None:
    """The difference of two finalists' mean `by` scores over their runs of one round (`a`, `b`: the rows' rounds,
    runs and per-example records kept), with a `level` interval that adds the training runs' variance (each
    finalist's runs' spread, pooled over `pool`, the round's finalists) to the texts' (`SeedInterval`). None
    with one run each."""
    ra, rb = runs_of(a), runs_of(b)
    spreads = [np.var([_mix(x, by) for x in runs_of(r)], ddof=1) for r in pool if len(runs_of(r)) > 1]
    mixes = [[_mix(x, by) for x in runs] for runs in (ra, rb)]
    if not spreads or any(not all(map(math.isfinite, m)) for m in mixes):
        return None
    training = float(np.mean(spreads))
    var = training * (1 / len(ra) + 1 / len(rb))
    texts = 0.0
    if by.get("fidelity"):  # the fidelity's paired bootstrap, each finalist's runs averaged resample by resample
        mean = [seed_mean(r).get("fidelity_bootstrap") for r in (a, b)]
        if mean[0] and mean[1] and len(mean[0]) == len(mean[1]):
            d = [x - y for x, y in zip(*mean, strict=True) if x is not None and y is not None]
            texts += by["fidelity"] ** 2 * float(np.var(d, ddof=1)) if len(d) > 1 else 0.0
    paired = True
    for key, w in by.items():
        if key == "fidelity" or not w:
            continue
        right = [[x["probe_correct"][key] for x in runs if key in (x.get("probe_correct") or {})] for runs in (ra, rb)]
        if not right[0] or not right[1] or len({len(s) for s in [*right[0], *right[1]]}) != 1:
            paired = False  # runs stored without their examples: the accuracy's sampling left out
            continue
        per = [np.mean([[c == "1" for c in s] for s in runs], axis=0) for runs in right]
        d = per[0] - per[1]
        texts += w ** 2 * float(np.var(d, ddof=1)) / len(d)
    delta = float(np.mean(mixes[0]) - np.mean(mixes[1]))
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(var + texts)
    return SeedInterval(rival=rival, seeds=min(len(ra), len(rb)), delta=delta, interval=[delta - half, delta + half],
                        level=level, training_sd=math.sqrt(training), texts_sd=math.sqrt(texts),
                        accuracy_paired=paired)


def term_intervals(a: dict[str, Any], b: dict[str, Any], pool: Sequence[dict[str, Any]], by: dict[str, float],
                   rival: str, level: float = LEVEL) -> dict[str, SeedInterval] | None:
    """`seed_interval` of the two finalists' search.choose_by score ("score") and, where it mixes several, of each
    of its terms alone (e.g. "fidelity", "finetune:NAME"): whether one student beats another beyond noise on the
    sum, and on which of what it sums. None with one run each."""
    score = seed_interval(a, b, pool, by, rival, level)
    if score is None:
        return None
    terms = {k: seed_interval(a, b, pool, {k: 1.0}, rival, level) for k, w in by.items() if w} if len(by) > 1 else {}
    return {"score": score, **{k: v for k, v in terms.items() if v is not None}}
