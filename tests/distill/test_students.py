"""Stages 6-7 on the tiny study: layer mappings, the DEAP search and its resume, distillation."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import copy_study, dies_after
from sqlalchemy import select
from transformers import AutoModel

from nas_bert.distill import (
    MappingSearch,
    check_mapping,
    count_monotone,
    distill,
    distill_points,
    last_layers_mapping,
    map_layers,
    mutate_monotone,
    repair,
    uniform_mapping,
)
from nas_bert.errors import NasBertError
from nas_bert.search import pareto_rows
from nas_bert.space import architecture as A
from nas_bert.store import Database, MappingEval
from nas_bert.study import load_study


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
    study = load_study(study_file, overrides={"mapping.generations": 4, "mapping.population": 6,
                                              "mapping.confirm_seeds": 0})  # the GA's mechanics alone
    arch = A.largest(study.space, A.Embeddings(30522, 512, 2, 32))
    return MappingSearch(study, Database(f"sqlite:///{tmp_path / tag}.db"), arch, 4, fitness, tmp_path / tag)


def test_ga_finds_a_hidden_optimum_without_enumerating(tiny_study_file, tmp_path):
    # A synthetic fitness with one known minimum, far from the baselines of generation 0: the L1
    # distance to a hidden monotone mapping. 4 distillation points into 24 teacher layers are
    # C(27, 4) = 17550 mappings; the GA must land exactly on the target having evaluated a small
    # fraction of them (a random search of that many draws hits it about 1% of the time).
    n = 24
    target = [3, 9, 10, 17]
    for seed in range(3):  # not one lucky seed
        study = load_study(tiny_study_file, overrides={
            "mapping.population": 24, "mapping.generations": 40, "mapping.enumerate_below": 0, "mapping.seed": seed,
            "mapping.confirm_seeds": 0})
        arch = A.largest(study.space, A.Embeddings(30522, 512, 2, 32))
        calls: list[list[int]] = []

        def fitness(m: list[int], calls: list[list[int]] = calls) -> float:
            calls.append(list(m))
            return float(sum(abs(a - b) for a, b in zip(m, target, strict=True)))

        search = MappingSearch(study, Database(f"sqlite:///{tmp_path / f'opt{seed}'}.db"), arch, n, fitness,
                               tmp_path / f"opt{seed}")
        total = count_monotone(len(distill_points(arch)), n)
        assert total == 17550 and target not in (uniform_mapping(4, n), last_layers_mapping(4, n))
        out = search.run(progress=False)
        assert out["method"] == "genetic"
        assert out["best"] == {"mapping": target, "fitness": 0.0}, f"seed {seed}"
        assert out["baselines"]["uniform"]["fitness"] > 0  # the optimum was not handed to it in generation 0
        # it searched rather than enumerated: few evaluations, none repeated (memoised)
        assert out["fitness_evaluations"] == len(calls) < total // 10
        assert len({tuple(c) for c in calls}) == len(calls)
        assert all(c == sorted(c) and 1 <= c[0] and c[-1] <= n for c in calls)  # only monotone mappings tried


def test_ga_returns_the_best_it_evaluated_and_resumes_after_a_kill(tiny_study_file, tmp_path):
    # A cheap stand-in for the proxy distillation tests the GA's mechanics (the real proxy is
    # exercised below and in map_layers).
    target = [2, 2, 3, 4]
    seen: dict[tuple[int, ...], float] = {}

    def fitness(m):
        value = sum((a - b) ** 2 for a, b in zip(m, target, strict=True)) + 0.01 * sum(m)
        seen[tuple(m)] = value
        return value

    whole = _search(tiny_study_file, tmp_path, fitness, "whole").run(progress=False)
    assert whole["method"] == "genetic"
    # the answer is the minimum over everything evaluated, reported with its own fitness, and the
    # hall of fame holds the next best in order
    assert whole["best"]["fitness"] == seen[tuple(whole["best"]["mapping"])] == min(seen.values())
    assert [h["fitness"] for h in whole["hall_of_fame"]] == sorted(seen.values())[: len(whole["hall_of_fame"])]
    assert whole["fitness_evaluations"] == len(seen)
    assert [r["gen"] for r in whole["logbook"]] == [0, 1, 2, 3, 4]

    with pytest.raises(KeyboardInterrupt):  # killed in generation 2
        _search(tiny_study_file, tmp_path, dies_after(9, fitness), "killed").run(progress=False)
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
    trial = front[-1].trial
    mapped = map_layers(study, trial, progress=False)
    assert mapped.method == "genetic" and mapped.fitness_evaluations >= 2
    # every proxy evaluation is memoised, and the answer is the lowest of them (not merely no worse than
    # the uniform mapping, which generation 0 holds anyway)
    db = Database(study.db_url)
    with db.session() as s:
        rows = s.scalars(select(MappingEval).where(MappingEval.arch_hash == mapped.arch_hash)).all()
        evals = {row.mapping_json: row.fitness for row in rows if row.generation >= 0}  # the search's own
        confirmations = [row for row in rows if row.origin.startswith("confirm-")]
    assert len(evals) + len(confirmations) == mapped.fitness_evaluations
    assert json.dumps(mapped.best.mapping) in evals
    assert mapped.best.fitness == evals[json.dumps(mapped.best.mapping)] == min(evals.values())
    again = map_layers(study, trial, progress=False)  # finished: everything memoised
    assert again.fitness_evaluations == 0 and again.best == mapped.best

    first = distill(study, trial, stop_after=2)
    assert first.step == 2 and first.student_path is None
    done = distill(study, trial)
    # stage 7 distils with the mapping the confirmation decided: the searched one only where it beat the best
    # heuristic beyond noise over two more seeds
    decision = mapped.decision
    assert decision is not None and decision["used"] in ("searched", *mapped.baselines)
    assert done.step == 4 and done.mapping == decision["mapping"] and done.mapping_origin == decision["used"]
    # the weights kept are the best held-out fidelity, the extracted start included: never below the start
    assert done.after["best"]["value"] >= done.before["fidelity"]
    model = AutoModel.from_pretrained(done.student_path, trust_remote_code=True)
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
        distill(study, front[0].trial, mapping=[1] * 9)


def test_distill_without_a_trial_distils_the_budgets_chosen_student(searched, monkeypatch):
    """No --trial: the budget's chosen student, whatever it is (here a hand-designed winner: the teacher's first
    layer, started from the teacher's weights); before any finalists' choice, a one-line error saying what to run."""
    from nas_bert.choose import Finalist, distill_chosen
    from nas_bert.choose import choice as chosen_module
    from nas_bert.choose.candidates import baseline_family
    from nas_bert.distill import StudentContext

    study = load_study(searched)
    with pytest.raises(NasBertError, match="no finalists' choice yet; run `nas-bert run"):
        distill_chosen(study)
    family = baseline_family(StudentContext.open(study))
    name, arch = next((n, c.arch) for n, c in family.items() if c.origin == "truncated")
    fin = Finalist(name=name, origin="truncated", trial=None, hash=arch.hash(), architecture=str(arch),
                   arch_json=arch.canonical_json(), params=arch.params(), measured_ms=1.0, fidelity=0.5,
                   over_budget=False)
    monkeypatch.setattr(chosen_module, "chosen_finalist", lambda *a: fin)
    done = distill_chosen(study, steps=2)
    assert (done.arch_hash, done.start, done.trial, done.step) == (arch.hash(), "truncated", None, 2)
    assert done.student_path is not None



def test_the_teacher_cache_changes_no_result_and_runs_the_teacher_once_per_batch(searched_tiny, tmp_path, monkeypatch):
    """Two short distillations on the same batches: with the cache the teacher runs on each training batch once
    (the second run reads them all back), and both runs end with exactly the fidelity they reach without it; a
    cache too small for a batch holds nothing and changes nothing."""
    from nas_bert.choose import Candidate
    from nas_bert.choose.candidates import search_candidates
    from nas_bert.choose.finalists import short_distill
    from nas_bert.distill import StudentContext, TeacherCache

    file = copy_study(searched_tiny, tmp_path)
    arch = search_candidates(Database(load_study(file).db_url), load_study(file), 5.0)[0].arch
    results = {}
    for mb in (0, 1024, 0.0001):
        study = load_study(file, overrides={"distill.teacher_cache_mb": mb if mb >= 1 else 0})
        ctx = StudentContext.open(study)
        if 0 < mb < 1:
            ctx._cache = TeacherCache(0)  # room for nothing
        calls = {"n": 0}
        real = ctx.teacher.hidden_states

        def counted(*a, real=real, calls=calls, **k):
            calls["n"] += 1
            return real(*a, **k)

        monkeypatch.setattr(ctx.teacher, "hidden_states", counted)
        runs = [short_distill(ctx, Candidate(f"s{i}", "search", arch, None, {}), 3, final=False)["fidelity"]
                for i in range(2)]
        results[mb] = (runs, calls["n"], ctx._cache)
    (plain, n_plain, none), (cached, n_cached, cache), (tight, n_tight, empty) = results.values()
    assert none is None and cached == plain == tight and plain[0] == plain[1]
    assert cache.misses == 3 and cache.hits == 3 and 0 < cache.bytes <= 1024 * 2**20
    assert n_cached == n_plain - 3  # the second run's three training batches: no teacher pass
    assert empty.bytes == 0 and n_tight == n_plain


def test_a_finalists_start_is_scored_by_every_zero_step_proxy(searched_tiny, tmp_path):
    """A short distillation records its start's fidelity and, on 64 held-out texts or more, the readout proxies
    (`search.proxy` readout and gain) from the same vectors, the embeddings pooled as the teacher pools them beside;
    on fewer, only the fidelity (as the search, which asks for 64)."""
    from nas_bert.choose import Candidate
    from nas_bert.choose.candidates import search_candidates
    from nas_bert.choose.finalists import short_distill
    from nas_bert.distill import StudentContext
    from nas_bert.evaluate import readout_fidelity, readout_gain

    file = copy_study(searched_tiny, tmp_path)
    arch = search_candidates(Database(load_study(file).db_url), load_study(file), 5.0)[0].arch
    few, many = (StudentContext.open(load_study(file, overrides={"distill.val_batches": n})) for n in (2, 16))
    cand = Candidate("s", "search", arch, None, {})
    small = short_distill(few, cand, 2, final=False)
    assert "fidelity_before" in small and "readout_before" not in small and "gain_before" not in small
    big = short_distill(many, cand, 2, final=False)
    objective = many.objective(arch, [1] * len(distill_points(arch)), 16, many.study.cfg.distill.batch_size)
    emb = objective.embeddings_vectors()
    start = many.start(arch, cand.origin, many.study.cfg.distill.freeze_embeddings)
    s_vecs, t_vecs = objective.vectors(start)
    assert emb.shape == t_vecs.shape == s_vecs.shape and len(emb) == 64
    assert big["readout_before"] == pytest.approx(readout_fidelity(s_vecs, t_vecs), abs=1e-4)
    assert big["gain_before"] == pytest.approx(readout_gain(s_vecs, emb, t_vecs), abs=1e-4)
    assert readout_gain(emb, emb, t_vecs) == pytest.approx(0.0, abs=1e-6)  # the embeddings alone add nothing
