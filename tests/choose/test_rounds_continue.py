"""Successive halving trains its survivors on: a later round starts from the finalist's best weights of its last
round and distils only the steps between, on other batches; a process that holds no such weights (after a kill, or
rows scored before survivors trained on) makes them again, to the same figures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import copy_study
from sqlalchemy import select

from nas_bert.choose import choose
from nas_bert.choose import finalists as F
from nas_bert.store import Database, FinalistRow
from nas_bert.study import load_study


def test_a_later_round_trains_its_survivors_on_from_their_best_weights(searched_tiny, tmp_path, monkeypatch):
    study = load_study(copy_study(searched_tiny, tmp_path), overrides={
        "search.finalist_steps": 2, "search.finalist_rounds": 2, "distill.val_batches": 2,
        "latency.fresh_process": False})
    runs: list[tuple[str, int, int, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
    real = F.train_loop

    def spy(*, model, cfg, total_steps, desc, keep_best, **kw):
        start = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        out = real(model=model, cfg=cfg, total_steps=total_steps, desc=desc, keep_best=keep_best, **kw)
        runs.append((desc.removeprefix("finalist "), total_steps, cfg.seed, start, keep_best.best_state()))
        return out

    monkeypatch.setattr(F, "train_loop", spy)
    fin = choose(study, 5.0, progress=False)
    second = {f.name: f for f in fin.finalists if f.rounds and len(f.rounds) == 2}
    held = [f for f in fin.finalists if not f.over_budget]
    assert len(held) >= 3 and len(second) == (len(held) + 1) // 2, [f.name for f in fin.finalists]
    first, later = runs[:len(held)], runs[len(held):]
    assert sorted(r[0] for r in first) == sorted(f.name for f in held) and all(r[1] == 2 for r in first)
    assert sorted(r[0] for r in later) == sorted(second)
    best_of_first = {r[0]: r[4] for r in first}
    for name, steps, seed, start, _ in later:
        assert steps == 2 and seed != first[0][2]  # two steps more (four in all), on other batches
        assert start.keys() == best_of_first[name].keys()
        assert all(torch.equal(start[k], best_of_first[name][k]) for k in start)  # from round one's best
        assert second[name].rounds[1]["steps"] == 4 and second[name].rounds[1]["continued_from"] == 2
    assert fin.chosen.name in second

    # rows whose later rounds were distilled from the start again (before survivors trained on) are scored
    # again; this process holds none of their weights, so each survivor's first round is made again first
    with Database(study.db_url).session() as s:
        for row in s.scalars(select(FinalistRow).where(FinalistRow.study == study.name)):
            m = json.loads(row.metrics_json)
            if m.get("rounds"):
                m["rounds"] = [{k: v for k, v in r.items() if k != "continued_from"} for r in m["rounds"]]
                row.metrics_json = json.dumps(m)
    runs.clear()
    again = choose(study, 5.0, progress=False)
    assert sorted(r[0] for r in runs) == sorted([*second, *second]) and all(r[1] == 2 for r in runs)
    redone = {f.name: f for f in again.finalists if f.rounds and len(f.rounds) == 2}
    assert redone.keys() == second.keys() and again.chosen.name == fin.chosen.name
    for name, f in redone.items():  # the same weights made again: the same figures
        assert f.fidelity == pytest.approx(second[name].fidelity, abs=1e-5)
        assert f.rounds[1]["continued_from"] == 2
    runs.clear()
    assert choose(study, 5.0, progress=False).chosen.name == fin.chosen.name and runs == []  # all stored now
