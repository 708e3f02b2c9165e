"""The CUDA path: the tiny study's every stage on a GPU (training, search, mapping, distillation,
evaluation and export on `device: cuda`; the latency model timed on the GPU), then a kill-free rerun
that redoes nothing. Skipped where no CUDA device is visible (CI has none)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from conftest import FAST, ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")

EVAL = {"finetune_steps": 3, "fidelity_texts": 16, "max_train_examples": 48, "max_eval_examples": 16,
        "max_seq_length": 16, "batch_size": 8, "ood_texts": 16}


def test_tiny_study_runs_on_cuda(tmp_path):
    from nas_bert.latency import hardware_name
    from nas_bert.pipeline import run_study, stage_status
    from nas_bert.study import load_study

    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(copy.deepcopy(FAST))  # never edit the shared sizes in place
    data["device"] = "cuda"
    data["latency"] = {**data["latency"], "device": "cuda", "seq_len": 32}
    data["search"]["budgets_ms"] = [50.0]  # a GPU launches kernels: budgets are not the CPU's
    data["evaluate"] = EVAL
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    study = load_study(tmp_path / "tiny.yaml")
    assert study.device().type == "cuda"

    summary = run_study(study, echo=lambda _line: None)
    (row,) = summary.students
    assert row.measured_ms is not None and 0 < row.measured_ms <= 50.0
    assert row.fidelity is not None and row.ood_fidelity is not None
    assert not row.over_budget
    card = next((tmp_path / "tiny" / "export").glob("nasbert-*/README.md")).read_text()
    assert hardware_name("cuda").removeprefix("cuda:") in card  # measured on the GPU, and the card says so

    again = run_study(load_study(tmp_path / "tiny.yaml"), echo=lambda _line: None)
    assert all(s.skipped for s in again.stages)
    assert all(s.state == "current" for s in stage_status(load_study(tmp_path / "tiny.yaml")))


def test_the_paths_a_finished_cuda_study_takes_again(tmp_path):
    """After a finished run on the GPU: training the supernet again loads the finished checkpoint where the teacher
    is; the readout proxy takes vectors on the GPU; a student on the GPU exports to ONNX (checked on the CPU); and
    a study on the CPU in the same process is refused in one line (Accelerate keeps one device per process)."""
    from transformers import AutoTokenizer

    from nas_bert.errors import NasBertError
    from nas_bert.evaluate import readout_fidelity
    from nas_bert.export import export_onnx
    from nas_bert.model import NasBertModel
    from nas_bert.pipeline import run_study
    from nas_bert.study import load_study
    from nas_bert.supernet import train_supernet
    from nas_bert.train import make_accelerator

    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    data.update(copy.deepcopy(FAST))
    data["device"] = "cuda"
    data["search"]["budgets_ms"] = [50.0]
    data["evaluate"] = EVAL
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    study = load_study(tmp_path / "tiny.yaml")
    run_study(study, echo=lambda _line: None)

    again = train_supernet(study)  # finished: nothing trained, its teacher paths scored on the GPU
    assert again.step >= again.target_steps

    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen)
    assert readout_fidelity(s.cuda(), t.cuda()) == pytest.approx(readout_fidelity(s, t), abs=1e-4)

    folder = next((tmp_path / "tiny" / "export").glob("nasbert-*"))
    model = NasBertModel.from_pretrained(folder).cuda()
    report = export_onnx(model, tmp_path / "onnx-from-cuda", AutoTokenizer.from_pretrained(folder), 32)
    assert (tmp_path / "onnx-from-cuda" / "onnx" / "model.onnx").is_file() and report
    assert next(model.parameters()).is_cuda  # the caller's model stays where it was

    with pytest.raises(NasBertError, match="run it in a new process|in a new process"):
        make_accelerator(torch.device("cpu"))
