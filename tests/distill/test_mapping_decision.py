"""The layer mapping earns its stage: the GA's best mapping is run again with other seeds beside the best
heuristic (uniform, last layers, or each kept layer learning from itself) and used only where it wins beyond
noise; otherwise the heuristic is, and stage 7 reads that decision."""

from __future__ import annotations

import random

import numpy as np
import pytest
import scipy.stats

from nas_bert.distill import MappingSearch
from nas_bert.distill.mapping import decided_mapping, paired_gain
from nas_bert.distill.objective import distill_points, own_layers_mapping
from nas_bert.distill.students import best_mapping
from nas_bert.space import Embeddings, TeacherShape, families, load_space
from nas_bert.store import Database
from nas_bert.study import load_study

TARGET = [2, 3, 3]


def _setup(study_file, tmp_path, tag):
    study = load_study(study_file, overrides={"mapping.generations": 3, "mapping.population": 6,
                                              "mapping.enumerate_below": 0, "mapping.confirm_seeds": 3})
    space = load_space("auto", teacher=lambda: TeacherShape(num_layers=4, hidden_size=32, num_heads=4,
                                                          intermediate_size=64))
    arch = families(space, Embeddings(30522, 512, 2, 32))["spread-3"][1]  # layers 0, 2 (rounded) and 3 kept
    db = Database(f"sqlite:///{tmp_path / tag}.db")
    return study, db, arch


def test_own_layers_heuristic_for_a_spread_student() -> None:
    space = load_space("auto", teacher=lambda: TeacherShape(num_layers=6, hidden_size=32, num_heads=4,
                                                          intermediate_size=64))
    arch = families(space, Embeddings(100, 64, 2, 32))["spread-3"][1]
    assert len(distill_points(arch)) == 3
    assert own_layers_mapping(arch) == [1, 3, 6]  # layers 0, 2 and 5 kept: each learns from its own output


def test_a_searched_mapping_that_wins_beyond_noise_is_used(tiny_study_file, tmp_path) -> None:
    study, db, arch = _setup(tiny_study_file, tmp_path, "wins")

    def fitness(m, seed=None, steps=None):  # the target is far better than any heuristic, noise is small
        noise = random.Random(f"{seed}").gauss(0, 0.01) if seed is not None else 0.0
        return float(sum(abs(a - b) for a, b in zip(m, TARGET, strict=True))) + noise

    out = MappingSearch(study, db, arch, 4, fitness, tmp_path / "wins").run(progress=False)
    assert out["best"]["mapping"] == TARGET
    assert out["decision"]["used"] == "searched" and out["decision"]["mapping"] == TARGET
    assert len(out["decision"]["runs"]["searched"]) == 3
    assert decided_mapping(db, study, arch) == (TARGET, "searched")
    assert best_mapping(db, study, arch) == (TARGET, "searched")


def test_a_searched_mapping_within_noise_gives_way_to_the_heuristic(tiny_study_file, tmp_path) -> None:
    study, db, arch = _setup(tiny_study_file, tmp_path, "noise")

    def fitness(m, seed=None, steps=None):  # a tiny edge for the target, drowned by seed-to-seed noise
        edge = 0.001 * sum(abs(a - b) for a, b in zip(m, TARGET, strict=True))
        noise = random.Random(f"{seed}:{m}").gauss(0, 0.5) if seed is not None else 0.0
        return 1.0 + edge + noise

    out = MappingSearch(study, db, arch, 4, fitness, tmp_path / "noise").run(progress=False)
    decision = out["decision"]
    assert decision["used"] != "searched", decision
    heuristic = out["baselines"][decision["used"]]["mapping"]
    assert decision["mapping"] == heuristic and "does not beat" in decision["reason"]
    assert best_mapping(db, study, arch) == (heuristic, decision["used"])


def test_each_seeds_runs_are_paired_so_its_luck_cancels(tiny_study_file, tmp_path) -> None:
    """A seed's batches, masks and start are the same for both mappings: its luck moves both runs alike. A small
    edge the same at every seed is beyond noise paired, though the seeds' spread would hide it unpaired."""
    study, db, arch = _setup(tiny_study_file, tmp_path, "paired")

    def fitness(m, seed=None, steps=None):
        luck = random.Random(f"{seed}").gauss(0, 0.5) if seed is not None else 0.0  # the seed's, not the mapping's
        return 1.0 + 0.01 * sum(abs(a - b) for a, b in zip(m, TARGET, strict=True)) + luck

    out = MappingSearch(study, db, arch, 4, fitness, tmp_path / "paired").run(progress=False)
    decision = out["decision"]
    assert decision["used"] == "searched" and decision["mapping"] == TARGET and decision["paired"], decision
    (name,) = decision["runs"].keys() - {"searched"}
    a, b = np.asarray(decision["runs"]["searched"]), np.asarray(decision["runs"][name])
    assert np.allclose(b - a, decision["gain"]) and decision["gain"] == pytest.approx(0.01)  # one step nearer, each seed
    unpaired = 2 * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert decision["gain"] < unpaired  # the seeds' spread alone would have hidden it


def test_the_paired_interval_is_students_t_over_the_seeds() -> None:
    heuristic, searched = [1.0, 2.0, 3.0], [0.9, 1.95, 2.85]  # differences 0.10, 0.05, 0.15
    gain, half = paired_gain(heuristic, searched)
    low, high = scipy.stats.ttest_rel(heuristic, searched).confidence_interval(0.95)
    assert gain == pytest.approx(0.1) and half == pytest.approx((high - low) / 2)
    assert half > gain  # three seeds this unsteady: not beyond noise
    assert paired_gain([1.0, 2.0], [0.9, 1.9]) == pytest.approx((0.1, 0.0))  # the same edge at both seeds
