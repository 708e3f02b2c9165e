"""Corrupt files are one-line errors naming the file and the fix, and nothing else is lost: a study database
overwritten with garbage or truncated, a supernet checkpoint changed on disk or made to unpickle code, a
damaged or foreign layer-mapping GA state."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import dies_after
from typer.testing import CliRunner

from nas_bert.cli import app
from nas_bert.distill import MappingSearch, best_memoised, protocol_hash
from nas_bert.errors import NasBertError
from nas_bert.space import architecture as A
from nas_bert.store import ArchitectureRow, Database, MappingEval, safe_torch_load
from nas_bert.study import load_study

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

CORRUPT_DB = "is not a SQLite database or is corrupt; restore it from a backup or move it away to start afresh"


def _run(*args: str):
    return runner.invoke(app, list(args))


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dump(db_file: Path) -> list[str]:
    with sqlite3.connect(db_file) as con:
        return list(con.iterdump())


# -- the study database ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["status"],
    ["pareto"],
    ["search", "--latency-budget-ms", "5"],
    ["latency"],
])
def test_garbage_study_database(tiny_study_file, command):
    db = tiny_study_file.parent / "tiny.db"
    db.write_bytes(b"this is not SQLite\n" + os.urandom(8192))
    before = _files(tiny_study_file.parent)
    err = _one_line_error(_run(command[0], "--config", str(tiny_study_file), *command[1:]), str(db), CORRUPT_DB)
    assert "Traceback" not in err
    assert _files(tiny_study_file.parent) == before  # the file's bytes untouched, nothing written beside it


def test_truncated_study_database(tmp_path):
    db_file = tmp_path / "tiny.db"
    db = Database(f"sqlite:///{db_file}")
    with db.session() as s:
        for i in range(2000):
            s.add(ArchitectureRow(study="tiny", hash=f"h{i}", arch_json="{}" * 40, params=1, flops=1,
                                  checkpoint_sha="x", predicted_ms=1.0, approx_loss=1.0))
    db.dispose()
    with sqlite3.connect(db_file) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = db_file.read_bytes()
    assert len(data) > 3 * 4096
    db_file.write_bytes(data[: len(data) // 3])
    before = _files(tmp_path)
    with pytest.raises(NasBertError) as e, Database(f"sqlite:///{db_file}").session() as s:
        s.query(ArchitectureRow).all()
    assert str(db_file) in str(e.value) and CORRUPT_DB in str(e.value) and "\n" not in str(e.value)
    assert _files(tmp_path) == before


def test_integrity_errors_still_reach_the_caller(tmp_path):
    """Only a damaged file becomes the one-line error: a unique-key clash stays the caller's to handle."""
    from sqlalchemy.exc import IntegrityError

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    row = {"study": "s", "arch_hash": "a", "mapping_json": "[1]", "protocol_hash": "p", "fitness": 1.0, "generation": 0}
    with db.session() as s:
        s.add(MappingEval(**row))
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(MappingEval(**row))


# -- the supernet checkpoint the search loads -------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny study with a 2-step supernet (no latency table, no search): enough for the search to load it."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copy(ROOT / "studies" / "tiny.yaml", root / "tiny.yaml")
    result = _run("train-supernet", "--config", str(root / "tiny.yaml"), "--steps", "2")
    assert result.exit_code == 0, result.output
    return root / "tiny.yaml"


def _copy_trained(src: Path, dst: Path) -> tuple[Path, Path]:
    """A copy of the trained study whose database points at the copied checkpoint; (study file, checkpoint)."""
    shutil.copytree(src.parent, dst, ignore=shutil.ignore_patterns("*.db", "*.db-wal", "*.db-shm"))
    with sqlite3.connect(src.parent / "tiny.db") as source, sqlite3.connect(dst / "tiny.db") as target:
        source.backup(target)
    with sqlite3.connect(dst / "tiny.db") as con:
        con.execute("UPDATE nasbert_checkpoints SET path = replace(path, ?, ?)", (str(src.parent), str(dst)))
        (path,) = con.execute("SELECT path FROM nasbert_checkpoints ORDER BY step DESC LIMIT 1").fetchone()
    assert Path(path).is_file() and str(dst) in path
    return dst / "tiny.yaml", Path(path)


