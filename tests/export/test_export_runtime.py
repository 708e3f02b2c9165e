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
