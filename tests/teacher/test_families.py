"""Every supported teacher family compresses from its own weights: its full path, extracted as a student, is the
teacher (every layer, padding included), a narrower point extracts exactly from the supernet, the hand-designed
students are the supernet's points, and an unsupported model type is one line naming the families."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    CamembertConfig,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from nas_bert.errors import NasBertError
from nas_bert.space import TeacherShape, families, layers_point, load_space, sample
from nas_bert.supernet import teacher_initialised, uniform_architecture
from nas_bert.supernet.elastic import Supernet, inherit_teacher
from nas_bert.teacher import Importance, load_teacher, load_teacher_config, resolve_teacher, teacher_importance

SIZES = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 40}
CONFIGS = {
    "bert": lambda: BertConfig(**SIZES),
    "roberta": lambda: RobertaConfig(**SIZES),
    "xlm-roberta": lambda: XLMRobertaConfig(**SIZES),
    "camembert": lambda: CamembertConfig(**SIZES),
    "electra": lambda: ElectraConfig(embedding_size=32, **SIZES),
    "distilbert": lambda: DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           activation="gelu", max_position_embeddings=40),
    "mpnet": lambda: MPNetConfig(**SIZES),
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_teacher("minilm-l6"))  # load_teacher needs one; these tests pass ids


def _save(config, folder, tokenizer=None, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    with torch.no_grad():  # larger than the default 0.02 init, so that a position or bias mistake shows
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name or "position_embeddings" in name or "token_type" in name:
                p.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module", params=list(CONFIGS))
def family_setup(request, tmp_path_factory, tokenizer):
    """A tiny random teacher of the family (loaded as nas-bert loads any teacher), its supernet over the space made
    from it (teacher init, random unit importance so that heads, neurons and dimensions are reordered), and a batch
    with padding."""
    folder = tmp_path_factory.mktemp(request.param)
    _save(CONFIGS[request.param](), folder, tokenizer)
    teacher = load_teacher(str(folder))
    embeddings = teacher.family.embeddings_of(teacher.encoder)
    # RoBERTa's and MPNet's positions start after their padding index (1); the others' at 0
    assert embeddings.position_offset == (2 if request.param in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0)
    assert (embeddings.token_type is None) == (request.param in ("distilbert", "mpnet"))
    pad = embeddings.word.padding_idx
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (3, 14), generator=gen)
    mask = torch.ones_like(ids)
    for row, n in ((1, 9), (2, 4)):  # padded, as a tokenizer pads: pad ids after the text
        ids[row, n:], mask[row, n:] = pad, 0
    batch = {"input_ids": ids, "attention_mask": mask}
    measured = teacher_importance(teacher, [batch])  # its hooks find the family's modules
    assert [len(h) for h in measured.heads] == [4, 4] and all(bool((n > 0).all()) for n in measured.neurons)
    imp = Importance(torch.rand(32, generator=gen), [torch.randperm(4, generator=gen).float() for _ in range(2)],
                     [torch.rand(64, generator=gen) for _ in range(2)])
    space = load_space("auto", teacher=lambda: TeacherShape.of(teacher.config))
    rel = teacher.relative_attention()
    net = Supernet(space, teacher.hidden_size, eps=float(teacher.config.layer_norm_eps), frozen={"heads": 4, "inner": 64},
                   relative=rel.spec() if rel else None)
    inherit_teacher(net, teacher, imp)
    return request.param, teacher, space, net.eval(), imp, batch


@torch.no_grad()
def test_the_full_path_is_the_teacher(family_setup) -> None:
    name, teacher, space, net, _, batch = family_setup
    ids, mask = batch["input_ids"], batch["attention_mask"]
    states = teacher.hidden_states(ids, mask)
    emb = teacher.embeddings_spec()
    student = net.extract(layers_point(space, emb, [0, 1]), teacher.encoder.embeddings).eval()
    out = student(ids, attention_mask=mask, output_hidden_states=True)
    assert (out.last_hidden_state - states[-1]).abs().max() < 1e-5, name  # padded positions too
    for k in range(3):  # embeddings, then each layer (the student's states: after each attention and feed-forward)
        assert (out.hidden_states[2 * k] - states[k]).abs().max() < 1e-5, (name, k)


@torch.no_grad()
def test_a_narrower_point_extracts_exactly(family_setup) -> None:
    name, teacher, space, net, _, batch = family_setup
    ids, mask = batch["input_ids"], batch["attention_mask"]
    embedded = teacher.hidden_states(ids, mask)[0]
    emb = teacher.embeddings_spec()
    narrow = layers_point(space, emb, [1], width=16, heads=2, inner=32)  # fewer layers, heads, neurons, dimensions
    rng = random.Random(0)
    for arch in (narrow, *(sample(space, emb, rng) for _ in range(3))):
        student = net.extract(arch, teacher.encoder.embeddings).eval()
        assert sum(p.numel() for p in student.parameters()) == arch.params() + (
            student.relative_attention_bias.weight.numel() if student.relative_attention_bias is not None else 0)
        ours = student(ids, attention_mask=mask).last_hidden_state
        path = net.forward_student(embedded, arch, mask)
        assert (ours - path)[mask.bool()].abs().max() < 1e-5, (name, str(arch))


@torch.no_grad()
def test_hand_designed_students_are_the_supernets_points(family_setup) -> None:
    """The teacher-initialised baselines read the teacher through the same adapter: the full-width one is the
    teacher, a narrower uniform one is the supernet's point of that width."""
    name, teacher, space, net, imp, batch = family_setup
    ids, mask = batch["input_ids"], batch["attention_mask"]
    full = teacher_initialised(uniform_architecture(teacher, 32), teacher).eval()
    assert (full(ids, attention_mask=mask).last_hidden_state - teacher.hidden_states(ids, mask)[-1]).abs().max() < 1e-5
    hand = teacher_initialised(uniform_architecture(teacher, 16), teacher, imp).eval()
    point = net.extract(families(space, teacher.embeddings_spec())["uniform-16"][1], teacher.encoder.embeddings).eval()
    diff = hand(ids, attention_mask=mask).last_hidden_state - point(ids, attention_mask=mask).last_hidden_state
    assert diff[mask.bool()].abs().max() < 1e-5, name


