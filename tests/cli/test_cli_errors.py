"""Bad input gets a one-line error naming the problem and the fix, and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nas_bert.cli import app
from nas_bert.study import load_study

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
        ({"supernet.steps": -1}, ["supernet.steps", "greater than or equal to 0"]),
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
    # huggingface_hub reads the variable once, at import: an earlier test may have imported it already
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _edit(tiny_study_file, teacher="minilm-l7")
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "could not be loaded", "minilm-l6")
    _assert_nothing_written(tiny_study_file)


def test_unknown_search_space(tiny_study_file):
    _edit(tiny_study_file, search_space="huge")
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), "search space 'huge' not found")


def test_space_wider_than_teacher(tiny_study_file, tiny_teacher):  # the teacher built beforehand: its bars are not the error
    space = tiny_study_file.parent / "wide.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "search_spaces" / "tiny.yaml", space)
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


def test_a_space_of_other_content_trains_its_own_supernet(tiny_study_file):
    """Same space name, other content: the old supernet is neither resumed nor touched."""
    from nas_bert.supernet import supernet_dir

    assert _run("train-supernet", "--config", str(tiny_study_file), "--steps", "2").exit_code == 0
    first = supernet_dir(load_study(tiny_study_file))
    old = {p.name: p.read_bytes() for p in first.glob("step-*.pt")}
    space = tiny_study_file.parent / "other.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "search_spaces" / "tiny.yaml", space)
    _edit(space, conv_kernels=[3])
    _edit(tiny_study_file, search_space=str(space))
    assert _run("train-supernet", "--config", str(tiny_study_file), "--steps", "2").exit_code == 0
    second = supernet_dir(load_study(tiny_study_file))
    assert second != first and sorted(p.name for p in second.glob("step-*.pt")) == ["step-0000002.pt"]
    assert {p.name: p.read_bytes() for p in first.glob("step-*.pt")} == old


BUDGET = "budget must be a finite number of ms > 0"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "-0.5"])
def test_latency_budget_must_be_finite_and_positive(tiny_study_file, value):
    # `--opt=value`: a negative number as its own argument would read as an option
    result = _run("search", "--config", str(tiny_study_file), f"--latency-budget-ms={value}")
    _assert_one_line_error(result, "--latency-budget-ms", BUDGET)
    _assert_nothing_written(tiny_study_file)


@pytest.mark.parametrize("args, needles", [
    (["search", "--latency-budget-ms", "5", "--trials", "0"], ["--trials 0", ">= 1"]),
    (["search", "--latency-budget-ms", "5", "--trials=-3"], ["--trials -3", ">= 1"]),
    (["search", "--latency-budget-ms", "5", "--workers", "0"], ["--workers 0", ">= 1"]),
    (["train-supernet", "--steps", "0"], ["--steps 0", ">= 1"]),
    (["distill", "--trial", "0", "--steps", "0"], ["--steps 0", ">= 1"]),
    (["distill", "--trial", "0", "--budget", "nan"], ["--budget", BUDGET]),
    (["map-layers", "--trial", "0", "--budget", "0"], ["--budget", BUDGET]),
    (["pareto", "--budget", "inf"], ["--budget", BUDGET]),
    (["export", "--out", "out", "--budgets", "5,nan"], ["--budgets", BUDGET]),
    (["export", "--out", "out", "--budgets", ""], ["--budgets", "comma-separated"]),
    (["status", "--db", ""], ["--db is empty"]),
])
def test_zero_counts_and_bad_budgets_are_errors_not_defaults(tiny_study_file, args, needles):
    """`x or default` would turn 0 into the study's default: every count given is >= 1, every budget > 0."""
    _assert_one_line_error(_run(args[0], "--config", str(tiny_study_file), *args[1:]), *needles)
    _assert_nothing_written(tiny_study_file)


def test_search_api_refuses_zero_trials_and_nan_budgets(tiny_study_file):
    from nas_bert.errors import NasBertError
    from nas_bert.search import search
    from nas_bert.study import load_study

    study = load_study(tiny_study_file)
    with pytest.raises(NasBertError, match="trials must be at least 1"):
        search(study, 5.0, trials=0)
    with pytest.raises(NasBertError, match=BUDGET):
        search(study, float("nan"))
    _assert_nothing_written(tiny_study_file)


@pytest.mark.parametrize("budgets, needles", [
    ("[5, .nan]", ["search.budgets_ms.1", "finite number"]),
    ("[5, .inf]", ["search.budgets_ms.1", "finite number"]),
    ("[0]", ["search.budgets_ms", BUDGET]),
    ("[10, -2.5]", ["search.budgets_ms", BUDGET]),
])
def test_study_budgets_must_be_finite_and_positive(tiny_study_file, budgets, needles):
    tiny_study_file.write_text(tiny_study_file.read_text() + f"search:\n  budgets_ms: {budgets}\n")
    _assert_one_line_error(_run("run", "--config", str(tiny_study_file)), "study file", *needles)
    _assert_nothing_written(tiny_study_file)


@pytest.mark.parametrize("changes, needles", [
    ({"supernet.lr": float("nan")}, ["supernet.lr", "finite number"]),
    ({"distill.temperature": float("inf")}, ["distill.temperature", "finite number"]),
    ({"latency.min_run_time": float("inf")}, ["latency.min_run_time", "finite number"]),  # a timing that never ends
    ({"corpus.validation_fraction": float("nan")}, ["corpus.validation_fraction", "finite number"]),
    ({"evaluate.lr": float("inf")}, ["evaluate.lr", "finite number"]),
    ({"search.seed": -1}, ["search.seed", "greater than or equal to 0"]),
    ({"search.trials": 0}, ["search.trials", "greater than or equal to 1"]),
    ({"mapping.generations": 0}, ["mapping.generations", "greater than or equal to 1"]),
])
def test_study_numbers_are_finite_and_counts_positive(tiny_study_file, changes, needles):
    _edit(tiny_study_file, **changes)
    _assert_one_line_error(_run("train-supernet", "--config", str(tiny_study_file)), *needles)
    _assert_nothing_written(tiny_study_file)
