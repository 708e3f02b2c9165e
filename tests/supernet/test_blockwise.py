"""Stage 1 end to end on the tiny study: resume equivalence, database rows, a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from sqlalchemy import select

from nas_bert.store import Checkpoint, Database, StudyRow, SupernetRun
from nas_bert.study import load_study
from nas_bert.supernet import BlockwiseObjective, supernet_dir, supernet_key, train_supernet


def _study(file: Path, tag: str, **overrides):
    root = file.parent
    return load_study(file, f"sqlite:///{root / tag}.db", {"workdir": str(root / tag), **overrides})


def _final_weights(study) -> dict[str, torch.Tensor]:
    latest = max(supernet_dir(study).glob("step-*.pt"))
    return torch.load(latest, map_location="cpu", weights_only=False)["model"]


def test_resume_equals_uninterrupted_run(tiny_study_file):
    whole = _study(tiny_study_file, "whole")
    summary = train_supernet(whole)
    assert summary.step == 8

    halves = _study(tiny_study_file, "halves")
    first = train_supernet(halves, stop_after=4)
    assert first.step == 4
    second = train_supernet(halves)
    assert second.step == 8

    a, b = _final_weights(whole), _final_weights(halves)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # a finished stage is a no-op when run again
    again = train_supernet(halves)
    assert again.step == 8


def test_checkpoints_and_rows(tiny_study_file):
    study = _study(tiny_study_file, "rows")
    summary = train_supernet(study)
    files = sorted(supernet_dir(study).glob("step-*.pt"))
    assert [f.name for f in files] == ["step-0000006.pt", "step-0000008.pt"]  # keep_checkpoints=2
    assert not list(supernet_dir(study).glob(".*tmp*"))
    db = Database(study.db_url)
    with db.session() as s:
        assert s.get(StudyRow, "tiny").config["config"]["supernet"]["steps"] == 8
        run = s.scalars(select(SupernetRun)).one()
        assert run.status == "finished" and run.supernet_key == supernet_key(study)
        rows = s.scalars(select(Checkpoint).order_by(Checkpoint.step)).all()
        assert [r.step for r in rows] == [2, 4, 6, 8]
        assert [r.deleted for r in rows] == [1, 1, 0, 0]
        assert rows[-1].sha256 == summary.sha256 and len(rows[-1].sha256) == 64
        assert set(rows[-1].val_losses) >= {"step", "largest", "smallest"}
        assert len(rows[-1].val_losses["largest"]) == study.space.blocks
    # the teacher's own layers are kept as they are: after training, its truncated paths taken from the
    # supernet are the untouched truncations (same fidelity to the teacher's output, same states)
    paths = summary.teacher_paths
    assert [p.layers for p in paths] == [1, 2, 3, 4]
    assert all(p.max_abs_diff <= 1e-5 and abs(p.fidelity_supernet - p.fidelity_untouched) <= 1e-9
               for p in paths)
    # while the shared weights did train (the largest path is frozen; the others moved)
    start = torch.load(min(supernet_dir(study).glob("step-*.pt")), map_location="cpu", weights_only=True)
    assert any(not torch.equal(v, _final_weights(study)[k]) for k, v in start["model"].items() if "frozen" not in k)


def test_without_frozen_teacher_layers_training_moves_them(tiny_study_file):
    study = _study(tiny_study_file, "unfrozen", **{"supernet.keep_teacher_layers": False})
    paths = train_supernet(study).teacher_paths
    assert max(p.max_abs_diff for p in paths) > 1e-4  # shared weights drift: the reason they are kept frozen


def test_sandwich_trains_the_extremes(tiny_space):
    obj = BlockwiseObjective.__new__(BlockwiseObjective)
    obj.space, obj.seed, obj.sampling, obj.sandwich_every = tiny_space, 0, "sandwich", 1
    jobs = obj.jobs(3)
    assert len(jobs) == 3 * tiny_space.blocks
    obj.sandwich_every = 4  # the extremes only every 4th step
    assert len(obj.jobs(8)) == 3 * tiny_space.blocks and len(obj.jobs(9)) == tiny_space.blocks
    obj.sampling = "uniform"
    assert obj.jobs(3) == obj.jobs(3)[: tiny_space.blocks] and len(obj.jobs(3)) == tiny_space.blocks
    assert obj.jobs(3) != obj.jobs(4)


def test_kill_and_rerun_continues(tiny_study_file):
    """A real SIGKILL in the middle of training; the rerun continues from the last checkpoint."""
    cmd = [sys.executable, "-m", "nas_bert", "train-supernet", "--config", str(tiny_study_file), "--steps", "400"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ckdir = supernet_dir(load_study(tiny_study_file))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # generous: a loaded machine starts the process slowly
    while time.time() < deadline and not any(ckdir.glob("step-*.pt")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.stem.split("-")[1]) for p in ckdir.glob("step-*.pt"))
    assert 0 < killed_at < 400
    done = subprocess.run([*cmd, "--json"], check=False, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert '"step": 400' in done.stdout
    study = load_study(tiny_study_file)
    db = Database(study.db_url)
    with db.session() as s:
        steps = [r.step for r in s.scalars(select(Checkpoint).order_by(Checkpoint.step))]
    assert steps[-1] == 400 and len(steps) == len(set(steps))


def test_two_processes_with_torchrun(tiny_study_file):
    """Data-parallel training on 2 CPU processes (gloo): one report, one set of rows, a finished run."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "nas_bert", "train-supernet",
           "--config", str(tiny_study_file), "--json"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count('"world_size": 2') == 1
    study = load_study(tiny_study_file)
    with Database(study.db_url).session() as s:
        assert s.scalars(select(SupernetRun)).one().status == "finished"
        assert [r.step for r in s.scalars(select(Checkpoint).order_by(Checkpoint.step))] == [2, 4, 6, 8]