def _no_search_started(study_file: Path) -> None:
    with sqlite3.connect(study_file.parent / "tiny.db") as con:  # no Optuna study was created
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "nasbert_checkpoints" in tables
        assert "studies" not in tables or con.execute("SELECT count(*) FROM studies").fetchone() == (0,)


def test_truncated_supernet_checkpoint_is_caught_by_its_sha256(trained, tmp_path):
    study_file, ckpt = _copy_trained(trained, tmp_path / "study")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    db_before = _dump(study_file.parent / "tiny.db")
    err = _one_line_error(_run("search", "--config", str(study_file), "--latency-budget-ms", "5"),
                          str(ckpt), "does not match the sha256 recorded", "delete it and rerun")
    assert "Traceback" not in err
    assert ckpt.read_bytes() == data[: len(data) // 2]  # left as it was for the user to inspect
    assert _dump(study_file.parent / "tiny.db") == db_before
    _no_search_started(study_file)


def test_a_checkpoint_changed_in_place_is_refused_when_training_resumes(trained, tmp_path):
    """One byte of the newest checkpoint changed, its size kept: resuming training refuses it in one line
    (the sha256 written beside it at saving), and the file is left for the user."""
    study_file, ckpt = _copy_trained(trained, tmp_path / "study")
    assert ckpt.with_name(ckpt.name + ".sha256").is_file()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    err = _one_line_error(_run("train-supernet", "--config", str(study_file), "--steps", "4"),
                          str(ckpt), "does not match the sha256 recorded", "delete it and rerun")
    assert "Traceback" not in err and ckpt.read_bytes() == bytes(data)


def test_checkpoint_is_never_unpickled(trained, tmp_path):
    """A checkpoint replaced by a pickle that runs code, with the database's sha256 updated to match (so the
    sha256 check passes): loading refuses it (weights_only) and the code never runs."""
    study_file, ckpt = _copy_trained(trained, tmp_path / "study")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"meta": {}, "model": Evil()}, ckpt)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    with sqlite3.connect(study_file.parent / "tiny.db") as con:
        con.execute("UPDATE nasbert_checkpoints SET sha256 = ? WHERE path = ?", (sha, str(ckpt)))
    err = _one_line_error(_run("search", "--config", str(study_file), "--latency-budget-ms", "5"),
                          str(ckpt), "is corrupt or not a nas-bert file")
    assert "Traceback" not in err
    assert not marker.exists()
    _no_search_started(study_file)
    with pytest.raises(NasBertError, match="corrupt or not a nas-bert file"):
        safe_torch_load(ckpt, sha)
    assert not marker.exists()


def test_garbage_checkpoint_without_a_recorded_sha(tmp_path):
    path = tmp_path / "step-0000002.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NasBertError) as e:
        safe_torch_load(path, what="supernet checkpoint")
    msg = str(e.value)
    assert msg.startswith(f"supernet checkpoint {path} is corrupt") and "delete it and rerun" in msg and "\n" not in msg


# -- the layer-mapping GA's state -----------------------------------------------------------------------
TARGET = [2, 2, 3, 4]


def _fitness(m):
    return sum((a - b) ** 2 for a, b in zip(m, TARGET, strict=True)) + 0.01 * sum(m)


def _search(study_file, tmp_path, fitness=_fitness, tag="ga", **overrides):
    study = load_study(study_file, overrides={"mapping.generations": 3, "mapping.population": 6,
                                              "mapping.enumerate_below": 0, "mapping.confirm_seeds": 0, **overrides})
    arch = A.largest(study.space, A.Embeddings(30522, 512, 2, 32))
    return MappingSearch(study, Database(f"sqlite:///{tmp_path / tag}.db"), arch, 4, fitness, tmp_path / tag)


def _state_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("ga_state*"))