def test_a_student_of_the_family_saves_and_loads(family_setup, tmp_path) -> None:
    """Position numbering and the relative bias travel in the student's own config and weights."""
    from nas_bert.model import NasBertModel

    name, teacher, space, net, _, batch = family_setup
    student = net.extract(layers_point(space, teacher.embeddings_spec(), [0, 1], heads=2), teacher.encoder.embeddings)
    student.save_pretrained(tmp_path)
    again = NasBertModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a = student.eval()(**batch).last_hidden_state
        b = again(**batch).last_hidden_state
    assert torch.equal(a, b), name


def test_an_unsupported_model_type_is_one_line(tmp_path, tokenizer) -> None:
    from transformers import AlbertConfig, AlbertModel

    AlbertModel(AlbertConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=4, intermediate_size=64)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(NasBertError) as e:
        load_teacher(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "'albert'" in msg
    assert all(f in msg for f in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "mpnet"))


def test_electra_with_narrower_embeddings_is_refused(tmp_path, tokenizer) -> None:
    _save(ElectraConfig(embedding_size=16, **SIZES), tmp_path, tokenizer)
    with pytest.raises(NasBertError, match="embedding_size 16 != hidden_size 32") as e:
        load_teacher(str(tmp_path))
    assert "\n" not in str(e.value)


def test_a_tanh_gelu_teacher_is_refused_for_copying(tmp_path, tokenizer) -> None:
    _save(BertConfig(**(SIZES | {"hidden_act": "gelu_new"})), tmp_path, tokenizer)
    teacher = load_teacher(str(tmp_path))
    space = load_space("auto", teacher=lambda: TeacherShape.of(teacher.config))
    with pytest.raises(NasBertError, match="gelu_new"):
        inherit_teacher(Supernet(space, 32), teacher)


def test_distilbert_config_answers_to_berts_names(tmp_path) -> None:
    """The rest of nas-bert (the space made from the teacher, the frozen layers) reads BERT's config names."""
    AutoModel.from_config(CONFIGS["distilbert"]()).save_pretrained(tmp_path)
    config = load_teacher_config(str(tmp_path))
    assert (config.intermediate_size, config.hidden_act, config.layer_norm_eps) == (64, "gelu", 1e-12)
    assert TeacherShape.of(config) == TeacherShape(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64)


def test_gpt2_is_still_refused_as_no_bert_family_encoder(tmp_path) -> None:
    from transformers import GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(NasBertError, match="BERT-family encoder"):
        load_teacher(str(tmp_path))


def test_an_mpnet_student_exports_to_onnx(tmp_path, tokenizer) -> None:
    """The relative position bias and the padding-aware positions trace into ONNX, which matches PyTorch."""
    from nas_bert.export.onnx_export import export_onnx

    _save(MPNetConfig(**(SIZES | {"vocab_size": tokenizer.vocab_size})), tmp_path / "teacher", tokenizer)
    teacher = load_teacher(str(tmp_path / "teacher"))
    space = load_space("auto", teacher=lambda: TeacherShape.of(teacher.config))
    net = Supernet(space, 32, relative=teacher.relative_attention().spec())
    inherit_teacher(net, teacher)
    student = net.eval().extract(layers_point(space, teacher.embeddings_spec(), [0, 1], heads=2), teacher.encoder.embeddings)
    checks = export_onnx(student, tmp_path / "student", tokenizer, 32)
    assert checks["onnx_max_abs_diff"] <= 1e-4
