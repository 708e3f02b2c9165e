"""Study files: paths in them are read from the file's folder, whatever the working directory; a path that
is missing stays a path (its loader says so) and never becomes a Hub id."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nas_bert.data.corpus import CorpusError, load_raw
from nas_bert.errors import NasBertError
from nas_bert.study import load_study
from nas_bert.teacher import resolve_teacher, teacher_identity

ROOT = Path(__file__).resolve().parents[1]


def _study(folder: Path, **keys) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text())
    for key, value in keys.items():
        node = data
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    (folder / "tiny.yaml").write_text(yaml.safe_dump(data))
    return folder / "tiny.yaml"


def test_paths_are_read_from_the_study_files_folder(tmp_path, monkeypatch, tiny_teacher):
    studies = tmp_path / "studies"
    shutil.copytree(tiny_teacher.source, studies / "my-bert")
    (studies / "texts.txt").write_text("one text\nanother text\n")
    file = _study(studies, teacher="my-bert", **{"corpus.name": "texts.txt"})
    monkeypatch.chdir(tmp_path)  # neither is there
    study = load_study(file)
    assert study.cfg.teacher == str(studies / "my-bert") and resolve_teacher(study.cfg.teacher) == study.cfg.teacher
    assert study.cfg.corpus.name == str(studies / "texts.txt")
    # the teacher is known by its content: the same study moved elsewhere is the same teacher
    moved = tmp_path / "elsewhere"
    shutil.copytree(studies, moved)
    assert teacher_identity(load_study(moved / "tiny.yaml").cfg.teacher) == teacher_identity(study.cfg.teacher)


@pytest.mark.parametrize("teacher", ["./no-such-bert", "models/no-such-bert", "../x/y/z"])
def test_a_missing_local_teacher_is_an_error_never_a_hub_id(tmp_path, teacher):
    (tmp_path / "models").mkdir()  # so models/no-such-bert can only mean a folder here
    study = load_study(_study(tmp_path, teacher=teacher))
    assert Path(study.cfg.teacher).is_absolute()
    with pytest.raises(NasBertError, match="does not exist"):
        resolve_teacher(study.cfg.teacher)


def test_hub_ids_and_aliases_stay_as_written(tmp_path):
    assert load_study(_study(tmp_path, teacher="org/model")).cfg.teacher == "org/model"
    assert load_study(_study(tmp_path, teacher="minilm-l6")).cfg.teacher == "minilm-l6"
    assert load_study(_study(tmp_path, **{"corpus.name": "wikitext"})).cfg.corpus.name == "wikitext"


def test_a_missing_corpus_file_is_named(tmp_path):
    study = load_study(_study(tmp_path, **{"corpus.name": "missing.txt"}))
    with pytest.raises(CorpusError, match=f"corpus file not found: {tmp_path / 'missing.txt'}"):
        load_raw(study.cfg.corpus)


def test_budgets_given_as_fractions_of_the_teacher_resolve_to_ms(tmp_path):
    from nas_bert.pipeline import resolve_budgets, stage_status

    shutil.copy(ROOT / "studies" / "tiny.yaml", tmp_path / "tiny.yaml")
    study = load_study(tmp_path / "tiny.yaml", overrides={"search.budgets_ms": [5.0], "search.budgets_x": [0.25, 0.5]})
    assert resolve_budgets(study, 20.0) == {5.0: None, 10.0: 0.5}  # 0.25x is 5 ms: given once, in ms
    assert resolve_budgets(study, 30.0) == {5.0: None, 7.5: 0.25, 15.0: 0.5}
    assert resolve_budgets(study, None) == {5.0: None}  # unknown until the latency model is fitted
    waiting = [s for s in stage_status(study) if s.key.endswith("x")]
    assert [s.key for s in waiting] == ["0.25x", "0.5x"] and all("latency model" in s.why for s in waiting)
    for bad in ([0.0], [1.5], [float("nan")]):
        data = yaml.safe_load((ROOT / "studies" / "tiny.yaml").read_text()) | {"search": {"budgets_x": bad}}
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(NasBertError, match="search.budgets_x"):
            load_study(tmp_path / "bad.yaml")


@pytest.mark.parametrize(("device", "gpus", "processes", "want"), [
    ("auto", 0, "1", "cpu"), ("auto", 1, "1", "cuda"), ("auto", 1, "2", "cpu"), ("auto", 2, "2", "cuda"),
    ("cpu", 1, "1", "cpu"), ("cuda", 1, "1", "cuda"), ("cuda", 0, "1", None), ("cuda", 1, "2", None)])
def test_the_study_device_is_a_gpu_per_process_or_the_cpu(tmp_path, monkeypatch, device, gpus, processes, want):
    # torchrun's two CPU processes of the README on a one-GPU machine: `auto` trains on the CPU (each would
    # otherwise ask for a GPU of its own); `cuda` says in one line what to change
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    study = load_study(_study(tmp_path, device=device))
    if want is None:
        with pytest.raises(NasBertError, match=f"study asks for device 'cuda' in {processes} process.* {gpus} visible"):
            study.device()
    else:
        assert study.device().type == want


def test_a_checkpoint_from_a_machine_with_more_gpus_restores_the_gpus_this_one_has(monkeypatch):
    import torch

    from nas_bert.train import rng_state, set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    state = rng_state()
    state["cuda"] = [torch.tensor([7], dtype=torch.uint8), torch.tensor([9], dtype=torch.uint8)]  # two GPUs saved
    set_rng_state(state)
    assert restored == [(7, 0)]
