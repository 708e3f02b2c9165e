"""Progressive shrinking of the search space (NAS-BERT, Xu et al. 2021, section 3.3), done on the search itself.

NAS-BERT prunes its space in stages while the supernet trains: sub-architectures that the ones kept dominate are
dropped, so the later training and the search spend their samples where the good points are. In a space made
from the teacher the supernet needs no training (its weights are the teacher's), and the compute goes to the
search's proxy evaluations; so the shrinking is done there, in stages of `every` complete trials: an option of
a parameter (a width, a layer's heads or neurons, dropping a layer) that `min_uses` feasible trials or more have
tried and none of them reached the feasible Pareto front of proxy loss against predicted latency
(`study.best_trials`) is dominated, and later trials no longer draw it. The option's trials stay in the study;
a parameter keeps at least one option; seeds (enqueued trials) are not sampled, so they are never changed.

`ShrinkingSampler` wraps the study's sampler (NSGA-II or TPE, as `optuna.samplers.PartialFixedSampler` wraps
one): the base sampler proposes, and a proposal of a dropped option is replaced by an option still in the space,
drawn by the wrapper's own seeded generator. The dropped options are a function of the study's trials at a
stage boundary, so every worker sharing the study drops the same ones.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def dominated_options(trials: Sequence[FrozenTrial], front: Sequence[FrozenTrial], min_uses: int) -> dict[str, set[Any]]:
    """param -> its options that `min_uses` or more feasible complete trials tried and no trial of `front` holds.

    A param keeps the options of its front trials (with no front trial holding it, nothing of it is dropped)."""
    uses: dict[str, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    for t in trials:
        if t.state == TrialState.COMPLETE and feasible(t):
            for k, v in t.params.items():
                uses[k][v] += 1
    on_front: dict[str, set[Any]] = defaultdict(set)
    for t in front:
        for k, v in t.params.items():
            on_front[k].add(v)
    out: dict[str, set[Any]] = {}
    for k, counts in uses.items():
        if not on_front[k]:
            continue
        drop = {v for v, n in counts.items() if n >= min_uses and v not in on_front[k]}
        if drop:
            out[k] = drop
    return out


class ShrinkingSampler(BaseSampler):
    """The base sampler, in a space that drops dominated options every `every` complete trials (module doc)."""

    def __init__(self, base: BaseSampler, every: int, min_uses: int = 4, seed: int | None = None) -> None:
        self.base, self.every, self.min_uses = base, every, min_uses
        self._rng = random.Random(seed)
        self._stage = -1
        self._dropped: dict[str, set[Any]] = {}

    def dropped(self, study: optuna.Study) -> dict[str, set[Any]]:
        """The options dropped at the latest stage boundary the study has passed (cached per stage)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        stage = len(complete) // self.every if self.every > 0 else 0
        if stage != self._stage:
            self._stage = stage
            if stage == 0:
                self._dropped = {}
            else:  # judged on the trials of the stages completed, in the order they completed
                done = sorted(complete, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
                first = done[: stage * self.every]
                self._dropped = dominated_options(first, _front(study, first), self.min_uses)
        return self._dropped

    def _allowed(self, name: str, dist: BaseDistribution, value: Any) -> Any:
        drop = self._dropped.get(name)  # judged once per trial, in `before_trial`
        if not drop or value not in drop or not isinstance(dist, CategoricalDistribution):
            return value
        choices = [c for c in dist.choices if c not in drop]
        return self._rng.choice(choices) if choices else value

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = random.Random()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        params = self.base.sample_relative(study, trial, search_space)
        return {k: self._allowed(k, search_space[k], v) if k in search_space else v for k, v in params.items()}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        return self._allowed(param_name, param_distribution, value)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.dropped(study)  # the stage's dropped options, read once for every parameter this trial samples
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)


def _front(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The feasible Pareto front of `trials`, by Optuna's own front of a study holding only them."""
    sub = optuna.create_study(directions=study.directions)
    sub.add_trials(trials)
    return sub.best_trials


def describe(dropped: dict[str, set[Any]]) -> str:
    """'b3_s0: h2, h4; hidden: 128' (parameters in order, options sorted as text)."""
    return "; ".join(f"{k}: {', '.join(sorted(map(str, v)))}" for k, v in sorted(dropped.items()))
