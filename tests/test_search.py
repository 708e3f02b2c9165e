"""Stages 2-5 on the tiny study: search to a budget, resume after kill -9, two workers, errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import copy_study, make_tiny_study
from optuna.trial import TrialState
from typer.testing import CliRunner

from nas_bert.blockwise import train_supernet
from nas_bert.cli import app
from nas_bert.config import load_study
from nas_bert.errors import NasBertError
from nas_bert.search import (
    open_context,
    optuna_study_name,
    search,
    seed_architectures,
    storage_for,
    suggest_architecture,
    trial_params,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny study with a trained supernet and a latency table, built once for this module."""
    return make_tiny_study(tmp_path_factory.mktemp("trained")).parent


@pytest.fixture()
def study_file(trained, tmp_path) -> Path:
    return copy_study(trained / "tiny.yaml", tmp_path)


def _counts(study_file: Path, budget: float) -> dict[str, int]:
    study = load_study(study_file)
    st = optuna.load_study(study_name=optuna_study_name(study, budget), storage=storage_for(study))
    trials = st.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState} | {
        "numbers": len({t.number for t in trials}), "total": len(trials)}


def test_search_returns_a_feasible_front(study_file):
    study = load_study(study_file)
    summary = search(study, budget_ms=5.0)
    assert summary["trials"]["complete"] == 24
    assert summary["front"], "a generous budget must leave a feasible front"
    assert all(r["predicted_ms"] <= 5.0 for r in summary["front"])
    assert summary["rescored"] >= 1
    # rerunning a finished search is a no-op that computes no new block score
    again = search(study, budget_ms=5.0)
    assert again["trials"]["complete"] == 24 and again["block_scores_computed"] == 0


def test_budget_below_the_fastest_architecture_fails_at_once(study_file):
    with pytest.raises(NasBertError, match=r"below the fastest architecture .* ms predicted"):
        search(load_study(study_file), budget_ms=1e-4)


def test_seed_students_are_searched_first_and_rescored(study_file):
    study = load_study(study_file)
    ctx = open_context(study, progress=False)
    fastest_ms = ctx.latency.fastest_possible(study.space, ctx.teacher.embeddings_spec())
    seeds = seed_architectures(ctx, 1e9)
    # the fastest student, then the teacher's first 1..blocks x pairs layers at full width, nothing after them
    assert list(seeds) == ["fastest", *(f"teacher-layers-{k}" for k in range(1, 5))]
    full = seeds["teacher-layers-3"].blocks
    assert [b.hidden for b in full[:2]] == [32, 32] and [op.kind for op in full[1].ops] == ["mha", "ffn", "identity", "identity"]
    assert full[1].ops[0].heads == 4 and full[1].ops[1].inner == 64
    for arch in seeds.values():  # each seed's parameters suggest exactly it
        assert suggest_architecture(optuna.trial.FixedTrial(trial_params(arch)), study.space,
                                    ctx.teacher.embeddings_spec()).hash() == arch.hash()
    # a budget just above the fastest student: too tight for most samples, but the seed guarantees a student
    budget = round(fastest_ms + 0.01, 2)
    assert list(seed_architectures(ctx, budget)) == ["fastest"]
    summary = search(study, budget_ms=budget, trials=6)
    st = optuna.load_study(study_name=optuna_study_name(study, budget), storage=storage_for(study))
    first = min(st.get_trials(deepcopy=False), key=lambda t: t.number)
    assert first.user_attrs["seed"] == "fastest" and first.user_attrs["arch_hash"] == seeds["fastest"].hash()
    assert summary["chosen"] is not None and summary["chosen"]["predicted_ms"] <= budget
    assert summary["chosen"]["rescored_loss"] is not None


def test_suggested_architectures_are_valid_and_identity_moves_to_the_end(tiny_space, tiny_teacher):
    emb = tiny_teacher.embeddings_spec()
    fixed = {"b0_hidden": 16, "b0_s0": "mha", "b0_s1": "identity", "b0_s2": "ffn2", "b0_s3": "identity",
             "b1_hidden": 32, "b1_s0": "sepconv3", "b1_s1": "sepconv5", "b1_s2": "mha", "b1_s3": "ffn2"}
    arch = suggest_architecture(optuna.trial.FixedTrial(fixed), tiny_space, emb)
    assert [op.kind for op in arch.blocks[0].ops] == ["mha", "ffn", "identity", "identity"]
    assert arch.blocks[1].ops[2].heads == 4
    st = optuna.create_study()
    for _ in range(30):
        suggest_architecture(st.ask(), tiny_space, emb).validate(tiny_space)


