"""The run's text summary: what a user reads at the end of `nas-bert run`."""

from __future__ import annotations

from typing import Any

from nas_bert.cli.tables import run_table
from nas_bert.pipeline import RunResult


def _row(budget: float, judged: float, over: bool) -> dict[str, Any]:
    return {"budget_ms": budget, "trial": 3, "student": "trial-3", "origin": "search", "architecture": "[128] ffn(inner=512)",
            "params": 1000, "predicted_ms": 0.95 * budget, "predicted_now_ms": budget, "finalist_ms": 0.9 * budget,
            "finalist_judged_ms": 0.9 * budget, "over_budget": over, "drift": 1.1, "measured_ms": 1.05 * budget,
            "judged_ms": judged, "onnx_int8_ms": None, "teacher_ms": 17.0, "fidelity": 0.7, "ood_fidelity": 0.5,
            "accuracy": 0.5, "teacher_accuracy": 0.6, "accuracy_ratio": 0.83, "label_loyalty": 0.7,
            "probability_loyalty": 0.7, "truncated": None, "folder": None}


def test_summary_says_each_exported_students_judged_time_and_flags_one_over_budget() -> None:
    summary = {"study": "s", "out": "o", "pareto_png": "o/pareto.png", "seconds": 1.0, "stages": [],
               "students": [_row(5.0, 4.77, False), _row(10.0, 10.4, True)]}
    text = run_table(RunResult.model_validate(summary))
    assert "5 ms student at export: predicted 4.75 ms (at the fit), 5.00 ms" in text
    assert "measured 5.25 ms (PyTorch fp32), judged 4.77 ms against its 5 ms budget" in text
    assert "measured 10.50 ms (PyTorch fp32), judged 10.40 ms against its 10 ms budget" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("|") and "trial-3" in ln]
    assert [ln.endswith("OVER BUDGET") for ln in lines] == [False, True]


def test_summary_says_who_won_by_the_paired_interval_the_rounds_and_the_runtime() -> None:
    row = _row(5.0, 4.77, False) | {
        "margin": {"rival": "truncated-1", "rival_origin": "truncated", "steps": 24, "fidelity": 0.632,
                   "rival_fidelity": 0.567, "delta": 0.065, "delta_interval": [0.041, 0.088], "beyond_interval": True},
        "rounds": [[12, 5], [24, 3]], "proxy": "gain", "proxy_tau": 0.8}
    summary = {"study": "s", "out": "o", "pareto_png": "o/pareto.png", "seconds": 1.0, "stages": [], "students": [row],
               "runtime": "onnxruntime-int8"}
    text = run_table(RunResult.model_validate(summary))
    assert ("5 ms: a searched point won, trial-3; fidelity 0.632 against 0.567 of the best hand-designed student "
            "(truncated-1) after 24 steps of the finalists' distillation (+0.065, paired 90% interval +0.041 to "
            "+0.088 over the held-out texts: beyond noise)") in text
    assert ("5 ms finalists: 5 distilled 12 steps, 3 distilled 24 steps; the search's proxy (gain) at zero steps, its "
            "Kendall tau against the first round: 0.80; trial-3 measured 4.50 ms in their timing run (the median of its "
            "runs), judged 4.50 ms by the budget's rule") in text
    assert "measured 5.25 ms (ONNX Runtime int8)" in text and "ms: ONNX Runtime int8, batch 1" in text


def test_a_budget_given_as_a_fraction_of_the_teacher_is_summarised_by_its_own_rule() -> None:
    row = _row(8.5, 7.0, False) | {"budget_x": 0.25, "drift": None, "predicted_now_ms": None}
    summary = {"study": "s", "out": "o", "pareto_png": "o/pareto.png", "seconds": 1.0, "stages": [], "students": [row]}
    text = run_table(RunResult.model_validate(summary))
    # no drift and no refitted calibration were measured: the lines say what was, not a dash
    assert "8.5 ms student at export: predicted 8.07 ms (at the fit), measured 8.93 ms (PyTorch fp32)" in text
    assert "0.25x of the teacher: judged as a fraction of the teacher timed beside it" in text
    # the finalists' run found the host slow: the table's time is over the budget, the judged one within, and both are said
    slow = run_table(RunResult.model_validate(summary | {"students": [row | {
        "finalist_ms": 10.2, "finalist_judged_ms": 7.6, "rounds": [[12, 4]], "proxy_tau": 0.7}]}))
    assert "trial-3 measured 10.20 ms in their timing run (the median of its runs), judged 7.60 ms" in slow
    assert "the host ran" not in text and "as far as the reference student" not in text
    assert "a budget given as a fraction of the teacher judges the student against the teacher timed in the same run" in text
    mixed = run_table(RunResult.model_validate(summary | {"students": [row, _row(5.0, 4.77, False)]}))
    assert "a budget in ms judges the time measured at the host's speed" in mixed and "5.00 ms (calibration" in mixed


def test_summary_says_which_layer_mapping_each_student_learnt_by_and_why() -> None:
    reason = ("the searched mapping does not beat uniform beyond noise (gain 0.0001, 2 se 0.0026): the uniform mapping "
              "is used")
    kept = _row(5.0, 4.77, False) | {"mapping": {"mapping": [2, 4, 6], "origin": "uniform", "reason": reason}}
    searched = _row(10.0, 9.0, False) | {"mapping": {"mapping": [4, 4, 6], "origin": "searched", "reason": None}}
    summary = {"study": "s", "out": "o", "pareto_png": "o/pareto.png", "seconds": 1.0, "stages": [],
               "students": [kept, searched, _row(12.0, 11.0, False)]}
    text = run_table(RunResult.model_validate(summary))
    assert f"5 ms layer mapping: uniform [2, 4, 6] ({reason})" in text
    assert "10 ms layer mapping: searched [4, 4, 6]\n" in text  # no confirmation recorded: nothing more said
    assert "12 ms layer mapping" not in text  # a summary recorded before the mapping was kept in it
