"""A study whose budgets are for ONNX Runtime int8 (`latency.runtime`): its latency model is fitted on that
runtime, and the export judges the student's int8 time against the budget."""

from __future__ import annotations

import json

from conftest import make_tiny_study
from sqlalchemy import select

from nas_bert.choose import judged_ms
from nas_bert.export import export_front
from nas_bert.latency import device_fingerprint
from nas_bert.store import ArchitectureRow, Database, LatencyRow
from nas_bert.study import load_study


def test_budgets_on_onnx_runtime_int8_are_fitted_and_judged_there(tmp_path):
    file = make_tiny_study(tmp_path, search_budget=5.0,
                           overrides={"latency": {"runtime": "onnxruntime-int8", "fresh_process": False},
                                      "search": {"trials": 12}})  # timed in this process: no spawns to wait for
    study = load_study(file)
    fp = device_fingerprint(study.cfg.latency)
    assert fp != device_fingerprint(study.cfg.latency.model_copy(update={"runtime": "torch"}))
    db = Database(study.db_url)
    with db.session() as s:  # the search's latency model is the int8 runtime's
        assert s.scalars(select(LatencyRow).where(LatencyRow.fingerprint == fp)).first() is not None
    out = tmp_path / "export"
    result = export_front(study, out, [5.0], command="nas-bert export --config tiny.yaml --budget 5")
    (st,) = result.students
    meta = json.loads((out / st.name / "nas_bert.json").read_text())
    lat = meta["latency"]
    assert lat["config"]["runtime"] == "onnxruntime-int8"
    assert lat["judged_ms"] == judged_ms(lat["onnx_int8"], lat["drift"], lat["speed"])  # a budget in ms: the drift rule
    assert lat["teacher_onnx_int8"] > 0 and lat["budget_x"] is None  # the teacher on the runtime too (for fractions)
    assert st.over_budget == (lat["judged_ms"] > 5.0)
    card = (out / st.name / "README.md").read_text()
    assert "for ONNX Runtime int8, the runtime it is for" in card
    with db.session() as s:  # the architecture's measured time is the one its budget is on
        row = s.scalars(select(ArchitectureRow).where(ArchitectureRow.hash == st.hash)).one()
        assert row.measured_ms == lat["onnx_int8"]


def test_the_export_judges_its_student_in_a_run_without_onnx_runtime_beside_it(tmp_path, monkeypatch):
    """The budget's verdict comes from a run like the finalists' (PyTorch students and the teacher only): ONNX
    Runtime's sessions are timed in a second run, for the card's speed-ups."""
    import onnxruntime as ort

    from nas_bert.export import onnx_export

    file = make_tiny_study(tmp_path, search_budget=5.0,
                           overrides={"latency": {"fresh_process": False}, "search": {"trials": 12}})
    study = load_study(file)
    runs: list[bool] = []  # per timing run of the export: whether any of its callables ran an ONNX Runtime session
    ran = {"ort": False}
    real_run, real_measure = ort.InferenceSession.run, onnx_export.measure_callables

    def run(self, *args, **kwargs):
        ran["ort"] = True
        return real_run(self, *args, **kwargs)

    def measure(calls, cfg, reference=None):
        ran["ort"] = False
        for call in calls:
            call()
        runs.append(ran["ort"])
        return real_measure(calls, cfg, reference=reference)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    monkeypatch.setattr(onnx_export, "measure_callables", measure)
    out = tmp_path / "export"
    (st,) = export_front(study, out, [5.0], command="nas-bert export --config tiny.yaml --budget 5").students
    assert runs[:2] == [False, True]  # the judged run first, without ONNX Runtime; then the ONNX variants
    lat = json.loads((out / st.name / "nas_bert.json").read_text())["latency"]
    assert min(lat["torch_fp32"], lat["onnx_fp32"], lat["onnx_int8"], lat["teacher_torch_fp32"]) > 0
    assert lat["judged_ms"] == judged_ms(lat["torch_fp32"], lat["drift"], lat["speed"])
