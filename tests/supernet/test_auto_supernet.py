"""A supernet of the space made from the teacher holds the teacher's importance-ordered weights: extracting
a point is a copy of its path, the teacher's cuts are the teacher exactly, and a narrower uniform student is
exactly the hand-designed (ETD) one."""

from __future__ import annotations

import random

import pytest
import torch

from nas_bert.data import fixed_batches, load_corpus, make_collator
from nas_bert.space import TeacherShape, families, load_space, sample
from nas_bert.study import CorpusConfig
from nas_bert.supernet import teacher_initialised, uniform_architecture
from nas_bert.supernet.elastic import Supernet, fit_reconstruction, inherit_teacher
from nas_bert.teacher import teacher_importance


@pytest.fixture(scope="module")
def auto_setup(tiny_teacher):
    torch.manual_seed(0)
    space = load_space("auto", teacher=lambda: TeacherShape.of(tiny_teacher.config))
    cfg = CorpusConfig(max_seq_length=32, max_train_examples=200, max_eval_examples=50)
    corpus = load_corpus(cfg, tiny_teacher.tokenizer)
    batches = fixed_batches(corpus["train"], make_collator(tiny_teacher.tokenizer, cfg), 3, 8, seed=0)
    importance = teacher_importance(tiny_teacher, batches)
    net = Supernet(space, tiny_teacher.hidden_size, eps=float(tiny_teacher.config.layer_norm_eps))
    inherit_teacher(net, tiny_teacher, importance)
    states = [tiny_teacher.boundaries(tiny_teacher.hidden_states(b["input_ids"], b["attention_mask"]), space.blocks)
              for b in batches]
    fit_reconstruction(net, states, [b["attention_mask"] for b in batches])
    return space, net.eval(), importance, batches


@torch.no_grad()
def test_extracting_random_points_is_exact(tiny_teacher, auto_setup) -> None:
    space, net, _, batches = auto_setup
    emb = tiny_teacher.embeddings_spec()
    rng = random.Random(3)
    batch = batches[0]
    mask = batch["attention_mask"]
    embedded = tiny_teacher.hidden_states(batch["input_ids"], mask)[0]
    for _ in range(8):
        arch = sample(space, emb, rng)
        student = net.extract(arch, tiny_teacher.encoder.embeddings).eval()
        ours = student(batch["input_ids"], attention_mask=mask).last_hidden_state
        path = net.forward_student(embedded, arch, mask)
        assert (ours - path)[mask.bool()].abs().max() < 1e-5, str(arch)


@torch.no_grad()
def test_the_teachers_cuts_are_the_teacher(tiny_teacher, auto_setup) -> None:
    space, net, _, batches = auto_setup
    emb = tiny_teacher.embeddings_spec()
    batch = batches[1]
    mask = batch["attention_mask"]
    states = tiny_teacher.hidden_states(batch["input_ids"], mask)
    fam = families(space, emb)
    for k in range(1, tiny_teacher.num_layers):
        student = net.extract(fam[f"truncated-{k}"][1], tiny_teacher.encoder.embeddings).eval()
        out = student(batch["input_ids"], attention_mask=mask).last_hidden_state
        assert (out - states[k])[mask.bool()].abs().max() < 1e-5


@torch.no_grad()
def test_a_uniform_point_has_the_hand_designed_students_weights(tiny_teacher, auto_setup) -> None:
    space, net, importance, batches = auto_setup
    emb = tiny_teacher.embeddings_spec()
    w = space.hidden_sizes[0]
    point = families(space, emb)[f"uniform-{w}"][1]
    ours = net.extract(point, tiny_teacher.encoder.embeddings).eval()
    hand = teacher_initialised(uniform_architecture(tiny_teacher, w), tiny_teacher, importance, batches).eval()
    assert ours.num_parameters() == hand.num_parameters()
    batch = batches[2]
    mask = batch["attention_mask"]
    a = ours(batch["input_ids"], attention_mask=mask).last_hidden_state
    b = hand(batch["input_ids"], attention_mask=mask).last_hidden_state
    assert (a - b)[mask.bool()].abs().max() < 1e-4


def test_training_leaves_the_teachers_path_as_it_is(tiny_study_file) -> None:
    """Supernet training in the space made from the teacher refines the shared weights; the teacher's own layers
    (full width, every head and neuron) stay frozen, so its cuts stay the teacher exactly."""
    from nas_bert.study import load_study
    from nas_bert.supernet import train_supernet

    study = load_study(tiny_study_file, overrides={"search_space": "auto", "supernet.steps": 4})
    assert study.space.layer_slots
    result = train_supernet(study)
    assert result.step == 4 and result.teacher_paths
    for path in result.teacher_paths:
        assert path.max_abs_diff < 1e-5, path


def test_an_untrained_supernet_is_one_checkpoint(tiny_study_file) -> None:
    """steps 0: the supernet is the teacher's weights as they are, saved once and found by the later stages."""
    from nas_bert.search import load_trained
    from nas_bert.store import Database
    from nas_bert.study import load_study
    from nas_bert.supernet import train_supernet

    study = load_study(tiny_study_file, overrides={"search_space": "auto", "supernet.steps": 0})
    result = train_supernet(study)
    assert result.step == 0 and result.sha256
    again = train_supernet(study)  # nothing to do a second time
    assert again.checkpoint == result.checkpoint and again.sha256 == result.sha256
    ckpt, _, net = load_trained(Database(study.db_url), study, "cpu")
    assert ckpt.step == 0 and net.space.layer_slots


@torch.no_grad()
def test_a_full_width_student_pays_no_reordering(tiny_teacher, auto_setup) -> None:
    space, net, _, _ = auto_setup
    emb = tiny_teacher.embeddings_spec()
    full = families(space, emb)["pruned-2-i32"][1]
    student = net.extract(full, tiny_teacher.encoder.embeddings)
    assert not full.reorders() and student.output_index is None and student.config.dim_order is None
    narrow = families(space, emb)[f"uniform-{space.hidden_sizes[0]}"][1]
    assert net.extract(narrow, tiny_teacher.encoder.embeddings).config.dim_order is not None
