"""Artefact identity and whole writes: a changed input redoes its stage and what depends on it, an
unchanged one is a no-op; a failed write leaves the old artefact; a corrupt file is a one-line error."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import BaseModel
from sqlalchemy import select, update

from nas_bert import pipeline
from nas_bert.errors import NasBertError
from nas_bert.pipeline import Runner, stage_status
from nas_bert.store import atomic_file, atomic_folder, fingerprint, safe_torch_load
from nas_bert.study import load_study
from nas_bert.train import atomic_torch_save, rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[2]


def test_fingerprint_is_content_not_order():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint("x", {"a": 1}) != fingerprint({"a": 1}, "x")


def test_a_failed_write_leaves_the_old_file_and_folder(tmp_path):
    f = tmp_path / "state.json"
    f.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(f, "w") as out:
        out.write("half of the new")
        raise RuntimeError("killed")
    assert f.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]

    d = tmp_path / "student"
    d.mkdir()
    (d / "model.safetensors").write_text("old weights")
    with pytest.raises(RuntimeError), atomic_folder(d) as tmp:
        (tmp / "model.safetensors").write_text("half")
        raise RuntimeError("killed")
    assert (d / "model.safetensors").read_text() == "old weights"
    with atomic_folder(d) as tmp:
        (tmp / "model.safetensors").write_text("new weights")
    assert (d / "model.safetensors").read_text() == "new weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "student"]  # nothing left beside them


def test_threads_writing_one_file_at_once_all_succeed_and_leave_one_whole_version(tmp_path):
    """Eight threads of one process writing the same artefact (the service's parallel downloads)."""
    import threading

    target, errors = tmp_path / "student.tar.gz", []
    start = threading.Barrier(8)

    def write(i: int) -> None:
        try:
            start.wait()
            with atomic_file(target, "w") as f:
                f.write(str(i) * 10_000)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    text = target.read_text()
    assert len(text) == 10_000 and len(set(text)) == 1  # one writer's whole file, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["student.tar.gz"]


def test_an_interrupt_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    d = tmp_path / "export"
    d.mkdir()
    (d / "model.safetensors").write_text("old weights")
    real, calls = os.replace, {"n": 0}

    def interrupted(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the old folder moved aside, the new one not yet in place
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr("nas_bert.store.identity.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_folder(d) as tmp:
        (tmp / "model.safetensors").write_text("new weights")
    monkeypatch.undo()
    assert (d / "model.safetensors").read_text() == "old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_model_folder_is_known_by_its_content_and_hashed_once(tmp_path, monkeypatch):
    from nas_bert.store import identity

    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x00" * 4096)
    first = identity.folder_identity(folder)
    hashed = []
    real = identity.file_sha256
    monkeypatch.setattr(identity, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    assert identity.folder_identity(folder) == first and hashed == []  # remembered: nothing reread
    before = weights.stat()
    weights.write_bytes(b"\x01" + b"\x00" * 4095)  # new weights, the same size
    # a write within the file system's timestamp tick could keep the old mtime: make the test not depend on it
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert weights.stat().st_size == before.st_size
    assert identity.folder_identity(folder) != first and hashed == ["model.safetensors"]
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")  # hidden files (download caches, locks) are not the model
    assert identity.folder_identity(folder) == identity.folder_identity(folder)
    assert "lock" not in hashed


def test_checkpoints_load_without_unpickling_and_corrupt_ones_are_one_line_errors(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    path = tmp_path / "step-0000002.pt"
    sha = atomic_torch_save({"model": {"w": torch.ones(2)}, "rng": rng_state(), "meta": {"inputs": "abc"}, "step": 2}, path)
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    state = safe_torch_load(path, sha)  # weights_only=True: the RNG states are tensors and lists
    set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want

    with pytest.raises(NasBertError, match="does not match the sha256") as e:
        safe_torch_load(path, "0" * 64)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated file
    with pytest.raises(NasBertError, match="corrupt") as e:
        safe_torch_load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


class Ran(BaseModel):
    """A stand-in stage's result."""

    ran: str


class Calls(dict):
    def fn(self, name: str):
        def run():
            self[name] = self.get(name, 0) + 1
            return Ran(ran=name)
        return run


def _run_chain(study, calls: Calls) -> list[tuple[str, str, bool]]:
    """The real plan's dependencies with stand-in stage functions: what reran."""
    r = Runner(study, echo=lambda _: None)
    r.stage("supernet", "", None, calls.fn("supernet"), Ran)
    r.stage("latency", "", None, calls.fn("latency"), Ran)
    for name in ("search", "finalists", "map-layers", "distill", "evaluate"):
        r.stage(name, "5ms", None, calls.fn(name), Ran)
    r.stage("export", "5", None, calls.fn("export"), Ran, after=tuple((u, "5ms") for u in pipeline.PLAN["export"][1]))
    r.stage("reference", "5ms", None, calls.fn("reference"), Ran)
    r.db.dispose()
    return [(n, k, skipped) for n, k, _, skipped in r.done]


def _ran(done: list[tuple[str, str, bool]]) -> list[str]:
    return [n for n, _, skipped in done if not skipped]


@pytest.mark.parametrize(("change", "rerun"), [
    ({}, []),
    ({"distill.lr": 1e-3}, ["finalists", "map-layers", "distill", "evaluate", "export", "reference"]),
    ({"evaluate.finetune_steps": 7}, ["evaluate", "export", "reference"]),
    ({"mapping.population": 6}, ["map-layers", "distill", "evaluate", "export"]),  # the reference is the teacher
    ({"latency.finalist_runs": 3}, ["finalists", "map-layers", "distill", "evaluate", "export", "reference"]),
    ({"latency.threads": 1}, ["latency", "search", "finalists", "map-layers", "distill", "evaluate", "export",
                              "reference"]),
    ({"corpus.max_seq_length": 24}, ["supernet", "latency", "search", "finalists", "map-layers", "distill",
                                     "evaluate", "export", "reference"]),
    ({"search.budgets_ms": [5.0, 9.0]}, []),  # a budget added redoes none of the others' stages
])
def test_each_changed_input_redoes_exactly_its_stages(tmp_path, change, rerun):
    shutil.copy(ROOT / "studies" / "tiny.yaml", tmp_path / "tiny.yaml")
    study = load_study(tmp_path / "tiny.yaml")
    calls = Calls()
    assert _ran(_run_chain(study, calls)) == ["supernet", "latency", "search", "finalists", "map-layers", "distill",
                                              "evaluate", "export", "reference"]
    _finished(study, "2000-01-01T00:00:00+00:00")
    changed = load_study(tmp_path / "tiny.yaml", overrides=change)
    assert _ran(_run_chain(changed, calls)) == rerun
    assert _ran(_run_chain(changed, calls)) == []  # and then it is current
    # a stage redone says when it last finished, one skipped when it did
    assert {n for n, at in _finished(study).items() if not at.startswith("2000")} == set(rerun)


def _finished(study, mark: str | None = None) -> dict[str, str]:
    """Each stage's finished_at (`mark`: set to it first)."""
    from nas_bert.store import Database, StageRow

    db = Database(study.db_url)
    with db.session() as s:
        rows = list(s.scalars(select(StageRow)))
        for r in rows if mark else []:
            s.execute(update(StageRow).where(StageRow.id == r.id).values(finished_at=mark))
        out = {r.stage: r.finished_at for r in s.scalars(select(StageRow))}
    db.dispose()
    return out


def test_a_result_recorded_in_another_form_is_made_again_and_status_says_why(tmp_path):
    """A recorded summary that does not read as the stage's result type (an older nas-bert's) is not current."""
    shutil.copy(ROOT / "studies" / "tiny.yaml", tmp_path / "tiny.yaml")
    study = load_study(tmp_path / "tiny.yaml", overrides={"search.budgets_ms": [5.0]})
    calls = Calls()
    _run_chain(study, calls)  # every stage recorded as a `Ran`, which reads as none of the real results

    class Other(BaseModel):
        other: int

    r = Runner(study, echo=lambda _: None)
    assert r.stage("latency", "", None, lambda: Other(other=1), Other) == Other(other=1)
    assert r.stage("latency", "", None, calls.fn("latency"), Other) == Other(other=1)  # now read back: skipped
    assert [skipped for *_, skipped in r.done] == [False, True]
    r.db.dispose()
    status = {(s.stage, s.key): s for s in stage_status(study)}
    assert status[("supernet", "")].state == "to redo"
    assert status[("supernet", "")].why.startswith("recorded by an older nas-bert")
    assert status[("search", "5ms")].why == "upstream not current: supernet, latency"


def test_status_of_a_study_never_run_makes_no_database(tmp_path):
    """`nas-bert status` before any run: every stage to run, the database named, and no database file made."""
    from nas_bert.status import study_status

    shutil.copy(ROOT / "studies" / "tiny.yaml", tmp_path / "tiny.yaml")
    study = load_study(tmp_path / "tiny.yaml", overrides={"search.budgets_ms": [5.0]})
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status = study_status(study)
    assert status.db == study.db_url and status.supernet is None and not status.searches
    assert {s.state for s in status.stages} == {"to run"} and len(status.stages) >= 8
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written beside the study file


def test_an_edited_space_file_redoes_everything_and_status_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "RESULTS", dict.fromkeys(pipeline.RESULTS, Ran))  # the stand-ins' results
    space = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data["search_space"] = str(tmp_path / "space.yaml")
    data["search"] = {**data.get("search", {}), "budgets_ms": [5.0]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    calls = Calls()
    _run_chain(load_study(tmp_path / "tiny.yaml"), calls)
    assert {r.state for r in stage_status(load_study(tmp_path / "tiny.yaml"))} == {"current"}

    space["conv_kernels"] = [3]  # same name, other content
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    study = load_study(tmp_path / "tiny.yaml")
    status = {(r.stage, r.key): r for r in stage_status(study)}
    assert status[("supernet", "")].state == "to redo" and "space" in status[("supernet", "")].why
    assert status[("evaluate", "5ms")].state == "to redo"
    assert len(_ran(_run_chain(study, calls))) == 9

    # only the evaluation's settings changed: status names the input, and the stages after it are behind it
    study = load_study(tmp_path / "tiny.yaml", overrides={"evaluate.finetune_steps": 7})
    status = {(r.stage, r.key): r for r in stage_status(study)}
    assert status[("distill", "5ms")].state == "current"
    assert status[("evaluate", "5ms")].why == "changed: evaluate"
    assert status[("export", "5")].why == "upstream not current: evaluate 5ms"


def test_a_new_supernet_setting_trains_a_new_supernet_and_keeps_the_old(tiny_study_file):
    from nas_bert.supernet import supernet_dir, train_supernet

    study = load_study(tiny_study_file)
    first = train_supernet(study)
    assert Path(first.checkpoint).parent == supernet_dir(study)
    old = {p.name: p.read_bytes() for p in supernet_dir(study).glob("step-*.pt")}
    # steps only extend the run (same identity); the learning rate makes other weights: a new supernet
    assert supernet_dir(load_study(tiny_study_file, overrides={"supernet.steps": 10})) == supernet_dir(study)
    changed = load_study(tiny_study_file, overrides={"supernet.lr": 3e-3})
    assert supernet_dir(changed) != supernet_dir(study)
    second = train_supernet(changed, stop_after=2)
    assert second.step == 2 and second.sha256 != first.sha256  # trained from the start, not resumed
    assert {p.name: p.read_bytes() for p in supernet_dir(study).glob("step-*.pt")} == old


def test_a_search_made_from_other_inputs_starts_afresh_unless_it_is_running(tmp_path):
    import optuna
    from conftest import make_tiny_study
    from optuna.trial import TrialState

    from nas_bert.search import (
        open_context,
        optuna_study_name,
        prepare_search,
        search,
        search_inputs,
        storage_for,
    )

    study_file = make_tiny_study(tmp_path, search_budget=5.0)
    changed = load_study(study_file, overrides={"search.seed": 1})  # another sampler stream: other inputs
    name, storage = optuna_study_name(changed, 5.0), storage_for(changed)
    old = optuna.load_study(study_name=name, storage=storage)
    assert len(old.get_trials(states=(TrialState.COMPLETE,))) == changed.cfg.search.trials
    ctx = open_context(changed, progress=False)
    assert old.user_attrs["inputs"] != search_inputs(ctx)
    live = old.ask()  # a worker elsewhere is in the middle of a trial: its study is not deleted under it
    with pytest.raises(NasBertError, match="running elsewhere"):
        prepare_search(ctx, 5.0)
    old.tell(live, state=TrialState.FAIL)
    prepare_search(ctx, 5.0)
    with pytest.raises(KeyError):
        optuna.load_study(study_name=name, storage=storage)
    search(changed, 5.0)
    new = optuna.load_study(study_name=name, storage=storage)
    assert new.user_attrs["inputs"] == search_inputs(ctx)
    assert len(new.get_trials(states=(TrialState.COMPLETE,))) == changed.cfg.search.trials
