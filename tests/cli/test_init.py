"""`nas-bert init` and the shipped studies and spaces: what a user of the installed wheel starts from."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nas_bert.cli import app
from nas_bert.shipped import shipped_names
from nas_bert.study import load_study

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_init_writes_the_demo_with_the_users_name_teacher_corpus_and_budgets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.txt").write_text("a sentence\nanother one\n")
    res = runner.invoke(app, ["init", "mine", "--teacher", "tiny-random-bert", "--corpus", "texts.txt",
                              "--budget-ms", "3", "--budget-ms", "7.5"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "mine.yaml").read_text()
    demo = (ROOT / "studies" / "demo.yaml").read_text()
    assert text.count("#") == demo.count("#")  # the demo's comments kept
    data = yaml.safe_load(text)
    assert data["name"] == "mine" and data["teacher"] == "tiny-random-bert"
    assert data["corpus"]["name"] == "texts.txt" and data["search"]["budgets_ms"] == [3.0, 7.5]
    assert {k: v for k, v in data.items() if k not in ("name", "teacher", "corpus", "search")} == \
        {k: v for k, v in yaml.safe_load(demo).items() if k not in ("name", "teacher", "corpus", "search")}
    study = load_study("mine.yaml")
    assert study.cfg.corpus.name == str(tmp_path / "texts.txt") and study.db_url == f"sqlite:///{tmp_path / 'mine.db'}"


def test_init_from_a_study_without_budgets_adds_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "t", "--from", "tiny", "--budget-ms", "5"]).exit_code == 0
    assert load_study(tmp_path / "t.yaml").cfg.search.budgets_ms == [5.0]
    assert runner.invoke(app, ["init", "u", "--from", "tiny", "--budget-x", "0.25", "--budget-ms", "5"]).exit_code == 0
    search = load_study(tmp_path / "u.yaml").cfg.search
    assert search.budgets_ms == [5.0] and search.budgets_x == [0.25]


def test_init_with_budgets_replaces_the_demos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "r", "--budget-x", "0.2", "--budget-x", "0.4"]).exit_code == 0
    search = load_study(tmp_path / "r.yaml").cfg.search
    assert search.budgets_ms == [] and search.budgets_x == [0.2, 0.4]
    text = (tmp_path / "r.yaml").read_text()
    assert "budgets_x: [0.2, 0.4]   # fractions of the teacher's latency there" in text
    assert "a quarter and a half" not in text  # the demo's comment on its own budgets went with them
    assert runner.invoke(app, ["init", "m", "--budget-ms", "4"]).exit_code == 0
    search = load_study(tmp_path / "m.yaml").cfg.search
    assert search.budgets_ms == [4.0] and search.budgets_x == []  # the demo's fractions gave way to it


@pytest.mark.parametrize("args, words", [
    (["init", "bad/name"], ["study name", "letters"]),
    (["init", "x", "--from", "nope"], ["no shipped study 'nope'", "demo"]),
    (["init", "x", "--budget-ms", "0"], ["--budget-ms", "> 0"]),
    (["init", "x", "--budget-x", "2"], ["budgets_x", "fraction of the teacher"]),
    (["init", "exists"], ["exists.yaml exists", "--force"]),
])
def test_init_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists.yaml").write_text("name: exists\n")
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and all(w in line for w in words), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.yaml"]
    assert (tmp_path / "exists.yaml").read_text() == "name: exists\n"


def test_a_shipped_study_named_bare_writes_its_database_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = load_study("demo")
    assert study.file == (ROOT / "studies" / "demo.yaml").resolve()
    assert study.db_url == f"sqlite:///{tmp_path / 'demo.db'}" and study.workdir == tmp_path / "demo"
    assert study.space.layer_slots  # `search_space: auto`, found by name too
    res = runner.invoke(app, ["status", "--config", "nothing-here"])
    assert res.exit_code == 2 and "nas-bert init" in res.output and "demo" in res.output


def test_the_wheel_carries_the_search_spaces_and_studies(tmp_path):
    src = tmp_path / "src"  # built from a copy: a build writes build/ beside its sources
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("nas_bert", "search_spaces", "studies"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("nas_bert-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"nas_bert/search_spaces/{n}.yaml" for n in shipped_names("search_spaces")} <= names
    assert {f"nas_bert/studies/{n}.yaml" for n in shipped_names("studies")} <= names
    assert not any(n.endswith(".db") for n in names)
