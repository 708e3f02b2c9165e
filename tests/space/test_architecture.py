from __future__ import annotations

import random

import pytest

from nas_bert.errors import NasBertError
from nas_bert.model import NasBertConfig, NasBertModel
from nas_bert.space import IDENTITY, Architecture, Block, Embeddings, Op, load_space
from nas_bert.space import architecture as A

EMB = Embeddings(vocab_size=100, max_positions=64, type_vocab_size=2, width=32)


def test_json_round_trip_and_stable_hash(tiny_space):
    for seed in range(20):
        arch = A.sample(tiny_space, EMB, seed)
        again = Architecture.from_json(arch.canonical_json())
        assert again == arch
        assert again.hash() == arch.hash()
        assert arch.validate(tiny_space) is arch
    # the hash is a function of content only (a known value guards against accidental changes: every
    # memoised score, trial and export is keyed on it)
    fixed = Architecture(EMB, (Block(16, (Op("mha", heads=2), IDENTITY, IDENTITY, IDENTITY)),) * 2)
    assert fixed.hash() == "5b813d2a4ffac744"
    assert Architecture(EMB, (Block(16, (Op("mha", heads=2), IDENTITY, IDENTITY, IDENTITY)),) * 2).hash() == fixed.hash()
    other_heads = Architecture(EMB, (Block(16, (Op("mha", heads=1), IDENTITY, IDENTITY, IDENTITY)),) * 2)
    assert other_heads.hash() != fixed.hash()
    # the output projection is part of the content; architectures written without one still load
    assert A.sample(tiny_space, EMB, 0).output == EMB.width
    built = Architecture.build(EMB, fixed.blocks)
    assert built.hash() != fixed.hash() and Architecture.from_json(built.canonical_json()) == built
    assert "output" not in fixed.to_dict() and Architecture.from_dict(fixed.to_dict()).output == 0
    assert built.params() == fixed.params() + 16 * 32 + 32


def test_sampling_is_seeded_and_covers_the_space(tiny_space):
    assert A.sample(tiny_space, EMB, 7) == A.sample(tiny_space, EMB, 7)
    archs = {A.sample(tiny_space, EMB, s) for s in range(200)}
    assert len(archs) > 150
    kinds = {op.kind for a in archs for b in a.blocks for op in b.ops}
    assert kinds == {"mha", "ffn", "sepconv", "identity"}
    widths = {b.hidden for a in archs for b in a.blocks}
    assert widths == set(tiny_space.hidden_sizes)


def test_sampling_is_uniform_over_block_paths(tiny_space):
    # Uniform over paths: depth d has probability proportional to (choices ** d).
    rng = random.Random(0)
    n_choices = len(A.op_choices(tiny_space, 16))
    depths = [A.sample_block(tiny_space, rng).depth for _ in range(4000)]
    weights = {d: n_choices**d for d in tiny_space.depths}
    total = sum(weights.values())
    for d, w in weights.items():
        assert abs(depths.count(d) / len(depths) - w / total) < 0.03


@pytest.mark.parametrize("space_name", ["tiny", "nas_bert"])
def test_params_equal_numel_of_extracted_student(space_name):
    space = load_space(space_name)
    emb = Embeddings(vocab_size=500, max_positions=128, type_vocab_size=2, width=space.max_hidden)
    archs = [A.sample(space, emb, s) for s in range(6)] + [A.largest(space, emb), A.smallest(space, emb)]
    for arch in archs:
        model = NasBertModel(NasBertConfig(architecture=arch.to_dict()))
        assert sum(p.numel() for p in model.parameters()) == arch.params()


def test_flops_grow_with_size(tiny_space):
    small, large = A.smallest(tiny_space, EMB), A.largest(tiny_space, EMB)
    assert 0 < small.flops() < large.flops()
    assert large.flops(seq_len=64) > large.flops(seq_len=32)
    assert small.params() < large.params()


@pytest.mark.parametrize(
    "block, message",
    [
        (Block(24, (Op("mha", heads=3), IDENTITY, IDENTITY, IDENTITY)), "hidden size 24"),
        (Block(16, (IDENTITY, Op("mha", heads=2), IDENTITY, IDENTITY)), "after identity"),
        (Block(16, (Op("mha", heads=4), IDENTITY, IDENTITY, IDENTITY)), "not allowed at width 16"),
        (Block(16, (Op("ffn", inner=32), IDENTITY, IDENTITY)), "3 sublayers"),
        (Block(16, (IDENTITY,) * 4), "depth 0"),
        (Block(16, (Op("sepconv", kernel=7), IDENTITY, IDENTITY, IDENTITY)), "not allowed"),
    ],
)
def test_validation_names_the_problem(tiny_space, block, message):
    space = tiny_space.model_copy(update={"min_depth": 1})  # a space whose blocks may not be empty
    arch = Architecture(EMB, (block, A.smallest_block(space)))
    with pytest.raises(NasBertError, match=message):
        arch.validate(space)
    if message == "depth 0":  # the shipped spaces allow an empty block: the teacher's first layers are students
        arch.validate(tiny_space)


def test_bad_operator_and_json():
    with pytest.raises(NasBertError, match="unknown operator"):
        Op("lstm")
    with pytest.raises(NasBertError, match="needs a positive 'heads'"):
        Op("mha")
    with pytest.raises(NasBertError, match="not an architecture"):
        Architecture.from_dict({"blocks": []})


def test_largest_and_smallest_are_valid_extremes(tiny_space):
    large, small = A.largest(tiny_space, EMB), A.smallest(tiny_space, EMB)
    large.validate(tiny_space)
    small.validate(tiny_space)
    params = [A.sample(tiny_space, EMB, s).params() for s in range(300)]
    # in the tiny space the teacher's pattern (attention, the widest feed-forward, full width) is also the
    # student with the most parameters, and no sample is larger or smaller than the extremes
    assert small.params() <= min(params) < max(params) <= large.params()