def test_kill_9_then_rerun_continues_with_nothing_lost(study_file):
    cmd = [sys.executable, "-m", "nas_bert", "search", "--config", str(study_file), "--latency-budget-ms", "5",
           "--trials", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = load_study(study_file)
    name = optuna_study_name(study, 5.0)
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and done < 8:
        time.sleep(0.2)
        try:
            st = optuna.load_study(study_name=name, storage=storage_for(study))
            done = len(st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        except KeyError:
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _counts(study_file, 5.0)
    assert 8 <= before["complete"] < 60
    rerun = subprocess.run([*cmd, "--json"], check=False, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _counts(study_file, 5.0)
    assert after["complete"] == 60  # the total equals what was asked
    assert after["running"] == 0
    assert after["numbers"] == after["total"]
    # every trial that was complete before the kill is still there, unchanged
    st = optuna.load_study(study_name=name, storage=storage_for(study))
    assert len([t for t in st.trials if t.state == TrialState.COMPLETE]) == 60


def test_two_workers_share_one_sqlite_file(study_file):
    runner = CliRunner()
    result = runner.invoke(app, ["search", "--config", str(study_file), "--latency-budget-ms", "5",
                                 "--trials", "30", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    counts = _counts(study_file, 5.0)
    assert counts["complete"] == 30
    assert counts["numbers"] == counts["total"]  # no duplicate trial numbers


def test_errors_are_one_line(study_file, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["pareto", "--config", str(study_file)])
    assert res.exit_code == 2 and "no search yet" in res.stderr
    res = runner.invoke(app, ["search", "--config", str(study_file), "--latency-budget-ms", "5",
                              "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    # a supernet checkpoint missing from disk
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(study_file, fresh / "tiny.yaml")
    study = load_study(fresh / "tiny.yaml")
    train_supernet(study)
    for ckpt in (fresh / "tiny" / "supernet").glob("*.pt"):
        ckpt.unlink()
    res = runner.invoke(app, ["search", "--config", str(fresh / "tiny.yaml"), "--latency-budget-ms", "5"])
    assert res.exit_code == 2 and "missing from disk" in res.stderr


def test_newer_schema_is_refused(tmp_path):
    from nas_bert.db import SCHEMA_VERSION, Database, Meta

    url = f"sqlite:///{tmp_path / 'x.db'}"
    db = Database(url)
    with db.session() as s:
        s.get(Meta, "schema_version").value = str(SCHEMA_VERSION + 1)
    with pytest.raises(NasBertError, match="newer than this nas-bert"):
        Database(url)


if os.environ.get("NAS_BERT_SKIP_SLOW"):
    pytestmark = pytest.mark.skip("slow tests skipped")


@pytest.mark.skipif(not os.environ.get("NAS_BERT_TEST_POSTGRES_URL"),
                    reason="set NAS_BERT_TEST_POSTGRES_URL=postgresql+psycopg://user:pw@host/db to run")
def test_two_commands_share_one_postgresql_database(tmp_path):
    """Two separate `nas-bert search` processes (as on two machines) against one PostgreSQL URL."""
    url = os.environ["NAS_BERT_TEST_POSTGRES_URL"]
    study_file = make_tiny_study(tmp_path)
    train = subprocess.run([sys.executable, "-m", "nas_bert", "train-supernet", "-c", str(study_file), "--db", url],
                           check=False, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    cmd = [sys.executable, "-m", "nas_bert", "search", "-c", str(study_file), "--db", url,
           "--latency-budget-ms", "5", "--trials", "30"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    st = optuna.load_study(study_name=optuna_study_name(load_study(study_file, url), 5.0), storage=url)
    trials = st.get_trials(deepcopy=False)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 30
    assert len({t.number for t in trials}) == len(trials)
