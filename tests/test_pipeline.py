"""`nas-bert run` on the tiny study: every stage, a kill in the middle, a rerun that skips what finished."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_study

from nas_bert.study import load_study

EVAL = {"finetune_steps": 3, "fidelity_texts": 16, "max_train_examples": 48, "max_eval_examples": 16,
        "max_seq_length": 16, "batch_size": 8, "ood_texts": 16}


def _rows(study_file):
    """Finished stages, read with a plain read-only connection (polling must not hold write locks)."""
    path = load_study(study_file).db_url.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {(stage, key): at for stage, key, at in con.execute("SELECT stage, key, finished_at FROM nasbert_stages")}
    except sqlite3.OperationalError:  # the table is not there yet
        return {}
    finally:
        con.close()


def test_run_kill_and_resume(tmp_path):
    study_file = make_tiny_study(tmp_path)  # its own supernet: `run` checks the checkpoint it trained
    data = yaml.safe_load(study_file.read_text())
    data["search"]["budgets_ms"] = [5.0]
    data["evaluate"] = EVAL
    data["latency"]["fresh_process"] = False  # the timing runs in the command's own process: no interpreters to start
    # each budget's own student, judged by its own rule (ms, fraction): the ranking's first, not the one recipe that
    # the tiny teacher's noisy figures tie with the searched points at both budgets
    data["search"]["choose_protocol"] = {"ties": "score"}
    study_file.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "nas_bert", "run", "--config", str(study_file), "--json"]
    log = open(tmp_path / "first-run.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 300
    while time.time() < deadline and ("map-layers", "5ms") not in _rows(study_file):
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # killed somewhere in distillation
    proc.wait()
    log.close()
    before = _rows(study_file)
    first = (tmp_path / "first-run.log").read_text()[-3000:]
    assert {("supernet", ""), ("latency", ""), ("search", "5ms"), ("map-layers", "5ms")} <= set(before), first
    assert not any(stage == "export" for stage, _ in before)

    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    skipped = {(s["stage"], s["key"]) for s in summary["stages"] if s["skipped"]}
    assert {("supernet", ""), ("latency", ""), ("search", "5ms"), ("finalists", "5ms"), ("map-layers", "5ms")} <= skipped
    after = _rows(study_file)
    assert all(after[k] == v for k, v in before.items())  # finished stages were not redone
    assert ("export", "5") in after
    (row,) = summary["students"]
    assert row["budget_ms"] == 5.0 and row["finalist_judged_ms"] <= 5.0 and not row["over_budget"]
    assert 0 < row["judged_ms"] <= 5.0  # the export's own timing, judged as the finalists' (the summary prints it)
    assert row["fidelity"] is not None and row["ood_fidelity"] is not None and row["measured_ms"] > 0
    # beside it, the untouched truncated teacher of the nearest measured latency, with both fidelities
    assert row["truncated"]["name"].startswith("truncated-") and row["truncated"]["ood_fidelity"] is not None
    card = (tmp_path / "tiny" / "export").glob("nasbert-*/README.md")
    text = next(card).read_text()
    assert "distilled" in text and "fidelity to the teacher" in text
    assert (tmp_path / "tiny" / "export" / "pareto.png").is_file()

    # a budget added to the study file, as a fraction of the teacher's latency, runs its own stages in ms of the
    # teacher timed when the latency model was fitted, and redoes none of the first budget's
    from nas_bert.latency import LatencyReport
    from nas_bert.pipeline import Runner, stage_status

    data["search"]["budgets_x"] = [0.9]
    study_file.write_text(yaml.safe_dump(data))
    study = load_study(study_file)
    teacher_ms = Runner(study, echo=lambda _: None).result("latency", "", LatencyReport).reference_ms
    extra = round(0.9 * teacher_ms, 2)
    assert f"{extra:g}ms" in {s.key for s in stage_status(study) if s.stage == "search"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"budget 0.9x of the teacher's {teacher_ms:.2f} ms" in done.stderr
    result = json.loads(done.stdout)
    ran = {(s["stage"], s["key"]): s["skipped"] for s in result["stages"]}
    stages = ("search", "finalists", "map-layers", "distill", "evaluate")
    assert all(ran[(stage, "5ms")] for stage in stages)
    assert not any(ran[(stage, f"{extra:g}ms")] for stage in stages)
    assert ran[("export", f"5,{extra:g}")] is False
    assert {r["budget_ms"]: r["budget_x"] for r in result["students"]} == {5.0: None, extra: 0.9}
    # the fraction is judged against the teacher's layers timed beside the student at export (PyTorch here) as when
    # the budget was set (the space's largest student), not by a drift
    rel = next(r for r in result["students"] if r["budget_x"] is not None)
    card = json.loads((Path(rel["folder"]) / "nas_bert.json").read_text())["latency"]
    assert card["reference_ms"] > 0 and rel["teacher_ms"] > 0
    # the finalists' run timed the same reference beside its students (a row of the study's own)
    con = sqlite3.connect(study.db_url.removeprefix("sqlite:///"))
    refs = con.execute("SELECT ms FROM nasbert_latency WHERE key LIKE ?", (f"reference:{extra:g}:%",)).fetchall()
    con.close()
    assert len(refs) == 1 and refs[0][0] > 0
    assert rel["judged_ms"] == pytest.approx(rel["measured_ms"] / card["reference_ms"] * teacher_ms)
    assert card["budget_x"] == 0.9 and card["teacher_ratio"] == pytest.approx(rel["measured_ms"] / card["reference_ms"])
    assert card["calibration_ms"] == [] and card["drift"] is None  # no calibration students timed for a fraction
    ms_row = next(r for r in result["students"] if r["budget_x"] is None)
    ms_card = json.loads((Path(ms_row["folder"]) / "nas_bert.json").read_text())["latency"]
    assert ms_card["calibration_ms"] and ms_card["drift"] > 0 and ms_card["budget_x"] is None  # a budget in ms: drift rule
    from nas_bert.cli.tables import run_table
    from nas_bert.pipeline import RunResult
    assert "0.9x of the teacher: judged as a fraction of the teacher timed beside it" in run_table(
        RunResult.model_validate(result))
    # the largest budget is searched first (its small points seed the next); the rows keep the file's order
    searched = [float(s["key"][:-2]) for s in result["stages"] if s["stage"] == "search"]
    assert searched == sorted([5.0, extra], reverse=True)
    assert [r["budget_ms"] for r in result["students"]] == [5.0, extra]