def test_ga_state_is_json_keyed_by_the_protocol(tiny_study_file, tmp_path):
    search = _search(tiny_study_file, tmp_path)
    whole = search.run(progress=False)
    (state,) = _state_files(tmp_path / "ga")
    assert state.name == f"ga_state-{search.protocol}.json"
    blob = json.loads(state.read_text())  # plain JSON, no pickle
    assert blob["protocol"] == search.protocol and blob["generation"] == 3
    assert all(isinstance(v, int) for ind in blob["population"] for v in ind["mapping"])
    assert [r["gen"] for r in blob["logbook"]["records"]] == [0, 1, 2, 3]
    assert len(blob["random"][1]) == 625
    assert blob["hall_of_fame"][0] == whole["best"]

    # a changed proxy protocol starts afresh: its own state file, its own memoised fitness values
    old_bytes = state.read_bytes()
    calls = []
    other = _search(tiny_study_file, tmp_path, fitness=lambda m: calls.append(m) or _fitness(m) + 1.0,
                    **{"mapping.proxy_steps": 3})
    assert other.protocol != search.protocol
    fresh = other.run(progress=False)
    assert other.evaluated > 0 and len(calls) == other.evaluated  # nothing reused from the old protocol
    assert fresh["best"]["fitness"] == pytest.approx(whole["best"]["fitness"] + 1.0)
    assert state.read_bytes() == old_bytes  # the old protocol's state untouched
    assert len(_state_files(tmp_path / "ga")) == 2
    with Database(f"sqlite:///{tmp_path / 'ga'}.db").session() as s:
        assert {r.protocol_hash for r in s.query(MappingEval).all()} == {search.protocol, other.protocol}
    # the best memoised mapping is read for the current protocol only
    assert best_memoised(other.db, other.study, other.arch) == (fresh["best"]["mapping"], fresh["best"]["fitness"])
    assert best_memoised(search.db, search.study, search.arch) == (whole["best"]["mapping"], whole["best"]["fitness"])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "bad-mapping"])
def test_corrupt_ga_state_is_one_line_error_then_delete_and_rerun(tiny_study_file, tmp_path, damage):
    whole = _search(tiny_study_file, tmp_path, tag="whole").run(progress=False)

    killer = dies_after(8, _fitness)
    with pytest.raises(KeyboardInterrupt):  # killed in generation 2
        _search(tiny_study_file, tmp_path, fitness=killer).run(progress=False)
    (state,) = _state_files(tmp_path / "ga")
    text = state.read_text()
    if damage == "garbage":
        state.write_bytes(b"\x80\x04garbage" + os.urandom(64))
    elif damage == "truncated":
        state.write_text(text[: len(text) // 2])
    elif damage == "foreign":  # another protocol's state under this name
        state.write_text(text.replace(json.loads(text)["protocol"], "0" * 16))
    else:
        blob = json.loads(text)
        blob["population"][0]["mapping"] = [4, 1, 1, 1]  # not monotone
        state.write_text(json.dumps(blob))
    damaged = state.read_bytes()
    db_file = tmp_path / "ga.db"
    memo = _dump(db_file)

    with pytest.raises(NasBertError) as e:
        _search(tiny_study_file, tmp_path).run(progress=False)
    msg = str(e.value)
    assert str(state) in msg and "corrupt" in msg and "delete it and rerun" in msg and "\n" not in msg
    assert state.read_bytes() == damaged and _dump(db_file) == memo  # nothing overwritten, nothing lost

    # what the message promises: deleted, the search replays from generation 0 on the memoised fitness
    # values and ends where an uninterrupted run ends
    before = killer.calls["n"]
    state.unlink()
    search = _search(tiny_study_file, tmp_path)
    resumed = search.run(progress=False)
    assert resumed["best"] == whole["best"] and resumed["logbook"] == whole["logbook"]
    assert resumed["hall_of_fame"] == whole["hall_of_fame"]
    memoised = sum(1 for line in memo if "INSERT INTO \"nasbert_mapping_evals\"" in line)
    assert memoised == before - 1 > 0  # the call that died never returned a value
    assert search.evaluated == whole["fitness_evaluations"] - memoised  # the memoised ones were not rerun


def test_protocol_hash_follows_the_proxy_settings(tiny_study_file):
    study = load_study(tiny_study_file)
    h = protocol_hash(study.cfg.mapping, study)
    assert h == protocol_hash(study.cfg.mapping, load_study(tiny_study_file))
    for change in ({"mapping.proxy_steps": 7}, {"distill.temperature": 3.0}, {"distill.weights.hidden": 0.5},
                   {"corpus.max_seq_length": 24}):
        other = load_study(tiny_study_file, overrides=change)
        assert protocol_hash(other.cfg.mapping, other) != h, change
    for same in ({"distill.steps": 7}, {"distill.checkpoint_every": 3}):  # the proxy does not use these
        other = load_study(tiny_study_file, overrides=same)
        assert protocol_hash(other.cfg.mapping, other) == h, same
    assert protocol_hash(study.cfg.mapping, study, "sha-a") != protocol_hash(study.cfg.mapping, study, "sha-b")
