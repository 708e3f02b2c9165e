"""Bad input gets a one-line error naming the problem and the fix, and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nas_bert.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def _edit(study: Path, **changes) -> Path:
    data = yaml.safe_load(study.read_text())
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    study.write_text(yaml.safe_dump(data))
    return study


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err


def _assert_nothing_written(study: Path) -> None:
    leftovers = [p.name for p in study.parent.iterdir() if p.name != study.name and not p.name.endswith(".yaml")]
    assert leftovers == [], leftovers


def test_missing_study_file(tmp_path):
    _assert_one_line_error(_run("train-supernet", "--config", str(tmp_path / "nope.yaml")), "not found", "--config")


def test_corrupt_yaml(tiny_study_file):
    tiny_study_file.write_text("name: tiny\nsupernet: [unclosed\n")
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "not valid YAML")


@pytest.mark.parametrize(
    "changes, needles",
    [
        ({"supernet.stpes": 3}, ["supernet.stpes", "unknown key"]),
        ({"supernet.steps": 0}, ["supernet.steps", "greater than or equal to 1"]),
        ({"supernet.sampling": "random"}, ["supernet.sampling", "'uniform' or 'sandwich'"]),
        ({"device": "tpu"}, ["device"]),
    ],
)
def test_wrong_key_or_value(tiny_study_file, changes, needles):
    _edit(tiny_study_file, **changes)
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), *needles)
    _assert_nothing_written(tiny_study_file)


def test_missing_teacher_path(tiny_study_file, tmp_path):
    _edit(tiny_study_file, teacher=str(tmp_path / "no-such-model"))
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "does not exist", "minilm-l6")
    _assert_nothing_written(tiny_study_file)


def test_teacher_folder_without_config(tiny_study_file, tmp_path):
    (tmp_path / "empty-model").mkdir()
    _edit(tiny_study_file, teacher=str(tmp_path / "empty-model"))
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "no config.json")


def test_unknown_alias(tiny_study_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _edit(tiny_study_file, teacher="minilm-l7")
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "could not be loaded", "minilm-l6")
    _assert_nothing_written(tiny_study_file)


def test_unknown_search_space(tiny_study_file):
    _edit(tiny_study_file, search_space="huge")
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "search space 'huge' not found")


def test_space_wider_than_teacher(tiny_study_file):
    space = tiny_study_file.parent / "wide.yaml"
    shutil.copy(Path(__file__).resolve().parents[1] / "search_spaces" / "tiny.yaml", space)
    _edit(space, hidden_sizes=[16, 64])
    _edit(tiny_study_file, search_space=str(space))
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "up to 64", "hidden size is 32")
    _assert_nothing_written(tiny_study_file)


def test_empty_corpus(tiny_study_file):
    empty = tiny_study_file.parent / "empty.txt"
    empty.write_text("")
    _edit(tiny_study_file, **{"corpus.name": str(empty)})
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "empty")
    leftovers = [p.name for p in tiny_study_file.parent.iterdir() if p.suffix not in (".yaml", ".txt")]
    assert leftovers == []


def test_checkpoint_from_another_space(tiny_study_file):
    assert _run("train-supernet", "--config", str(tiny_study_file), "--steps", "2").exit_code == 0
    space = tiny_study_file.parent / "other.yaml"
    shutil.copy(Path(__file__).resolve().parents[1] / "search_spaces" / "tiny.yaml", space)
    _edit(space, conv_kernels=[3])
    _edit(tiny_study_file, search_space=str(space))
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "another", "start afresh")
