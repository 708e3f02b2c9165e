"""The search and the finalists on the space made from the teacher (tiny teacher): the hand-designed students
seed the search and are judged as their families, successive halving runs its rounds, and the choice says
which kind won and by how much."""

from __future__ import annotations

import copy

import optuna
import pytest
import yaml
from conftest import FAST, ROOT

from nas_bert.choose import choose
from nas_bert.search import optuna_study_name, search, storage_for
from nas_bert.space import FAMILIES, families
from nas_bert.study import load_study
from nas_bert.supernet import train_supernet
from nas_bert.teacher import embeddings_spec_of, load_teacher_config


def test_search_and_finalists_on_the_space_made_from_the_teacher(tmp_path, monkeypatch) -> None:
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(copy.deepcopy(FAST))  # FAST is shared by the session's other studies: never edit it in place
    data["search_space"] = "auto"
    data["supernet"]["steps"] = 0
    data["search"]["finalist_rounds"] = 2
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    study = load_study(tmp_path / "tiny.yaml")
    assert study.space.layer_slots and study.space.blocks == 4
    train_supernet(study)
    result = search(study, 5.0)
    # the trials' score is the zero-step fidelity proxy, a loss in [0, 2]
    assert result.chosen is not None and 0 <= result.chosen.approx_loss <= 2
    trials = optuna.load_study(study_name=optuna_study_name(study, 5.0), storage=storage_for(study)).get_trials()
    seeds = {t.user_attrs["seed"] for t in trials if "seed" in t.user_attrs}
    points = families(study.space, embeddings_spec_of(load_teacher_config(study.cfg.teacher)))
    recipes = {s for s in seeds if "+layer" not in s} - {"fastest"}
    assert "fastest" in seeds and recipes and recipes <= set(points)  # the recipes go first
    # then each family's slowest member grown by a layer: points of the search's own, none a recipe
    grown = {s for s in seeds if "+layer" in s}
    assert grown and all(s.split("+")[0] in recipes for s in grown)
    by_seed = {t.user_attrs["seed"]: t for t in trials if "seed" in t.user_attrs}
    recipe_hashes = {a.hash() for _, a in points.values()}
    assert all(by_seed[s].user_attrs["arch_hash"] not in recipe_hashes for s in grown)
    from nas_bert.choose import finalists as F
    timed_names, timed, measure = [], {}, F.measured_ms

    def spy(ctx, cands, budget_ms, progress=True, optional=frozenset(), calibrate=True):
        timed_names.extend(c.name for c in cands)
        timed.update({c.name: c for c in cands})
        return measure(ctx, cands, budget_ms, progress, optional, calibrate)

    monkeypatch.setattr(F, "measured_ms", spy)
    built, grow = [], F.grown_reserves

    def grown(*args, **kwargs):
        built.extend(out := grow(*args, **kwargs))
        return out

    monkeypatch.setattr(F, "grown_reserves", grown)
    fin = choose(study, 5.0, progress=False)
    # each of the top searched students was timed beside itself one step smaller, in reserve
    # and one, two steps larger (search.reserve_grows); no reserve is a hand-designed point, which is its family's
    shrunk = [n for n in timed_names if "." in n]
    assert shrunk and all(n.split(".")[0] in timed_names for n in shrunk), timed_names
    chains = {k: [c for c in timed.values() if c.proxies.get(k)] for k in ("shrunk_of", "grown_of")}
    assert chains["shrunk_of"], timed_names
    # every grown point built is timed (whether a top student has a larger neighbour within 2^levels x e of it
    # depends on the latency table measured here: test_auto_space's grown chain is the deterministic case)
    assert {c.name for c in chains["grown_of"]} == {c.name for c in built}, timed_names
    assert all(c.arch.hash() not in recipe_hashes for c in chains["shrunk_of"] + chains["grown_of"])
    # a grown point is a finalist only in the place of its student, never beside it
    grown_finalists = [f for f in fin.finalists if getattr(f, "grown_of", None)]
    assert all(not f.reserve and f.grown_of not in {g.name for g in fin.finalists} for f in grown_finalists)
    origins = {f.origin for f in fin.finalists}
    assert origins & set(FAMILIES), origins  # hand-designed points judged as their families
    names = {f.name for f in fin.finalists}
    assert not any(n.startswith("teacher-layers-") for n in names)  # the old space's seeds are gone
    # successive halving: the better half of those the budget holds got a second, longer round
    held = [f for f in fin.finalists if not f.over_budget]
    second = [f for f in held if f.rounds and len(f.rounds) == 2]
    assert len(held) >= 3, [f.name for f in fin.finalists]
    assert len(second) == (len(held) + 1) // 2
    assert all(f.rounds[1]["steps"] == 2 * f.rounds[0]["steps"] for f in second)
    assert fin.chosen.name in {f.name for f in second}
    assert fin.margin is not None and (fin.margin.rival_origin == "search") != (fin.chosen.origin == "search")
    # resumable: a second call recomputes nothing and chooses the same
    again = choose(study, 5.0, progress=False)
    assert again.chosen.name == fin.chosen.name and again.chosen.fidelity == fin.chosen.fidelity
    # a budget timed before a student became a reserve (a study from an older nas-bert) goes on without it:
    # students are compared within one timing run, so nothing is timed again
    from nas_bert.choose import Candidate
    from nas_bert.choose import timing as T

    def boom(*a, **k):
        raise AssertionError("the budget's finalists were timed again")

    newcomer = Candidate("newcomer", "search", points["truncated-1"][1], None,
                         {"reserve": True, "shrunk_of": fin.chosen.name, "approx_rank": 0})
    monkeypatch.setattr(T, "time_finalists", boom)
    monkeypatch.setattr(F, "shrunk_reserves", lambda *a, **k: [newcomer])
    later = choose(study, 5.0, progress=False)
    assert later.chosen.name == fin.chosen.name and "newcomer" not in {f.name for f in later.finalists}
    # what export and status read back from the finalists' rows is the same choice, ranked by the last rounds
    from nas_bert.choose import chosen_finalist
    from nas_bert.store import Database

    stored = chosen_finalist(Database(study.db_url), study, 5.0)
    assert stored is not None and stored.name == fin.chosen.name and stored.fidelity == fin.chosen.fidelity
    assert stored.rounds == fin.chosen.rounds


