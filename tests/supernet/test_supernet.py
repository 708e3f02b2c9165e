from __future__ import annotations

import pytest
import torch

from nas_bert.space import architecture as A
from nas_bert.supernet import Supernet, masked_mse


@pytest.fixture()
def net(tiny_space):
    torch.manual_seed(0)
    return Supernet(tiny_space, teacher_width=32).eval()


def test_weights_are_shared_across_widths(net, tiny_space):
    # One weight tensor per operator type per sublayer position, at the largest width.
    sub = net.blocks[0].sublayers[0]
    assert sub.query.weight.shape == (32, 32)
    assert sub.intermediate.weight.shape == (tiny_space.max_inner, 32)
    assert sub.depthwise.weight.shape == (32, 1, tiny_space.max_kernel)
    # A narrow path's gradient lands in the leading slice of the same tensor, nothing else.
    x = torch.randn(2, 6, 32)
    block = A.Block(16, (A.Op("ffn", inner=32), A.IDENTITY, A.IDENTITY, A.IDENTITY))
    net.forward_block(0, x, block).sum().backward()
    g = sub.intermediate.weight.grad
    assert g[:32, :16].abs().sum() > 0
    assert g[32:].abs().sum() == 0 and g[:, 16:].abs().sum() == 0
    assert sub.query.weight.grad is None  # operators not on the path get nothing


def test_sizes_are_arguments_not_state(net, tiny_space):
    x = torch.randn(2, 6, 32)
    small, large = A.smallest_block(tiny_space), A.largest_block(tiny_space)
    y1 = net.forward_block(0, x, small)
    net.forward_block(0, x, large)  # running another path must not change the first one's output
    assert torch.equal(y1, net.forward_block(0, x, small))


def test_sepconv_kernels_share_centre_taps(net):
    dw = net.blocks[0].sublayers[0].depthwise
    w3, _ = dw.sliced(16, 3)
    assert w3.shape == (16, 1, 3)
    assert torch.equal(w3, dw.weight[:16, :, 1:4])


