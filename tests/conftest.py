"""Shared fixtures: a tiny random teacher (cached per session), the tiny space and study."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The tiny teacher is built into a per-session cache, so tests never depend on ~/.cache.
    os.environ["NAS_BERT_CACHE"] = str(tmp_path_factory.mktemp("nas-bert-cache"))


@pytest.fixture(scope="session")
def tiny_space():
    from nas_bert.space import load_space

    return load_space("tiny")


@pytest.fixture(scope="session")
def tiny_teacher():
    from nas_bert.teacher import load_teacher

    return load_teacher("tiny-random-bert")


@pytest.fixture()
def tiny_study_file(tmp_path: Path) -> Path:
    """A copy of studies/tiny.yaml in a temporary folder, so its database and checkpoints land there."""
    dst = tmp_path / "tiny.yaml"
    shutil.copy(ROOT / "studies" / "tiny.yaml", dst)
    return dst
