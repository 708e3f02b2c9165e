"""Every command's table and --json on one tiny study, in the order a user runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import copy_study
from test_pipeline import EVAL
from typer.testing import CliRunner

from nas_bert.cli import app
from nas_bert.cli.tables import distill_table
from nas_bert.distill import DistillResult

BUDGET = 5.0  # the budget `searched_tiny` searched
runner = CliRunner()


def _invoke(study: Path, command: str, *args: str) -> str:
    """stdout of `nas-bert COMMAND --config STUDY ARGS`, which must succeed."""
    result = runner.invoke(app, [command, "--config", str(study), *args])
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result.stdout


def _both(study: Path, command: str, *args: str, keys: set[str]) -> tuple[dict[str, Any], str]:
    """The command's --json (holding `keys`), then its table."""
    data = json.loads(_invoke(study, command, *args, "--json"))
    assert keys <= set(data), sorted(data)
    return data, _invoke(study, command, *args)


@pytest.fixture(scope="module")
def study(searched_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the searched tiny study: small evaluation sizes, the searched budget its only one."""
    path = copy_study(searched_tiny, tmp_path_factory.mktemp("cli-output"))
    data = yaml.safe_load(path.read_text())
    data["evaluate"] = EVAL
    data["search"]["budgets_ms"] = [BUDGET]
    # the timing runs of the finalists and the exports in this process: a new one per run costs seconds of imports
    data["latency"]["fresh_process"] = False
    # map-layers and distill take the searched trial, export the choice: the choice keeps the ranking's first (a
    # searched point), not the recipe a tiny study's noisy figures tie it with
    data["search"]["choose_protocol"] = {**data["search"].get("choose_protocol", {}), "ties": "score"}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def searched(study: Path) -> tuple[dict[str, Any], str]:
    return _both(study, "search", "--latency-budget-ms", f"{BUDGET:g}",
                 keys={"optuna_study", "budget_ms", "trials", "feasible", "front", "chosen", "finalists"})


@pytest.fixture(scope="module")
def trial(searched: tuple[dict[str, Any], str]) -> int:
    """The searched trial the search chose under the budget (map-layers and distill take a searched trial)."""
    return int(searched[0]["chosen"]["trial"])


@pytest.fixture(scope="module")
def mapped(study: Path, trial: int) -> tuple[dict[str, Any], str]:
    return _both(study, "map-layers", "--trial", str(trial),
                 keys={"trial", "architecture", "points", "baselines", "best", "improvement_vs_uniform"})


@pytest.fixture(scope="module")
def distilled(study: Path, trial: int, mapped: tuple[dict[str, Any], str]) -> tuple[dict[str, Any], str]:
    return _both(study, "distill", "--trial", str(trial),
                 keys={"trial", "params", "mapping", "mapping_origin", "step", "target_steps", "before", "after",
                       "student_path"})


def test_train_supernet(study: Path) -> None:
    data, text = _both(study, "train-supernet",
                       keys={"study", "step", "target_steps", "checkpoint", "sha256", "val_losses", "seconds"})
    assert data["study"] == "tiny" and data["step"] == data["target_steps"] > 0
    assert f"supernet of study 'tiny': step {data['step']}/{data['target_steps']}" in text
    assert f"checkpoint {data['checkpoint']}  sha256 {data['sha256'][:12]}" in text
    blocks = {k: v for k, v in data["val_losses"].items() if k != "step" and isinstance(v, list)}
    assert blocks
    for name, losses in blocks.items():
        assert f"  {name:<10} " + "  ".join(f"{x:8.4f}" for x in losses) in text.splitlines()


def test_latency(study: Path) -> None:
    data, text = _both(study, "latency", keys={"fingerprint", "table", "calibration", "n", "loo_mape_pct"})
    assert data["table"] and all(v > 0 for v in data["table"].values())
    lines = text.splitlines()
    assert lines[0] == f"latency table {data['fingerprint'][:12]} ({len(data['table'])} entries, ms)"
    for op, ms in data["table"].items():
        assert f"  {op:<28} {ms:9.4f}" in lines
    assert f"calibration: end-to-end ms = {data['calibration']['a']:.4f} x summed table" in text
    assert f"fitted on {data['n']} students, leave-one-out error {data['loo_mape_pct']:.2f}%" in text


def test_search(searched: tuple[dict[str, Any], str]) -> None:
    data, text = searched
    assert data["budget_ms"] == BUDGET and data["feasible"] > 0 and data["front"]
    t = data["trials"]
    assert (f"search '{data['optuna_study']}' (budget 5 ms): {t['complete']} complete, {t['fail']} failed, "
            f"{t['pruned']} stood down, {data['feasible']} feasible") in text
    lines = text.splitlines()
    for r in data["front"]:  # every front member, with its numbers
        row = f"  {r['trial']:>5} {r['params']:>10,} {r['predicted_ms']:8.2f} {r['approx_loss']:8.4f}"
        assert any(ln.startswith(row) and ln.endswith(r["architecture"]) for ln in lines), r
    fin = data["finalists"]
    assert fin["budget_ms"] == BUDGET and fin["finalists"]
    assert "finalists of the 5 ms budget" in text
    for r in fin["finalists"]:
        assert any(ln.startswith(f"  {r['name']:<18} {r['origin']:<9}") and f"{r['measured_ms']:7.2f}" in ln
                   for ln in lines), r
    assert f"chosen: {fin['chosen']['name']}, " in text and f"{fin['chosen']['measured_ms']:.2f} ms measured" in text
    assert "Kendall tau with the first round's fidelity ranking: " in text


def test_pareto(study: Path, searched: tuple[dict[str, Any], str], tmp_path: Path) -> None:
    data, text = _both(study, "pareto", keys={"5"})
    assert [r["trial"] for r in data["5"]] == [r["trial"] for r in searched[0]["front"]]
    lines = text.splitlines()
    assert lines[0] == "budget 5 ms:" and "architecture" in lines[1]
    for r in data["5"]:
        assert any(ln.startswith(f"  {r['trial']:>5} {r['params']:>10,} {r['predicted_ms']:8.2f}") for ln in lines)
    png = tmp_path / "front.png"
    assert _invoke(study, "pareto", "--budget", "5", "--plot", str(png)) == text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_layers(mapped: tuple[dict[str, Any], str], trial: int) -> None:
    data, text = mapped
    assert data["trial"] == trial and data["best"]["mapping"]
    lines = text.splitlines()
    assert lines[0] == f"layer mapping for trial {trial} ({data['architecture']})"
    assert f"{data['points']} distillation points, teacher layers 1..{data['teacher_layers']}" in text
    assert f"  {'best ' + str(data['best']['mapping']):<24} {data['best']['fitness']:14.5f}" in lines
    for name, b in data["baselines"].items():
        assert f"  {name + ' ' + str(b['mapping']):<24} {b['fitness']:14.5f}" in lines
    assert f"best vs uniform: {100 * data['improvement_vs_uniform']:+.2f}% lower loss" in text


def test_distill(distilled: tuple[dict[str, Any], str], mapped: tuple[dict[str, Any], str], trial: int) -> None:
    data, text = distilled
    assert data["trial"] == trial and data["step"] == data["target_steps"] and data["student_path"]
    decision = mapped[0]["decision"]  # the searched mapping, or the heuristic it did not beat beyond noise
    assert data["mapping"] == decision["mapping"] and data["mapping_origin"] == decision["used"]
    after = data["after"]
    assert isinstance(after["best"], dict)  # the nested record the table once failed to format
    lines = text.splitlines()
    assert lines[0].startswith(f"distilled trial {trial} ({data['params']:,} params) to step "
                               f"{data['step']}/{data['target_steps']} with mapping {data['mapping']} "
                               f"({data['mapping_origin']})")
    assert f"  held-out, step 0 -> step {after['step']}:" in lines
    metrics = sorted(k for k in after if k not in ("step", "best"))
    assert {"fidelity", "loss", "primary"} <= set(metrics)
    rows = [ln.split() for ln in lines if ln.startswith("    ")]
    assert rows == [[k, f"{data['before'][k]:.4f}", "->", f"{after[k]:.4f}"] for k in metrics]  # start -> end
    assert (f"  kept: the weights of step {after['best']['step']}, held-out fidelity "
            f"{after['best']['value']:.4f}") in text
    assert lines[-1] == f"student folder: {data['student_path']}"


def test_distill_table_shows_every_number_it_is_given() -> None:
    """Nested records and metrics missing on one side still get a line each; nothing is dropped."""
    text = distill_table(DistillResult(
        study="s", trial=7, start="search", budget_ms=5.0, arch_hash="abc", architecture="[8] ffn(inner=8) -> 8",
        params=1234, step=2, target_steps=4, mapping=[1, 2], mapping_origin="given", seconds=0.5, student_path=None,
        inputs="def", before={"step": 0, "fidelity": 0.25, "extra": {"n": 3}},
        after={"step": 2, "fidelity": 0.5, "loss": 1.0, "best": {"step": 2, "value": 0.5}}))
    lines = text.splitlines()
    assert "  held-out, step 0 -> step 2:" in lines
    assert [ln.split() for ln in lines if ln.startswith("    ")] == [
        ["extra.n", "3", "->", "-"], ["fidelity", "0.2500", "->", "0.5000"], ["loss", "-", "->", "1.0000"]]
    assert "  kept: the weights of step 2, held-out fidelity 0.5000 (the best validated, the start included)" in lines
    assert lines[-1] == "student folder: (not finished)"


def _evaluate_lines(data: dict[str, Any], text: str) -> None:
    """Every scalar metric of the JSON has its line in the table, floats to 4 decimals; which test examples the
    student got right (a character each) only in the JSON."""
    lines = text.splitlines()
    scalars = {k: v for k, v in data.items() if not isinstance(v, (list, dict)) and k != "test_correct"}
    assert not any(ln.startswith("  test_correct") for ln in lines)
    assert len(lines) == len(scalars)
    for k, v in scalars.items():
        assert (f"  {k:<22} {v:.4f}" if isinstance(v, float) else f"  {k:<22} {v}") in lines


def test_evaluate_student(study: Path, distilled: tuple[dict[str, Any], str]) -> None:
    folder = str(Path(distilled[0]["student_path"]).resolve())
    data, text = _both(study, "evaluate", folder,
                       keys={"subject", "arch_hash", "fidelity", "accuracy", "teacher_accuracy", "accuracy_ratio"})
    assert data["subject"] == folder and 0 <= data["accuracy"] <= 1 and -1 <= data["fidelity"] <= 1
    assert f"  {'subject':<22} {folder}" in text.splitlines()
    assert f"  {'fidelity':<22} {data['fidelity']:.4f}" in text.splitlines()
    assert set(data["test_correct"]) <= {"0", "1"} and data["test_correct"].count("1") / len(data["test_correct"]) == \
        pytest.approx(data["accuracy"])
    _evaluate_lines(data, text)


def test_evaluate_teacher(study: Path) -> None:
    data, text = _both(study, "evaluate", "--teacher", keys={"accuracy"})
    assert "test_probs" not in data and 0 <= data["accuracy"] <= 1
    assert f"  {'accuracy':<22} {data['accuracy']:.4f}" in text.splitlines()
    _evaluate_lines(data, text)


def test_export(study: Path, searched: tuple[dict[str, Any], str], tmp_path: Path) -> None:
    out = tmp_path / "export"
    # one export (each times and converts every student again): its --json is the index.json it writes
    text = _invoke(study, "export", "--out", str(out), "--budgets", "5", "--overwrite")
    data = json.loads((out / "index.json").read_text())
    assert {"out_dir", "students"} <= set(data)
    assert Path(data["out_dir"]) == out and data["students"]
    # each run times the students again: the table's times are its own, the rest is the JSON's
    ms = r"\d+\.\d\d"
    lines = text.splitlines()
    assert re.fullmatch(rf"exported {len(data['students'])} students to {re.escape(str(out))} \(teacher {ms} ms\)",
                        lines[0]), lines[0]
    assert lines[1].split() == ["name", "params", "MB", "pred", "pred", "now", "torch", "onnx", "int8", "speed-up"]
    for st in data["students"]:
        assert (out / st["name"] / "config.json").is_file()
        assert all(v > 0 for v in st["measured_ms"].values()), st["measured_ms"]
        pred = "-" if st["predicted_ms"] is None else f"{st['predicted_ms']:.2f}"
        row = re.escape(f"  {st['name']:<34} {st['params']:>11,} {st['size_mb']:6.1f} {pred:>7} ")
        # the prediction at the host's speed now ("-" where there is none), three times and the speed-up
        assert any(re.fullmatch(row + rf" *(?:{ms}|-) +{ms} +{ms} +{ms} +{ms}x", ln) for ln in lines[2:]), (row, lines)


def test_run(study: Path) -> None:
    data, text = _both(study, "run", keys={"study", "out", "pareto_png", "students", "stages", "seconds"})
    assert data["study"] == "tiny" and [r["budget_ms"] for r in data["students"]] == [BUDGET]
    assert {(s["stage"], s["key"]) for s in data["stages"]} >= {("search", "5ms"), ("distill", "5ms"), ("export", "5")}
    lines = text.splitlines()
    assert lines[0].startswith(f"study 'tiny': 1 students in {data['out']} (")
    (r,) = data["students"]
    row = next(ln for ln in lines if ln.startswith("|      5 | "))
    assert r["student"] in row and f"{r['params']:>10,}" in row and f"{r['fidelity']:8.3f}" in row
    assert f"5 ms student at export: predicted {r['predicted_ms']:.2f} ms (at the fit)" in text
    assert f"judged {r['judged_ms']:.2f} ms against its 5 ms budget" in text
    assert f"Pareto front: {data['pareto_png']}" in lines and Path(data["pareto_png"]).is_file()
    # the table's run came second: every stage was finished from the same inputs
    stages = next(ln for ln in lines if ln.startswith("stages: "))
    assert stages == "stages: " + ", ".join(f"{s['stage']} {s['key']}".strip() + " (skipped)" for s in data["stages"])


def test_status(study: Path, trial: int) -> None:
    data, text = _both(study, "status",
                       keys={"study", "db", "supernet", "latency", "block_scores", "architectures", "searches",
                             "stages"})
    assert data["study"] == "tiny" and [s["budget_ms"] for s in data["searches"]] == [BUDGET]
    lines = text.splitlines()
    assert lines[0] == f"study 'tiny'  db {data['db']}"
    sn = data["supernet"]
    assert f"  1 supernet:     step {sn['step']}/{sn['target_steps']} ({sn['status']}), {sn['checkpoint']}" in lines
    assert data["latency"]["runtime"] == "torch"
    assert f"  2 latency:      {data['latency']['entries']} operator timings on this device (PyTorch fp32)" in lines
    (s,) = data["searches"]
    assert (f"  4 search 5 ms: {s['trials']['complete']} complete, {s['trials']['fail']} failed, "
            f"{s['trials']['running']} running, {s['feasible']} feasible; best trial {s['best']['trial']}: "
            f"loss {s['best']['approx_loss']:.4f} at {s['best']['predicted_ms']:.2f} ms") in lines
    assert data["stages"] and all(r["state"] == "current" for r in data["stages"])  # after `run`
    assert "`nas-bert run` stages (current: its inputs are those it was made from):" in lines
    width = max(len(f"{r['stage']} {r['key']}") for r in data["stages"])
    for r in data["stages"]:
        assert f"  {(r['stage'] + ' ' + r['key']).ljust(width)}  {'current':<8} {r['why']}" in lines
