"""Progressive shrinking of the search space: an option whose trials never reach the front stops being drawn."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from nas_bert.search.shrinking import ShrinkingSampler, dominated_options


def objective(trial: optuna.Trial) -> tuple[float, float]:
    """Two objectives (loss, ms) where width 8 is dominated: as slow as width 64 and worse than every width."""
    w = trial.suggest_categorical("width", [8, 16, 32, 64])
    layers = trial.suggest_categorical("layers", [1, 2, 3])
    ms = layers * (64 if w == 8 else w)
    trial.set_constraint("latency", ms - 150)
    loss = 1.0 / (layers * w) + (1.0 if w == 8 else 0.0)
    return loss, float(ms)


def test_a_dominated_option_is_no_longer_drawn_after_a_stage() -> None:
    base = optuna.samplers.RandomSampler(seed=0)
    sampler = ShrinkingSampler(base, every=30, min_uses=3, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=30)
    first = study.get_trials(states=(TrialState.COMPLETE,))
    assert sum(t.params["width"] == 8 for t in first) >= 3  # it was tried: the random sampler draws it
    dropped = sampler.dropped(study)
    assert 8 in dropped["width"]  # dominated: never on the front
    front = {t.params["width"] for t in study.best_trials}
    assert not front & dropped["width"]  # nothing on the front is dropped
    study.optimize(objective, n_trials=40)
    later = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.number >= 30]
    assert len(later) == 40 and not any(t.params["width"] in dropped["width"] for t in later)
    assert {t.params["width"] for t in later} >= front  # the rest of the space is still searched


def test_dominated_options_need_enough_trials_and_keep_the_front() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for w, ms, loss in [(8, 10, 0.9), (8, 12, 0.8), (16, 10, 0.5), (16, 20, 0.4), (32, 30, 0.1), (8, 11, 0.95)]:
        t = optuna.trial.create_trial(params={"width": w}, values=[loss, ms],
                                      distributions={"width": optuna.distributions.CategoricalDistribution([8, 16, 32])},
                                      system_attrs={"constraints:latency": ms - 25.0})
        study.add_trial(t)
    trials = study.get_trials()
    front = study.best_trials  # feasible front: (16, 10, 0.5) and (16, 20, 0.4); 32 is over the budget
    assert {t.params["width"] for t in front} == {16}
    assert dominated_options(trials, front, min_uses=3) == {"width": {8}}
    assert dominated_options(trials, front, min_uses=4) == {}  # three trials are not enough evidence then
    assert dominated_options(trials, [], min_uses=1) == {}  # no front: nothing is judged


def test_shrinking_is_off_unless_asked_and_keys_the_search_only_when_on() -> None:
    from nas_bert.search.loop import make_sampler
    from nas_bert.study import SearchConfig

    assert isinstance(make_sampler(SearchConfig(), 0), optuna.samplers.NSGAIISampler)
    on = make_sampler(SearchConfig(shrink_every=20), 0)
    assert isinstance(on, ShrinkingSampler) and isinstance(on.base, optuna.samplers.NSGAIISampler)

