"""Teachers: the shipped MiniLM, MLM-headed BERTs, and clear errors for non-encoders."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2Model

from nas_bert.errors import NasBertError
from nas_bert.space import architecture as A
from nas_bert.space import load_space
from nas_bert.supernet import Supernet
from nas_bert.teacher import load_teacher, resolve_teacher


@pytest.fixture(scope="module")
def minilm():
    return load_teacher("minilm-l6")


@pytest.mark.slow
def test_minilm_alias_loads_offline(minilm):
    assert minilm.num_layers == 6 and minilm.hidden_size == 384
    assert minilm.embeddings_spec() == A.Embeddings(30522, 512, 2, 384)
    n = sum(p.numel() for p in minilm.encoder.parameters())
    assert 22_000_000 < n < 23_000_000
    batch = minilm.tokenizer(["a domesticated carnivorous mammal"], return_tensors="pt")
    states = minilm.hidden_states(batch["input_ids"], batch["attention_mask"])
    assert len(states) == 7 and states[0].shape[-1] == 384
    bounds = minilm.boundaries(states, blocks=3)
    assert [b.data_ptr() for b in bounds] == [states[i].data_ptr() for i in (0, 2, 4, 6)]


@pytest.mark.slow
def test_extraction_on_the_real_teacher_matches_the_supernet(minilm):
    space = load_space("nas_bert")
    torch.manual_seed(0)
    net = Supernet(space, minilm.hidden_size).eval()
    batch = minilm.tokenizer(["a dog is a domesticated canid", "to run"], return_tensors="pt", padding=True)
    embedded = minilm.hidden_states(batch["input_ids"], batch["attention_mask"])[0]
    for seed in (0, 1):
        arch = A.sample(space, minilm.embeddings_spec(), seed)
        student = net.extract(arch, minilm.encoder.embeddings).eval()
        assert sum(p.numel() for p in student.parameters()) == arch.params()
        ours = net.forward_student(embedded, arch, batch["attention_mask"])
        theirs = student(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        real = batch["attention_mask"].bool()
        assert (ours - theirs)[real].abs().max() <= 1e-5


@pytest.mark.slow
def test_supernet_inherits_the_real_teacher(minilm):
    from nas_bert.supernet import inherit_teacher
    from nas_bert.teacher import teacher_importance

    space = load_space("nas_bert")
    net = Supernet(space, minilm.hidden_size, float(minilm.config.layer_norm_eps)).eval()
    batch = minilm.tokenizer(["a dog is a domesticated canid", "to run"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    inherit_teacher(net, minilm, teacher_importance(minilm, [{"input_ids": ids, "attention_mask": mask}]))
    full = A.Block(384, (A.Op("mha", heads=12), A.Op("ffn", inner=1536)) * 2)
    arch = A.Architecture.build(minilm.embeddings_spec(), (full,) * 3)
    student = net.extract(arch, minilm.encoder.embeddings).eval()
    with torch.no_grad():
        ours = student(ids, attention_mask=mask).last_hidden_state
    theirs = minilm.hidden_states(ids, mask)[-1]
    assert (ours - theirs)[mask.bool()].abs().max() <= 1e-4  # the largest student is the teacher, unit order aside


def test_mlm_teacher_keeps_its_head(tmp_path, tiny_teacher):
    cfg = BertConfig(vocab_size=tiny_teacher.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, architectures=["BertForMaskedLM"])
    BertForMaskedLM(cfg).save_pretrained(tmp_path)
    tiny_teacher.tokenizer.save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    assert teacher.mlm is not None and teacher.num_layers == 2
    ids = torch.tensor([[101, 2000, 102]])
    assert len(teacher.hidden_states(ids)) == 3
    assert not any(p.requires_grad for p in teacher.encoder.parameters())


def test_a_masked_lm_class_without_its_head_in_the_checkpoint_is_used_without_one(tmp_path, tiny_teacher, capsys):
    """config.json names BertForMaskedLM but the weights are the bare encoder's (as all-mpnet-base-v2 ships):
    the head would be random, so the teacher has none, and stderr says why in one line."""
    cfg = BertConfig(vocab_size=tiny_teacher.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, architectures=["BertForMaskedLM"])
    encoder = BertModel(cfg, add_pooling_layer=False).eval()
    encoder.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"architectures": ["BertForMaskedLM"]}))
    tiny_teacher.tokenizer.save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    assert teacher.mlm is None and teacher.use != "mlm"
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "masked-LM head" in x]
    assert "BertForMaskedLM" in line and "cls.predictions" in line and "no logit distillation" in line
    assert load_teacher(str(tmp_path)).mlm is None and "masked-LM head" not in capsys.readouterr().err  # said once
    ids = torch.tensor([[101, 2000, 102]])
    with torch.no_grad():  # the encoder is the checkpoint's own
        assert torch.allclose(teacher.hidden_states(ids)[-1], encoder(ids).last_hidden_state, atol=1e-6)


def test_decoder_is_refused(tmp_path, tiny_teacher):
    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(NasBertError, match="BERT-family encoder"):
        load_teacher(str(tmp_path))


def test_resolution_errors(tmp_path):
    with pytest.raises(NasBertError, match="does not exist"):
        resolve_teacher(str(tmp_path / "missing"))
    assert resolve_teacher("bert-base-uncased") == "bert-base-uncased"  # a Hub id passes through
