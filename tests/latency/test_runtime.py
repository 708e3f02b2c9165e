"""Budgets on the deployment runtime (`latency.runtime`): every timing of the latency model runs the module on
ONNX Runtime (fp32, or with the export's dynamic int8 weights) when the study names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_latency import CFG, EMB  # the latency tests' tiny embeddings and quick in-process timing

from nas_bert.latency import (
    build_student,
    device_fingerprint,
    ensure_latency_model,
    harness,
    measure_models,
    table_specs,
)
from nas_bert.space import largest, smallest
from nas_bert.store import Database
from nas_bert.study import LatencyConfig

ORT_STMT = "s.run(None, feeds)"


def _out(job: tuple[str, dict[str, Any]]) -> np.ndarray:
    stmt, env = job
    with torch.inference_mode():
        out = eval(stmt, dict(env))
    return out[0] if isinstance(out, list) else out.numpy()


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-int8"])
def test_every_table_entry_runs_its_module_on_the_runtime(tiny_space, runtime: str) -> None:
    """Each kind of entry (embeddings, attention, feed-forward, convolution, a map into a wider block, the
    output map and reordering) is timed as an ONNX Runtime session that computes what the PyTorch module does:
    exactly in fp32, within int8's rounding with int8 weights."""
    specs = table_specs(tiny_space, EMB)
    assert {s[0] for s in specs.values()} >= {"embeddings", "op", "grow", "output"}
    for key, spec in specs.items():
        torch.manual_seed(0)
        ref = _out(harness._key_job(spec, CFG))
        torch.manual_seed(0)
        job = harness._key_job(spec, CFG.model_copy(update={"runtime": runtime}))
        assert job[0] == ORT_STMT, key
        out = _out(job)
        assert out.shape == ref.shape, key
        rel = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12)
        # int8: dynamic quantization of a 16-wide random module errs by up to ~10% (onnxruntime 1.32: the output
        # map 16 -> 32); the same module with other weights is off by ~100%, so 15% still tells them apart
        assert rel < (1e-5 if runtime == "onnxruntime" else 0.15), (key, rel)
        if runtime != "onnxruntime":
            torch.manual_seed(1)
            other = _out(harness._key_job(spec, CFG))
            if not np.allclose(other, ref):  # a module with weights: int8 of these is far closer than other weights
                assert rel < 0.5 * np.linalg.norm(other - ref) / max(np.linalg.norm(ref), 1e-12), key


def test_a_latency_model_fitted_on_the_int8_runtime(tmp_path: Path, tiny_space, monkeypatch) -> None:
    stmts: list[str] = []
    real = harness._time_jobs

    def counting(jobs, cfg, rounds, bar=None, reference=None):
        stmts.extend(stmt for stmt, _ in jobs)
        return real(jobs, cfg, rounds, bar, reference)

    monkeypatch.setattr(harness, "_time_jobs", counting)
    monkeypatch.setattr(harness, "MAX_ATTEMPTS", 1)
    cfg = CFG.model_copy(update={"runtime": "onnxruntime-int8"})
    db = Database(f"sqlite:///{tmp_path}/lat.db")
    model = ensure_latency_model(db, tiny_space, EMB, cfg, progress=False)
    assert stmts and set(stmts) == {ORT_STMT}  # the table and the calibration students, all on ONNX Runtime
    assert model.fingerprint == device_fingerprint(cfg) != device_fingerprint(CFG)
    big, small = largest(tiny_space, EMB), smallest(tiny_space, EMB)
    assert model.predict(big) > model.predict(small) > 0
    # PyTorch's model is another device: built in the same database, it times everything again
    stmts.clear()
    ensure_latency_model(db, tiny_space, EMB, CFG, progress=False)
    assert stmts and ORT_STMT not in stmts


def test_whole_students_and_the_teacher_run_on_the_runtime(tiny_space, tiny_teacher) -> None:
    cfg = CFG.model_copy(update={"runtime": "onnxruntime"})
    student = build_student(largest(tiny_space, EMB))
    teacher = tiny_teacher.encoder.eval()
    for model, vocab in ((student, EMB.vocab_size), (teacher, int(tiny_teacher.config.vocab_size))):
        torch.manual_seed(0)
        stmt, env = harness._model_job(model, cfg, vocab)
        assert stmt == ORT_STMT
        with torch.inference_mode():
            ref = model(input_ids=torch.from_numpy(env["feeds"]["in0"]),
                        attention_mask=torch.from_numpy(env["feeds"]["in1"])).last_hidden_state.numpy()
        np.testing.assert_allclose(_out((stmt, env)), ref, atol=1e-4)
    ms = measure_models([student, teacher], cfg.model_copy(update={"min_run_time": 0.005}), EMB.vocab_size)
    assert len(ms) == 2 and all(m > 0 for m in ms)


def test_a_runtime_other_than_pytorch_is_timed_on_the_cpu() -> None:
    with pytest.raises(ValidationError, match="set latency.device: cpu"):
        LatencyConfig(runtime="onnxruntime-int8", device="cuda")
    with pytest.raises(ValidationError, match="runtime"):
        LatencyConfig(runtime="tensorrt")
    assert LatencyConfig().runtime == "torch"
