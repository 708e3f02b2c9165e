"""Stages 6-7 on the tiny study: layer mappings, the DEAP search and its resume, distillation."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import copy_study
from transformers import AutoModel

from nas_bert import architecture as A
from nas_bert.config import load_study
from nas_bert.db import Database
from nas_bert.distill import check_mapping, distill_points, last_layers_mapping, uniform_mapping
from nas_bert.errors import NasBertError
from nas_bert.mapping import MappingSearch, count_monotone, mutate_monotone, repair
from nas_bert.search import pareto_rows
from nas_bert.students import distill, map_layers


def test_distillation_points_and_baselines(tiny_space, tiny_teacher):
    arch = A.Architecture(tiny_teacher.embeddings_spec(), (
        A.Block(16, (A.Op("mha", heads=2), A.Op("ffn", inner=32), A.Op("sepconv", kernel=3), A.IDENTITY)),
        A.Block(32, (A.Op("mha", heads=4), A.Op("ffn", inner=64), A.IDENTITY, A.IDENTITY))))
    assert distill_points(arch) == [2, 4, 5]  # every second non-identity sublayer, and the last
    assert uniform_mapping(3, 6) == [2, 4, 6]  # TinyBERT: g(m) = m * N / M
    assert uniform_mapping(4, 6) == [2, 3, 5, 6]
    assert last_layers_mapping(3, 6) == [4, 5, 6]
    assert last_layers_mapping(8, 6)[:3] == [1, 1, 1]
    assert check_mapping([1, 1, 4], arch, 4) == [1, 1, 4]
    with pytest.raises(NasBertError, match="has 2 entries; this student has 3"):
        check_mapping([1, 2], arch, 4)
    with pytest.raises(NasBertError, match="not monotone"):
        check_mapping([3, 1, 4], arch, 4)
    with pytest.raises(NasBertError, match="1..4"):
        check_mapping([1, 2, 5], arch, 4)


def test_variation_keeps_mappings_monotone():
    random.seed(0)
    for _ in range(500):
        ind = sorted(random.randint(1, 6) for _ in range(4))
        mutate_monotone(ind, 6)
        assert ind == sorted(ind) and all(1 <= v <= 6 for v in ind)
    assert repair([3, 1, 2]) == [1, 2, 3]
    assert count_monotone(4, 6) == 126


def _search(study_file, tmp_path, fitness, tag):
    study = load_study(study_file, overrides={"mapping.generations": 4, "mapping.population": 6})
    arch = A.largest(study.space, A.Embeddings(30522, 512, 2, 32))
    return MappingSearch(study, Database(f"sqlite:///{tmp_path / tag}.db"), arch, 4, fitness, tmp_path / tag)


def test_ga_finds_the_optimum_and_resumes_after_a_kill(tiny_study_file, tmp_path):
    # A cheap stand-in for the proxy distillation, with a known best mapping, tests the GA's
    # mechanics (the real proxy is exercised below and in map_layers).
    target = [2, 2, 3, 4]

    def fitness(m):
        return sum((a - b) ** 2 for a, b in zip(m, target, strict=True)) + 0.01 * sum(m)

    whole = _search(tiny_study_file, tmp_path, fitness, "whole").run(progress=False)
    assert whole["method"] == "genetic"
    assert whole["best"]["fitness"] <= whole["baselines"]["uniform"]["fitness"]
    assert [r["gen"] for r in whole["logbook"]] == [0, 1, 2, 3, 4]
    assert whole["best"]["mapping"] == sorted(whole["best"]["mapping"])

    calls = {"n": 0}

    def dies_in_generation_2(m):
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt
        return fitness(m)

    with pytest.raises(KeyboardInterrupt):
        _search(tiny_study_file, tmp_path, dies_in_generation_2, "killed").run(progress=False)
    resumed = _search(tiny_study_file, tmp_path, fitness, "killed").run(progress=False)
    assert resumed["best"] == whole["best"]
    assert resumed["logbook"] == whole["logbook"]
    assert resumed["hall_of_fame"] == whole["hall_of_fame"]
    state = random.getstate()
    _search(tiny_study_file, tmp_path, fitness, "killed").run(progress=False)
    assert random.getstate() == state  # the caller's global random is left as it was


@pytest.fixture()
def searched(searched_tiny, tmp_path):
    return copy_study(searched_tiny, tmp_path)


def test_map_layers_then_distill_end_to_end(searched):
    study = load_study(searched)
    front = pareto_rows(Database(study.db_url), study, 5.0)
    trial = front[-1]["trial"]
    mapped = map_layers(study, trial, progress=False)
    assert mapped["method"] == "genetic" and mapped["fitness_evaluations"] >= 2
    assert mapped["best"]["fitness"] <= mapped["baselines"]["uniform"]["fitness"]
    again = map_layers(study, trial, progress=False)  # finished: everything memoised
    assert again["fitness_evaluations"] == 0 and again["best"] == mapped["best"]

    first = distill(study, trial, stop_after=2)
    assert first["step"] == 2 and first["student_path"] is None
    done = distill(study, trial)
    assert done["step"] == 4 and done["mapping"] == mapped["best"]["mapping"] and done["mapping_origin"] == "searched"
    # the weights kept are the best held-out fidelity, the extracted start included: never below the start
    assert done["after"]["best"]["value"] >= done["before"]["fidelity"]
    model = AutoModel.from_pretrained(done["student_path"], trust_remote_code=True)
    ids = torch.tensor([[101, 7592, 2088, 102]])
    assert model(ids).last_hidden_state.shape[:2] == (1, 4)
    cfg = json.loads(model.config.to_json_string())
    assert cfg["architecture"]["blocks"]


def test_distill_errors(searched):
    study = load_study(searched)
    with pytest.raises(NasBertError, match="not a completed trial"):
        distill(study, 9999)
    with pytest.raises(NasBertError, match="no search for budget 7"):
        distill(study, 0, budget=7.0)
    front = pareto_rows(Database(study.db_url), study, 5.0)
    with pytest.raises(NasBertError, match="has 9 entries; this student has"):  # any student has fewer points
        distill(study, front[0]["trial"], mapping=[1] * 9)