@pytest.mark.parametrize("edge", [False, True], ids=["room-left", "at-the-edge"])
def test_a_recipe_grown_into_the_latency_it_leaves_is_a_searched_finalist_beside_it(tmp_path, monkeypatch,
                                                                                   edge: bool) -> None:
    """search.grow_recipes: each family's slowest member within the budget grown one, two steps; one judged at the
    budget's edge (within the latency model's error of it) shrunk alike, its largest smaller point that holds with
    the error to spare a searched finalist beside it."""
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(copy.deepcopy(FAST))
    data["search_space"] = "auto"
    data["supernet"]["steps"] = 0
    data["search"] |= {"grow_recipes": True, "trials": 8}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    study = load_study(tmp_path / "tiny.yaml")
    train_supernet(study)
    search(study, 5.0)
    from nas_bert.choose import finalists as F

    def timed(ctx, cands, budget_ms, progress=True, optional=frozenset(), calibrate=True):
        # every student at half its prediction: each recipe's grown points hold with the model's error to spare;
        # `edge`: each family's slowest member within the budget judged 1% under it, its smaller points 10% under
        slowest = {}
        for c in cands:
            p = c.proxies.get("predicted_ms")
            if c.origin in FAMILIES and p is not None and p <= budget_ms and p > slowest.get(c.origin, (0.0,))[0]:
                slowest[c.origin] = (p, c.name)
        at_edge = {name for _, name in slowest.values()} if edge else set()
        return ({c.name: 0.99 * budget_ms if c.name in at_edge else 0.9 * budget_ms
                 if c.proxies.get("shrunk_of") in at_edge else 0.5 * (c.proxies.get("predicted_ms") or 1.0)
                 for c in cands}, {"drift": 1.0, "teacher_ms": 20.0})

    monkeypatch.setattr(F, "measured_ms", timed)
    monkeypatch.setattr(F, "latency_error", lambda lat: 0.03)  # the spare a recipe keeps: 3%
    fin = choose(study, 5.0, progress=False)
    recipes = {f.name: f for f in fin.finalists if f.origin in FAMILIES}
    beside = [f for f in fin.finalists if getattr(f, "grown_of", None) in recipes]
    below = [f for f in fin.finalists if getattr(f, "shrunk_of", None) in recipes]
    assert beside or edge, [f.name for f in fin.finalists]  # (at the edge: its grown points were timed faster)
    for f in beside:  # a searched point, one or two steps larger than its recipe, which stays a finalist too
        assert f.origin == "search" and not f.reserve and f.name.startswith(f"{f.grown_of}.")
        assert f.measured_ms > recipes[f.grown_of].measured_ms and f.hash != recipes[f.grown_of].hash
        assert f.beside_recipe == f.grown_of  # the model card names the recipe it grew from
    if not edge:  # a recipe the budget holds with room to spare is not shrunk
        assert not below
    else:  # one step or two smaller than its recipe at the edge, which stays a finalist too (the tie rule judges it)
        assert below and {f.shrunk_of for f in below} == {n for n, r in recipes.items() if r.measured_ms == 4.95}
        for f in below:
            assert f.origin == "search" and not f.reserve and f.name.startswith(f"{f.shrunk_of}.")
            assert f.measured_ms == 4.5 and f.hash != recipes[f.shrunk_of].hash and f.beside_recipe == f.shrunk_of
    points = families(study.space, embeddings_spec_of(load_teacher_config(study.cfg.teacher)))
    assert not {f.hash for f in beside + below} & {a.hash() for _, a in points.values()}  # none of them a recipe