def test_padding_does_not_change_real_tokens(net, tiny_space):
    torch.manual_seed(1)
    x = torch.randn(1, 5, 32)
    padded = torch.cat([x, torch.randn(1, 3, 32)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    for seed in range(5):
        block = A.sample_block(tiny_space, __import__("random").Random(seed))
        a = net.forward_block(0, x, block, torch.ones(1, 5, dtype=torch.long))
        b = net.forward_block(0, padded, block, mask)[:, :5]
        assert torch.allclose(a, b, atol=1e-5)


def test_extracted_student_equals_supernet_path(net, tiny_space, tiny_teacher):
    emb = tiny_teacher.embeddings_spec()
    ids = torch.randint(1000, 2000, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    embedded = tiny_teacher.hidden_states(ids, mask)[0]
    for seed in range(8):
        arch = A.sample(tiny_space, emb, seed)
        student = net.extract(arch, tiny_teacher.encoder.embeddings).eval()
        assert sum(p.numel() for p in student.parameters()) == arch.params()
        ours = net.forward_chain(embedded, arch, mask)
        out = student(ids, attention_mask=mask, output_hidden_states=True)
        assert out.hidden_states[-1].shape == (2, 10, arch.blocks[-1].hidden)
        assert (ours - out.hidden_states[-1])[mask.bool()].abs().max() <= 1e-5
        # the output is the last block completed to the teacher's width by the last boundary's prediction
        assert out.last_hidden_state.shape == (2, 10, tiny_teacher.hidden_size) == (2, 10, student.config.hidden_size)
        full = net.forward_student(embedded, arch, mask)
        assert (full - out.last_hidden_state)[mask.bool()].abs().max() <= 1e-5


def test_masked_mse_ignores_padding():
    pred, target = torch.zeros(1, 4, 3), torch.zeros(1, 4, 3)
    target[0, 3] = 100.0
    assert masked_mse(pred, target, torch.tensor([[1, 1, 1, 0]])) == 0
    assert masked_mse(pred, target, None) > 0


IDS = torch.tensor([[101, 2023, 2003, 1037, 2235, 3899, 102, 0], [101, 7592, 2088, 102, 0, 0, 0, 0]])
MASK = (IDS != 0).long()


def _random_importance(teacher):
    from nas_bert.teacher import Importance

    gen = torch.Generator().manual_seed(3)
    n = teacher.num_layers
    return Importance(torch.rand(32, generator=gen), [torch.rand(4, generator=gen) for _ in range(n)],
                      [torch.rand(64, generator=gen) for _ in range(n)])


def test_teacher_layer_pairs_follow_relative_depth(tiny_space):
    from nas_bert.supernet import teacher_layer

    three = tiny_space.model_copy(update={"blocks": 3})  # 3 blocks of 4 positions
    assert [teacher_layer(three, 6, b, j) for b in range(3) for j in range(4)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # twice as many teacher layers as pairs: every other layer, as DistilBERT takes them
    assert [teacher_layer(three, 12, 1, j) for j in range(4)] == [4, 4, 6, 6]
    assert [teacher_layer(three, 3, 2, j) for j in range(4)] == [2, 2, 2, 2]


@pytest.mark.parametrize("ranked", [False, True])
def test_inherited_supernet_is_the_teacher_at_full_width(tiny_space, tiny_teacher, ranked):
    from nas_bert.supernet import inherit_teacher

    torch.manual_seed(0)
    net = Supernet(tiny_space, teacher_width=32, eps=float(tiny_teacher.config.layer_norm_eps)).eval()
    inherit_teacher(net, tiny_teacher, _random_importance(tiny_teacher) if ranked else None)
    states = tiny_teacher.hidden_states(IDS, MASK)
    real = MASK.bool()
    pair = (A.Op("mha", heads=4), A.Op("ffn", inner=64))
    full = A.Block(32, pair * 2)
    with torch.no_grad():
        for b in range(tiny_space.blocks):  # block b is teacher layers 2b and 2b + 1 exactly
            out = net.forward_block(b, states[2 * b], full, MASK)
            assert (out - states[2 * b + 2])[real].abs().max() <= 1e-5
        arch = A.Architecture.build(tiny_teacher.embeddings_spec(), (full, full))
        student = net.extract(arch, tiny_teacher.encoder.embeddings).eval()
        out = student(IDS, attention_mask=MASK).last_hidden_state
    assert (out - states[-1])[real].abs().max() <= 1e-5  # the extracted student is the teacher


def test_inheritance_ranks_units_so_narrow_slices_keep_the_best(tiny_space, tiny_teacher):
    from nas_bert.supernet import inherit_teacher

    imp = _random_importance(tiny_teacher)
    torch.manual_seed(0)
    net = Supernet(tiny_space, teacher_width=32)
    inherit_teacher(net, tiny_teacher, imp)
    best = torch.argsort(imp.hidden, descending=True)
    sb = net.blocks[1]
    assert torch.equal(net.order, best)  # supernet dimension k is the teacher's k-th most important: width 16 = the best 16
    x = torch.randn(1, 3, 32)
    assert torch.equal(net.to_net(x)[..., :16], x[..., best[:16]])
    t = tiny_teacher.encoder.encoder.layer[3]  # block 1, positions 2-3 <- teacher layer 3
    head = int(imp.heads[3].argmax())
    assert torch.equal(sb.sublayers[2].query.weight[:8], t.attention.self.query.weight[head * 8:(head + 1) * 8][:, best])
    neuron = int(imp.neurons[3].argmax())
    assert torch.equal(sb.sublayers[3].intermediate.weight[0], t.intermediate.dense.weight[neuron][best])
    assert torch.equal(sb.sublayers[3].ln_ffn.weight, t.output.LayerNorm.weight[best])
    torch.manual_seed(0)
    fresh = Supernet(tiny_space, teacher_width=32)
    ours, theirs = net.blocks[0].sublayers[0], fresh.blocks[0].sublayers[0]
    for name in ("depthwise", "pointwise"):  # no teacher counterpart: their random start is kept
        assert torch.equal(getattr(ours, name).weight, getattr(theirs, name).weight)
    assert not torch.equal(ours.query.weight, theirs.query.weight)
