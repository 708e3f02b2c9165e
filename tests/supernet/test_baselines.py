"""Hand-designed baselines: exact teacher copies, ETD extraction of leading or important units, distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import copy_study

from nas_bert.distill import StudentContext, distill_baseline
from nas_bert.errors import NasBertError
from nas_bert.evaluate import load_student
from nas_bert.study import load_study
from nas_bert.supernet import (
    pruned_architecture,
    teacher_initialised,
    truncated_architecture,
    uniform_architecture,
)
from nas_bert.teacher import Importance, teacher_importance

IDS = torch.tensor([[101, 2023, 2003, 1037, 2235, 3899, 102, 0], [101, 7592, 2088, 102, 0, 0, 0, 0]])
MASK = (IDS != 0).long()


def test_truncated_teacher_is_an_exact_copy(tiny_teacher):
    states = tiny_teacher.hidden_states(IDS, MASK)
    for k in (1, 2, tiny_teacher.num_layers):
        arch = truncated_architecture(tiny_teacher, k)
        student = teacher_initialised(arch, tiny_teacher)
        assert arch.params() == sum(p.numel() for p in student.parameters())
        # full width: nothing between the embeddings and the layers, nothing after them
        assert student.blocks[0].grow is None and student.output_projection is None and student.output_index is None
        out = student.eval()(IDS, attention_mask=MASK, output_hidden_states=True)
        real = MASK.bool()
        assert torch.allclose(out.last_hidden_state[real], states[k][real], atol=1e-5)
        assert torch.allclose(out.hidden_states[2][real], states[1][real], atol=1e-5)  # layer 1 after its pair
    with pytest.raises(NasBertError, match="layers must lie in 1..4"):
        truncated_architecture(tiny_teacher, 5)


def test_uniform_width_extracts_leading_or_important_units(tiny_teacher):
    arch = uniform_architecture(tiny_teacher, 16)  # half width: 2 heads of 8, inner 32
    assert arch.depth == 2 * tiny_teacher.num_layers and arch.blocks[0].ops[0].heads == 2
    assert arch.blocks[0].ops[1].inner == 32
    with pytest.raises(NasBertError, match="multiple of the teacher's head size 8"):
        uniform_architecture(tiny_teacher, 12)
    t0 = tiny_teacher.encoder.encoder.layer[0]

    leading = teacher_initialised(arch, tiny_teacher)
    assert leading.config.dim_order == list(range(32))  # the leading units, in the teacher's order
    assert torch.equal(leading.blocks[0].layers[0].query.weight, t0.attention.self.query.weight[:16, :16])
    assert torch.equal(leading.output_projection.weight, torch.eye(32)[:, :16])  # no batches: the rest is zero

    gen = torch.Generator().manual_seed(0)
    n = tiny_teacher.num_layers
    imp = Importance(torch.rand(32, generator=gen), [torch.rand(4, generator=gen) for _ in range(n)],
                     [torch.rand(64, generator=gen) for _ in range(n)])
    batches = [{"input_ids": IDS, "attention_mask": MASK}]
    chosen = teacher_initialised(arch, tiny_teacher, imp, batches)
    order = torch.argsort(imp.hidden, descending=True)  # student dimension k = teacher dimension order[k]
    dims = order[:16]
    heads = torch.argsort(imp.heads[0], descending=True)[:2]
    rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in heads.tolist()])
    neurons = torch.argsort(imp.neurons[0], descending=True)[:32]
    layer = chosen.blocks[0].layers
    assert chosen.config.dim_order == order.tolist()
    emb = tiny_teacher.encoder.embeddings.word_embeddings.weight
    assert torch.equal(chosen.embeddings.word_embeddings.weight, emb[:, order])  # the embeddings in that order
    assert torch.equal(layer[0].query.weight, t0.attention.self.query.weight[rows][:, dims])
    assert torch.equal(layer[0].output.weight, t0.attention.output.dense.weight[dims][:, rows])
    assert torch.equal(layer[1].intermediate.weight, t0.intermediate.dense.weight[neurons][:, dims])
    assert torch.equal(layer[1].LayerNorm.weight, t0.output.LayerNorm.weight[dims])
    # the output map puts the kept dimensions back in their places and predicts the dropped ones
    w = chosen.output_projection.weight
    assert torch.equal(w[dims], torch.eye(16))
    assert w[order[16:]].abs().sum() > 0
    states = tiny_teacher.hidden_states(IDS, MASK)[n]
    real = MASK.bool()
    kept = states.index_select(-1, dims)
    predicted = chosen.output_projection(kept)
    zeros = torch.zeros_like(states).index_copy(-1, dims, kept)
    assert ((predicted - states)[real] ** 2).mean() < ((zeros - states)[real] ** 2).mean()


def test_pruned_teacher_keeps_its_width_and_its_most_important_neurons(tiny_teacher):
    arch = pruned_architecture(tiny_teacher, 2, 16)  # two layers, feed-forward 64 -> 16 neurons
    assert [(op.kind, op.heads or op.inner) for op in arch.blocks[0].ops] == [("mha", 4), ("ffn", 16)] * 2
    assert arch.blocks[0].hidden == 32
    with pytest.raises(NasBertError, match="feed-forward of 65 neurons: must lie in 1..64"):
        pruned_architecture(tiny_teacher, 1, 65)
    gen = torch.Generator().manual_seed(1)
    n = tiny_teacher.num_layers
    imp = Importance(torch.rand(32, generator=gen), [torch.rand(4, generator=gen) for _ in range(n)],
                     [torch.rand(64, generator=gen) for _ in range(n)])
    student = teacher_initialised(arch, tiny_teacher, imp).eval()
    assert student.output_projection is None  # full width: nothing to put back
    for i in range(2):
        t = tiny_teacher.encoder.encoder.layer[i]
        kept = torch.argsort(imp.neurons[i], descending=True)[:16]
        att, ffn = student.blocks[0].layers[2 * i], student.blocks[0].layers[2 * i + 1]
        heads = torch.argsort(imp.heads[i], descending=True)  # every head kept, in order of importance
        rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in heads.tolist()])
        assert torch.equal(att.query.weight, t.attention.self.query.weight[rows])
        assert torch.equal(ffn.intermediate.weight, t.intermediate.dense.weight[kept])
        assert torch.equal(ffn.output.weight, t.output.dense.weight[:, kept])
    # all neurons kept is the truncated teacher, exactly (heads and neurons in another order compute the same)
    full = teacher_initialised(pruned_architecture(tiny_teacher, 2, 64), tiny_teacher, imp).eval()
    real = MASK.bool()
    out = full(IDS, attention_mask=MASK).last_hidden_state
    assert torch.allclose(out[real], tiny_teacher.hidden_states(IDS, MASK)[2][real], atol=1e-5)


def test_importance_ranks_units_by_their_share_of_the_output(tiny_teacher):
    imp = teacher_importance(tiny_teacher, [{"input_ids": IDS, "attention_mask": MASK}])
    assert imp.hidden.shape == (32,) and len(imp.heads) == len(imp.neurons) == tiny_teacher.num_layers
    assert all(h.shape == (4,) and bool((h > 0).all()) for h in imp.heads)
    layer = tiny_teacher.encoder.encoder.layer[0]
    with torch.no_grad():  # a silenced neuron contributes nothing, so it ranks last
        saved = layer.output.dense.weight[:, 5].clone()
        layer.output.dense.weight[:, 5] = 0
        try:
            zeroed = teacher_importance(tiny_teacher, [{"input_ids": IDS, "attention_mask": MASK}])
        finally:
            layer.output.dense.weight[:, 5] = saved
    assert zeroed.neurons[0][5] == 0 and int(zeroed.neurons[0].argmin()) == 5


def test_distill_baseline_resumes_and_saves_a_student(searched_tiny, tmp_path):
    study = load_study(copy_study(searched_tiny, tmp_path))
    ctx = StudentContext.open(study)
    arch = uniform_architecture(ctx.teacher, 16, layers=2)
    first = distill_baseline(ctx, "uniform-16", arch, stop_after=2)
    assert first["step"] == 2 and first["student_path"] is None and first["before"] is not None
    done = distill_baseline(ctx, "uniform-16", arch)
    assert done["step"] == 4 and done["mapping"] == [2, 4]  # TinyBERT's uniform mapping, 2 points of 4 layers
    # the kept weights are the best held-out fidelity, the start included: never below the start
    assert done["after"]["best"]["value"] >= first["before"]["fidelity"]
    student = load_student(done["student_path"])
    assert Path(done["student_path"]).parent.parent == tmp_path / "tiny" / "baselines" / "uniform-16"
    assert student.config.architecture == arch.to_dict()


def test_finalists_take_the_pruned_teacher_at_each_smaller_ratio_of_the_space(tiny_teacher, tiny_space):
    from types import SimpleNamespace

    from nas_bert.choose import baseline_family

    def family(space):
        study = SimpleNamespace(space=space, cfg=SimpleNamespace(search=SimpleNamespace(finalist_width_step=2)))
        return baseline_family(SimpleNamespace(teacher=tiny_teacher, study=study))

    assert not [n for n in family(tiny_space) if n.startswith("pruned")]  # one ratio: nothing to prune to
    out = family(tiny_space.model_copy(update={"ffn_ratios": (1, 2, 4)}))
    pruned = {n: c for n, c in out.items() if c.origin == "pruned"}
    # the teacher's feed-forward (64 = its largest ratio) at the space's smaller ratios 1/4 and 1/2, every depth
    assert sorted(pruned) == sorted(f"pruned-{k}-i{i}" for k in range(1, 5) for i in (16, 32))
    arch = pruned["pruned-3-i16"].arch
    assert arch.blocks[0].hidden == 32 and [op.inner for op in arch.blocks[0].ops if op.kind == "ffn"] == [16] * 3
    assert {c.origin for c in out.values()} == {"truncated", "uniform", "pruned"}
