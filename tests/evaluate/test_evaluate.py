"""Stage 8: fidelity, loyalty, tasks, deterministic fine-tuning, the teacher memo and `evaluate_path`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select
from transformers import BertConfig, BertModel

from nas_bert.data import tasks
from nas_bert.errors import NasBertError
from nas_bert.evaluate import evaluation as ev
from nas_bert.model import NasBertConfig, NasBertModel
from nas_bert.space import sample
from nas_bert.store import Database, EvaluationRow
from nas_bert.study import EvalConfig

# A high head lr, so that 5 steps already beat zero accuracy and accuracy ratios are defined.
TINY = EvalConfig(finetune_steps=5, fidelity_texts=32, max_train_examples=64, max_eval_examples=32,
                     max_seq_length=24, batch_size=8, head_lr=0.05)


def _student(teacher, tiny_space, last_width: int) -> NasBertModel:
    """A random tiny-space student whose last block has `last_width` (found by trying seeds)."""
    arch = next(a for s in range(100) if (a := sample(tiny_space, teacher.embeddings_spec(), s)).blocks[-1].hidden
                == last_width)
    arch = dataclasses.replace(arch, output=0)  # no output projection: last_hidden_state has the last block's width
    torch.manual_seed(0)
    return NasBertModel(NasBertConfig(architecture=arch.to_dict())).eval()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    dd, _ = ev.load_task("wordnet", TINY)
    return list(dd["test"]["text"])


# -- fidelity and loyalty ----------------------------------------------------------------------
def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(ev.mean_pool(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_fidelity_is_one_against_itself_and_below_for_another_model(tiny_teacher, texts):
    t = tiny_teacher
    v = ev.sentence_vectors(t.encoder, t.tokenizer, texts, 8, 24, "cpu")
    assert v.shape == (len(texts), 32)
    assert ev.fidelity(v, v) == pytest.approx(1.0, abs=1e-6)
    torch.manual_seed(1)
    other = BertModel(BertConfig(**{**t.config.to_dict(), "hidden_dropout_prob": 0.0}), add_pooling_layer=False)
    w = ev.sentence_vectors(other.eval(), t.tokenizer, texts, 8, 24, "cpu")
    assert ev.fidelity(w, v) < 0.999


def test_fidelity_works_across_widths(tiny_teacher, tiny_space, texts):
    student = _student(tiny_teacher, tiny_space, 16)
    s = ev.sentence_vectors(student, tiny_teacher.tokenizer, texts, 8, 24, "cpu")
    t = ev.sentence_vectors(tiny_teacher.encoder, tiny_teacher.tokenizer, texts, 8, 24, "cpu")
    assert s.shape[1] == 16 and t.shape[1] == 32
    assert -1.0 <= ev.fidelity(s, t) <= 1.0


def test_loyalty_hand_computed():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert ev.loyalty(p, p) == {"label_loyalty": 1.0, "probability_loyalty": pytest.approx(1.0)}
    # Disjoint supports: JS divergence is 1 bit, distance 1 -> loyalty 0; identical rows -> 1.
    out = ev.loyalty(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([[0.0, 1.0], [0.5, 0.5]]))
    assert out["label_loyalty"] == 0.5
    assert out["probability_loyalty"] == pytest.approx(0.5)


# -- tasks ---------------------------------------------------------------------------------------
def test_wordnet_task_has_45_labels_and_the_shipped_split():
    from nas_bert.data import load_wordnet_task

    dd, names = ev.load_task("wordnet", TINY)
    assert len(names) == 45 and names[0] == "adj.all"
    shipped = load_wordnet_task(64, 32)
    for s in ("train", "validation", "test"):
        assert dd[s].column_names == ["text", "label"]
        assert dd[s]["text"] == shipped[s]["text"]


def test_csv_task_maps_string_labels_and_splits_deterministically(tmp_path: Path):
    f = tmp_path / "sentiment.csv"
    rows = [f'"text number {i}",{["pos", "neg", "neutral"][i % 3]}' for i in range(40)]
    f.write_text("text,label\n" + "\n".join(rows) + "\n")
    cfg = TINY.model_copy(update={"max_train_examples": None})
    dd, names = ev.load_task(str(f), cfg)
    assert names == ["neg", "neutral", "pos"]
    assert {s: len(d) for s, d in dd.items()} == {"train": 32, "validation": 4, "test": 4}
    assert set(dd["train"]["label"]) == {0, 1, 2}
    row = dd["train"][0]
    assert names[row["label"]] == ["pos", "neg", "neutral"][int(row["text"].split()[-1]) % 3]
    tasks._TASKS.clear()  # a fresh load must give the same split
    again, _ = ev.load_task(str(f), cfg)
    assert again["test"]["text"] == dd["test"]["text"]


def test_task_file_errors_are_one_line(tmp_path: Path):
    f = tmp_path / "nolabel.csv"
    f.write_text("sentence,category\nhello,a\nworld,b\n")
    with pytest.raises(NasBertError) as e:
        ev.load_task(str(f), TINY)
    msg = str(e.value)
    assert "\n" not in msg and "nolabel.csv" in msg and "'category'" in msg and "'sentence'" in msg
    with pytest.raises(NasBertError, match="missing.csv"):
        ev.load_task(str(tmp_path / "missing.csv"), TINY)


# -- fine-tuning ------------------------------------------------------------------------------------
def test_finetune_is_deterministic_and_leaves_the_encoder_alone(tiny_teacher):
    dd, names = ev.load_task("wordnet", TINY)
    before = {k: v.clone() for k, v in tiny_teacher.encoder.state_dict().items()}
    runs = [ev.finetune(tiny_teacher.encoder, tiny_teacher.tokenizer, dd, names, TINY, "cpu", "t") for _ in range(2)]
    (m1, acc1, p1), (_, acc2, p2) = runs
    assert acc1 == acc2 and np.array_equal(p1, p2)
    assert p1.shape == (32, 45) and np.allclose(p1.sum(1), 1.0)
    assert m1.encoder is not tiny_teacher.encoder
    after = tiny_teacher.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in tiny_teacher.encoder.parameters())


def test_teacher_as_its_own_student_scores_one(tiny_teacher):
    out = ev.evaluate_encoder(tiny_teacher.encoder, tiny_teacher.tokenizer, tiny_teacher, TINY)
    assert out["fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert out["teacher_accuracy"] > 0 and out["accuracy"] == out["teacher_accuracy"]
    assert out["accuracy_ratio"] == pytest.approx(1.0)
    assert out["accuracy_ratio_low"] == pytest.approx(1.0) and out["accuracy_ratio_high"] == pytest.approx(1.0)
    # which test examples it got right, one "0"/"1" each: their mean is the accuracy
    assert set(out["test_correct"]) <= {"0", "1"}
    assert sum(map(int, out["test_correct"])) / len(out["test_correct"]) == pytest.approx(out["accuracy"])
    assert out["label_loyalty"] == 1.0 and out["probability_loyalty"] == pytest.approx(1.0)
    assert out["protocol_hash"] == ev.protocol_hash(TINY, "wordnet")


def test_protocol_hash_changes_with_settings_and_task():
    h = ev.protocol_hash(TINY, "wordnet")
    assert h == ev.protocol_hash(EvalConfig(**TINY.model_dump()), "wordnet")
    assert h != ev.protocol_hash(TINY.model_copy(update={"seed": 1}), "wordnet")
    assert h != ev.protocol_hash(TINY, "other.csv")


# -- database memo and the CLI entry point -------------------------------------------------------------
def test_teacher_baseline_is_fine_tuned_once(tmp_path: Path, tiny_teacher, monkeypatch):
    calls = []
    real = ev.finetune
    monkeypatch.setattr(ev, "finetune", lambda *a, **k: calls.append(1) or real(*a, **k))
    db = Database(f"sqlite:///{tmp_path / 'memo.db'}")
    first = ev.teacher_baseline(db, "s", tiny_teacher, TINY, "wordnet", "cpu")
    second = ev.teacher_baseline(db, "s", tiny_teacher, TINY, "wordnet", "cpu")
    assert len(calls) == 1
    assert second["accuracy"] == first["accuracy"] and second["test_probs"] == first["test_probs"]
    with db.session() as s:
        rows = s.scalars(select(EvaluationRow)).all()
    assert [(r.subject, r.task, r.protocol_hash) for r in rows] == [("teacher", "wordnet", ev.protocol_hash(TINY, "wordnet"))]
    # the same teacher in another folder (a study moved to another machine or virtualenv): read back, by content
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_teacher.source, moved)
    monkeypatch.setattr(tiny_teacher, "source", str(moved))
    assert ev.teacher_baseline(db, "s", tiny_teacher, TINY, "wordnet", "cpu")["accuracy"] == first["accuracy"]
    assert len(calls) == 1
    (moved / "config.json").write_text((moved / "config.json").read_text() + "\n")  # another teacher: again
    ev.teacher_baseline(db, "s", tiny_teacher, TINY, "wordnet", "cpu")
    assert len(calls) == 2


def _save_student(folder: Path, teacher, tiny_space, auto_map: bool) -> None:
    student = _student(teacher, tiny_space, 16)
    if auto_map:  # what `nas-bert export` does: the folder carries its code, AutoModel loads it
        NasBertConfig.register_for_auto_class()
        NasBertModel.register_for_auto_class("AutoModel")
    student.save_pretrained(folder)
    teacher.tokenizer.save_pretrained(folder)
    if not auto_map:  # registration is class-wide, so strip what an earlier test may have switched on
        cfg = json.loads((folder / "config.json").read_text())
        cfg.pop("auto_map", None)
        (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "nas_bert.json").write_text(json.dumps({"hash": "abc123", "metrics": {"approx_loss": 0.5}}))


@pytest.mark.parametrize("auto_map", [True, False])
def test_evaluate_path_writes_metrics(tmp_path: Path, tiny_study_file, tiny_teacher, tiny_space, auto_map):
    from nas_bert.study import load_study

    study = load_study(tiny_study_file)
    folder = tmp_path / "student"
    _save_student(folder, tiny_teacher, tiny_space, auto_map)
    # With auto_map the folder's own code is loaded; without it, our package's NasBertModel.
    assert type(ev.load_student(folder)).__module__.startswith("transformers_modules") == auto_map
    out = ev.evaluate_path(study, str(folder), False, "wordnet", TINY)
    assert out.arch_hash == "abc123" and 0.0 <= out.accuracy <= 1.0 and -1.0 <= out.fidelity <= 1.0
    if out.accuracy_ratio is not None:  # the interval holds the ratio it is of
        assert out.accuracy_ratio_low <= out.accuracy_ratio <= out.accuracy_ratio_high
    info = json.loads((folder / "nas_bert.json").read_text())
    assert info["metrics"]["approx_loss"] == 0.5 and info["metrics"]["fidelity"] == out.fidelity
    assert info["metrics"]["eval_config"]["finetune_steps"] == 5
    # the database keeps which test examples it got right (pairwise comparisons); the folder's file does not
    assert out.test_correct and sum(map(int, out.test_correct)) / len(out.test_correct) == pytest.approx(out.accuracy)
    assert "test_correct" not in info["metrics"]
    assert not list(folder.glob(".nas_bert.json.*"))  # no temporary file left behind
    teacher = ev.evaluate_path(study, None, True, "wordnet", TINY)
    assert teacher.accuracy == out.teacher_accuracy and "test_probs" not in teacher.model_dump()
    with Database(study.db_url).session() as s:
        subjects = sorted(r.subject for r in s.scalars(select(EvaluationRow)))
    assert subjects == sorted([str(folder.resolve()), "teacher"])


def test_evaluate_path_rejects_non_model_folders(tmp_path: Path, tiny_study_file):
    from nas_bert.study import load_study

    study = load_study(tiny_study_file)
    with pytest.raises(NasBertError, match="does not exist"):
        ev.evaluate_path(study, str(tmp_path / "nope"), False, "wordnet", TINY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NasBertError, match="no config.json"):
        ev.evaluate_path(study, str(tmp_path / "empty"), False, "wordnet", TINY)
