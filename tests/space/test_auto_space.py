"""The space made from the teacher: every hand-designed student is a point, the teacher is a point, and a
point's weights are a copy of the teacher's most important units (exactly a hand-designed student's)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from nas_bert.errors import NasBertError
from nas_bert.space import (
    Architecture,
    Block,
    Embeddings,
    Op,
    TeacherShape,
    families,
    load_space,
    mha_op,
    sample,
    spread_layers,
    teacher_point,
)


def auto_for(shape: TeacherShape):
    return load_space("auto", teacher=lambda: shape)


BERT_BASE = TeacherShape(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072)
EMB = Embeddings(vocab_size=100, max_positions=64, type_vocab_size=2, width=768)


def test_auto_space_of_a_12_layer_teacher_holds_its_layers_and_every_family() -> None:
    space = auto_for(BERT_BASE)
    assert space.blocks == 12 and space.head_size == 64 and space.max_hidden == 768
    assert space.hidden_sizes == (128, 256, 384, 512, 640, 768)
    assert space.head_counts == (2, 4, 6, 8, 10, 12) and space.ffn_sizes[-1] == 3072
    teacher = teacher_point(space, EMB)
    assert teacher is not None and teacher.depth == 24 and teacher.params() > 85_000_000 - 30_000_000
    fam = families(space, EMB)
    kinds = {kind for kind, _ in fam.values()}
    assert kinds == {"truncated", "spread", "pruned", "spread-pruned", "uniform", "minitron"}
    for (_, arch) in fam.values():
        arch.validate(space)  # every one is a point of the space
    # sentence-transformers' layer reduction: 4 of 12 evenly spread layers
    kept = [b for b, blk in enumerate(fam["spread-4"][1].blocks) if blk.depth]
    assert kept == spread_layers(12, 4) == [0, 4, 7, 11]
    # and with its feed-forwards pruned: the same layers, every head, N neurons each
    inner = space.ffn_sizes[0]
    lean = fam[f"spread-4-i{inner}"]
    assert lean[0] == "spread-pruned"
    assert [b for b, blk in enumerate(lean[1].blocks) if blk.depth] == kept
    assert {(blk.ops[0].heads, blk.ops[1].inner) for blk in lean[1].blocks if blk.depth} == {(12, inner)}
    uni = fam["uniform-384"][1]
    assert {b.hidden for b in uni.blocks} == {384} and uni.blocks[0].ops[0].heads == 6
    assert uni.blocks[0].ops[1].inner == 1536


def test_a_layer_set_gives_each_kept_layer_its_own_heads_and_neurons() -> None:
    from nas_bert.space import layers_point

    space = auto_for(BERT_BASE)
    kept, lean, leaner = [0, 4, 7, 11], space.ffn_sizes[1], space.ffn_sizes[0]
    # without sizes of its own, the point of the family with those layers
    assert layers_point(space, EMB, kept, inner=lean).hash() == families(space, EMB)[f"spread-4-i{lean}"][1].hash()
    # layer 4 with 6 heads and fewer neurons, layer 7 without attention, layer 11 without its feed-forward
    a = layers_point(space, EMB, kept, inner=lean, sizes={4: (6, leaner), 7: (0, None), 11: (None, 0)})
    got = {b: (blk.ops[0].kind, blk.ops[0].heads, blk.ops[1].kind, blk.ops[1].inner)
           for b, blk in enumerate(a.blocks) if blk.depth}
    assert got == {0: ("mha", 12, "ffn", lean), 4: ("mha", 6, "ffn", leaner), 7: ("identity", 0, "ffn", lean),
                   11: ("mha", 12, "identity", 0)}
    a.validate(space)  # a point of the space
    assert all(blk.depth == 0 for b, blk in enumerate(a.blocks) if b not in kept)
    # a size the space lacks, or a layer left with nothing, is no point
    assert layers_point(space, EMB, kept, sizes={4: (5, None)}) is None
    assert layers_point(space, EMB, kept, sizes={4: (None, 1000)}) is None
    assert layers_point(space, EMB, kept, sizes={4: (0, 0)}) is None


def test_auto_space_of_the_tiny_teacher(tiny_teacher) -> None:
    shape = TeacherShape.of(tiny_teacher.config)
    space = auto_for(shape)
    emb = tiny_teacher.embeddings_spec()
    assert space.blocks == tiny_teacher.num_layers
    assert teacher_point(space, emb) is not None
    assert {k for k, _ in families(space, emb).values()} >= {"truncated", "pruned", "uniform", "minitron"}
    rng = random.Random(0)
    for _ in range(50):
        sample(space, emb, rng).validate(space)


def test_auto_space_rejects_what_it_cannot_hold() -> None:
    space = auto_for(BERT_BASE)
    emb = EMB
    full = teacher_point(space, emb)
    wrong_heads = Block(768, (Op("mha", heads=3), Op("ffn", inner=3072)))
    with pytest.raises(NasBertError, match="not allowed"):
        Architecture.build(emb, (wrong_heads, *full.blocks[1:])).validate(space)
    swapped = Block(768, (Op("ffn", inner=3072), Op("mha", heads=12)))  # slot 0 is the attention's
    with pytest.raises(NasBertError, match="not allowed"):
        Architecture.build(emb, (swapped, *full.blocks[1:])).validate(space)
    narrowed_gap = Block(128, (Op("identity"), Op("identity")))  # a dropped layer may not narrow the state
    with pytest.raises(NasBertError, match="keeps the width"):
        Architecture.build(emb, (narrowed_gap, *full.blocks[1:])).validate(space)
    with pytest.raises(NasBertError, match="block per layer"):
        space.check_teacher(6, 768)


def test_yaml_spaces_keep_their_fingerprint() -> None:
    """The new fields stay out of an old space's fingerprint: no study trained on it redoes its supernet."""
    space = load_space("nas_bert")
    assert space.fingerprint() == load_space("nas_bert").fingerprint()
    dump = space.model_dump(mode="json")
    for key in ("layer_slots", "head_counts", "ffn_sizes", "shared_width"):
        dump.pop(key)
    from nas_bert.store import json_hash

    assert space.fingerprint() == json_hash(dump, compact=True)


def test_attention_of_its_own_width_in_the_student() -> None:
    """An attention that keeps 2 heads of 8 in a block of width 32: 16 query dimensions, counted exactly."""
    from nas_bert.model import NasBertConfig, NasBertModel

    emb = Embeddings(vocab_size=50, max_positions=16, type_vocab_size=2, width=32)
    arch = Architecture.build(emb, (Block(32, (Op("mha", heads=2, inner=16), Op("ffn", inner=24))),))
    model = NasBertModel(NasBertConfig(architecture=arch.to_dict()))
    assert model.blocks[0].layers[0].query.weight.shape == (16, 32)
    assert sum(p.numel() for p in model.parameters()) == arch.params()
    out = model(torch.randint(0, 50, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long))
    assert out.last_hidden_state.shape == (2, 7, 32)
    # the canonical form: an attention as wide as its block names no width
    assert Block(16, (Op("mha", heads=2, inner=16),)).ops[0] == Op("mha", heads=2)


def test_teacher_shape_reads_a_config() -> None:
    cfg = SimpleNamespace(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    shape = TeacherShape.of(cfg)
    assert shape.head_size == 32
    space = auto_for(shape)
    assert space.hidden_sizes == (64, 128, 192, 256, 320, 384)
    assert space.ffn_sizes == (256, 512, 768, 1024, 1280, 1536)


def test_a_shared_width_space_samples_and_suggests_one_width_and_refuses_two() -> None:
    import optuna

    from nas_bert.search.trial_space import suggest_architecture, trial_params

    space = auto_for(BERT_BASE)
    assert space.shared_width
    rng = random.Random(3)
    for _ in range(30):
        arch = sample(space, EMB, rng).validate(space)
        assert len({b.hidden for b in arch.blocks if b.depth}) <= 1
        back = suggest_architecture(optuna.trial.FixedTrial(trial_params(arch, space)), space, EMB)
        assert back.hash() == arch.hash()
    two = Architecture.build(EMB, (Block(768, (Op("mha", heads=12), Op("ffn", inner=3072))),
                                   Block(512, (Op("mha", heads=8), Op("ffn", inner=2048))),
                                   *(Block(512, (Op("identity"), Op("identity"))),) * 10))
    with pytest.raises(NasBertError, match="one width"):
        two.validate(space)
    per_layer = load_space("auto", teacher=lambda: BERT_BASE).model_copy(update={"shared_width": False})
    two.validate(per_layer)
    assert per_layer.fingerprint() != space.fingerprint()


def test_a_grown_point_spends_the_budget_a_recipe_leaves_on_one_layer_more() -> None:
    from nas_bert.space import grown

    space = auto_for(BERT_BASE)
    points = families(space, EMB)
    start = points["spread-2"][1]
    budget = start.params() + 2_500_000  # room for part of a layer (a full one is about 7M parameters)

    def fits(a: Architecture) -> float | None:
        return a.params() if a.params() <= budget else None

    out = grown(space, start, fits)
    assert set(out) == {b for b, blk in enumerate(start.blocks) if not blk.depth}  # every dropped layer
    recipes = {a.hash() for _, a in points.values()}
    for layer, arch in out.items():
        arch.validate(space)
        assert arch.blocks[layer].depth and arch.hash() not in recipes
        assert [i for i, b in enumerate(arch.blocks) if b.depth] == sorted([0, 11, layer])
        assert start.params() < arch.params() <= budget
        # the most of the layer that fits: one step more of its heads or of its neurons would not
        att, ffn = arch.blocks[layer].ops
        heads, inner = (att.heads if att.kind == "mha" else 0), (ffn.inner if ffn.kind == "ffn" else 0)
        for h, n in [(next((k for k in space.head_counts if k > heads), None), inner),
                     (heads, next((k for k in space.ffn_sizes if k > inner), None))]:
            if h is not None and n is not None:
                ops = (mha_op(h, 64, 768) if h else Op("identity"), Op("ffn", inner=n) if n else Op("identity"))
                more = Architecture.build(EMB, tuple(Block(768, ops) if i == layer else b for i, b in enumerate(arch.blocks)))
                assert fits(more) is None
    assert grown(space, start, lambda a: None) == {}
    assert grown(space, points["truncated-11"][1], fits) == {}  # nothing fits beyond it


def test_grown_seeds_keep_the_latency_model_error_under_the_budget() -> None:
    """A grown point is the largest that fits, so it would sit at the budget's edge and flip over it when timed:
    the search grows recipes to the budget less the latency model's leave-one-out error."""
    from nas_bert.latency.calibration import Calibration
    from nas_bert.search.loop import family_seeds, grow_limit

    space = auto_for(BERT_BASE)

    class Cost:  # parameters as milliseconds, with a calibration whose leave-one-out error is `mape` %
        def __init__(self, mape: float) -> None:
            self.calibration = Calibration(loo_mape=mape)

        def predict(self, a: Architecture) -> float:
            return a.params() / 1e6

    budget = families(space, EMB)["spread-2"][1].params() / 1e6 + 4.0
    seeds = {}
    for mape in (float("nan"), 10.0):  # unknown (too few students timed), 10%
        ctx = SimpleNamespace(study=SimpleNamespace(space=space), teacher=SimpleNamespace(embeddings_spec=lambda: EMB),
                              latency=Cost(mape))
        seeds[str(mape)] = {n: a for n, a in family_seeds(ctx, budget).items() if "+layer" in n}
        grown_here = seeds[str(mape)]
        assert grown_here and all(a.params() / 1e6 <= grow_limit(ctx.latency, budget) for a in grown_here.values())
    assert grow_limit(Cost(float("nan")), budget) == budget and grow_limit(Cost(10.0), budget) == 0.9 * budget
    # without an error estimate the grown points reach past the 10% margin; with it none does
    assert any(a.params() / 1e6 > 0.9 * budget for a in seeds["nan"].values())


def test_grown_seeds_grow_each_size_of_a_family_not_only_its_slowest_member() -> None:
    """Of each family, per size its members' layers share, the slowest member with room grows by a layer: a
    lighter cut (fewer neurons) grown keeps a layer more than the slowest cut grown."""
    from nas_bert.latency.calibration import Calibration
    from nas_bert.search.loop import family_seeds

    space = auto_for(BERT_BASE)
    points = families(space, EMB)

    class Cost:  # parameters as milliseconds
        calibration = Calibration(loo_mape=float("nan"))

        def predict(self, a: Architecture) -> float:
            return a.params() / 1e6

    budget = points["spread-3"][1].params() / 1e6 + 1.0  # spread-3 whole fits, with no room for a layer more
    ctx = SimpleNamespace(study=SimpleNamespace(space=space), teacher=SimpleNamespace(embeddings_spec=lambda: EMB),
                          latency=Cost())
    seeds = family_seeds(ctx, budget)
    grown_from = {n.split("+")[0] for n in seeds if "+layer" in n}
    # the spread-pruned family grows its slowest member with room at more than one feed-forward size
    sizes = {n.split("-i")[1] for n in grown_from if n.startswith("spread-") and "-i" in n}
    assert len(sizes) >= 2, sorted(grown_from)
    # and no two members of one family and size: each grown member is the slowest of its size that has room
    for n in grown_from:
        kind, arch = points[n]
        size = {(b.hidden, b.ops) for b in arch.blocks if b.depth}
        slower = [m for m, (k, a) in points.items() if k == kind and m != n
                  and {(b.hidden, b.ops) for b in a.blocks if b.depth} == size
                  and arch.params() < a.params() <= budget * 1e6]
        assert all(f"{m}+layer" not in " ".join(seeds) for m in slower)
    for arch in seeds.values():
        arch.validate(space)
        assert arch.params() / 1e6 <= budget


def test_neighbours_are_one_step_away_and_fit() -> None:
    from nas_bert.space import neighbours

    space = auto_for(BERT_BASE)
    start = families(space, EMB)["spread-2"][1]  # layers 0 and 11 at full width
    budget = start.params() + 8_000_000

    def fits(a: Architecture) -> float | None:
        return a.params() if a.params() <= budget else None

    out = neighbours(space, start, fits)
    assert start.hash() not in {a.hash() for a in out.values()} and all(fits(a) for a in out.values())
    kinds = {name.split(".")[-1].rstrip("0123456789") if "." in name else name.rstrip("0123456789") for name in out}
    assert {"heads", "neurons", "drop", "width", "+layer"} <= kinds, sorted(out)
    a = out["L0.heads10"]  # one step down from the teacher's 12 heads, nothing else changed
    assert a.blocks[0].ops[0].heads == 10 and a.blocks[11] == start.blocks[11]
    assert [b.hidden for b in out["width640"].blocks if b.depth] == [640, 640]
    assert out["L11.drop"].blocks[11].depth == 0 and out["L11.drop"].blocks[0] == start.blocks[0]
    assert all(a.validate(space) for a in out.values())
    assert neighbours(space, start, lambda a: None) == {}


def test_local_search_climbs_from_the_best_feasible_point() -> None:
    """Once the queue is empty, the best feasible trial's neighbours are queued; the climb stops where no step
    improves it (here the proxy is better with more parameters, so it climbs to the budget)."""
    import optuna

    from nas_bert.latency.calibration import Calibration
    from nas_bert.search.loop import local_search
    from nas_bert.search.trial_space import suggest_architecture, trial_params

    space = auto_for(TeacherShape(num_layers=4, hidden_size=64, num_heads=4, intermediate_size=256))
    emb = Embeddings(vocab_size=100, max_positions=64, type_vocab_size=2, width=64)
    start = families(space, emb)["truncated-1"][1]
    budget = 2.5 * start.params() / 1e3

    class Cost:
        calibration = Calibration()

        def predict(self, a: Architecture) -> float:
            return a.params() / 1e3

    ctx = SimpleNamespace(study=SimpleNamespace(space=space), teacher=SimpleNamespace(embeddings_spec=lambda: emb),
                          latency=Cost())

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        arch = suggest_architecture(trial, space, emb)
        trial.set_user_attr("arch_hash", arch.hash())
        ms = Cost().predict(arch)
        trial.set_constraint("latency", ms - budget)
        return 1e3 / arch.params(), ms

    st = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    st.enqueue_trial(trial_params(start, space))
    st.optimize(objective, n_trials=1, callbacks=[local_search(ctx, budget)])
    queued = st.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert queued and all("of #0" in t.user_attrs["move"] for t in queued)  # the seed's neighbours, named
    st.optimize(objective, n_trials=150, callbacks=[local_search(ctx, budget)])
    moved = [t for t in st.trials if "move" in t.user_attrs and t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in moved if t.values[1] <= budget]
    assert len(moved) > len(queued) and feasible == moved  # climbed past the first step, never over the budget
    best = min(feasible, key=lambda t: t.values[0])
    assert best.values[1] > 2 * start.params() / 1e3  # it spent most of the budget the seed left


def test_a_top_searched_student_has_itself_one_step_smaller_in_reserve() -> None:
    """A searched student grown to the budget's edge may be measured over it, and so may the reserves of the same
    edge: each of the top is timed beside its nearest smaller point (a neighbour predicted at least the latency
    model's error below it), which takes its place if it is dropped."""
    from nas_bert.choose import Candidate, replace_over_budget
    from nas_bert.choose.candidates import shrunk_reserves
    from nas_bert.latency.calibration import Calibration
    from nas_bert.space import grown as grow
    from nas_bert.space import neighbours

    space = auto_for(BERT_BASE)

    class Cost:  # parameters as milliseconds; leave-one-out error 5%
        calibration = Calibration(loo_mape=5.0)

        def predict(self, a: Architecture) -> float:
            return a.params() / 1e6

    points = families(space, EMB)
    grown = grow(space, points["truncated-5"][1], lambda a: a.params() / 1e6 if a.params() / 1e6 <= 70 else None)[7]
    top = Candidate("truncated-5+layer7", "search", grown, 9, {"approx_rank": 0})
    second = Candidate("trial-3", "search", points["spread-4"][1], 3, {"approx_rank": 1})
    low = Candidate("trial-8", "search", points["truncated-2"][1], 8, {"approx_rank": 2})
    lat = Cost()
    (shrunk,) = shrunk_reserves([top, low], space, lat, top=2)  # only the top 2 by approximate loss
    assert shrunk.name.startswith("truncated-5+layer7.") and shrunk.proxies["shrunk_of"] == top.name
    assert shrunk.proxies["reserve"] and shrunk.arch.hash() in {a.hash() for a in neighbours(
        space, grown, lambda a: lat.predict(a)).values()}
    assert lat.predict(shrunk.arch) <= 0.95 * lat.predict(grown)
    # the slowest such neighbour: no other one step away fits between it and the cut
    others = neighbours(space, grown, lambda a: lat.predict(a) if lat.predict(a) <= 0.95 * lat.predict(grown) else None)
    assert lat.predict(shrunk.arch) == max(lat.predict(a) for a in others.values())
    assert shrunk_reserves([top], space, lat, top=2, taken={shrunk.arch.hash()})[0].arch != shrunk.arch

    # measured over the budget, the top student gives way to itself one step smaller, before any other reserve
    reserve = Candidate("trial-5", "search", points["spread-3"][1], 5, {"approx_rank": 2, "reserve": True})
    judged = {top.name: 10.5, second.name: 9.0, shrunk.name: 9.8, reserve.name: 8.0}
    out = replace_over_budget([top, second, reserve, shrunk], judged, 10.0, top=2)
    assert [c.name for c in out] == [top.name, second.name, shrunk.name]
    judged[shrunk.name] = 10.2  # over too: the next reserve by approximate loss
    assert [c.name for c in replace_over_budget([top, second, reserve, shrunk], judged, 10.0, top=2)] == [
        top.name, second.name, reserve.name]
    judged[top.name] = 9.9  # the top holds: no reserve is used
    assert [c.name for c in replace_over_budget([top, second, reserve, shrunk], judged, 10.0, top=2)] == [
        top.name, second.name]


class _ParamCost:
    """A latency model of parameters as milliseconds, with a leave-one-out error of `loo` per cent."""

    def __init__(self, loo: float) -> None:
        from nas_bert.latency.calibration import Calibration

        self.calibration = Calibration(loo_mape=loo)

    def predict(self, a: Architecture) -> float:
        return a.params() / 1e6


def test_a_student_far_over_its_budget_gives_way_to_the_largest_of_its_chain_that_holds() -> None:
    """A latency model 25% off puts the top student and its first reserve over the budget: each of the top has a
    chain of reserves, each one step from the last, their steps below the student doubling (0.5, 1.5, 3.5 x the
    model's error) and each from the second on at least 1, 2 x the error below the last, and the largest of its
    own chain that the budget holds takes its place, before any reserve of another shape."""
    from nas_bert.choose import Candidate, replace_over_budget
    from nas_bert.choose.candidates import shrunk_reserves
    from nas_bert.space import neighbours

    space = auto_for(BERT_BASE)
    lat, points = _ParamCost(5.0), families(space, EMB)
    top = Candidate("trial-9", "search", points["truncated-6"][1], 9, {"approx_rank": 0})
    other = Candidate("trial-5", "search", points["spread-3"][1], 5, {"approx_rank": 2, "reserve": True})
    chain = shrunk_reserves([top], space, lat, top=1, levels=3)
    assert [c.proxies["shrink_level"] for c in chain] == [1, 2, 3]
    assert {c.proxies["shrunk_of"] for c in chain} == {top.name} and all(c.proxies["reserve"] for c in chain)
    assert chain[0].name.startswith("trial-9.") and chain[2].name.startswith(chain[1].name + ".")
    ms = [lat.predict(top.arch), *(lat.predict(c.arch) for c in chain)]
    for before, c in zip([top, *chain[:-1]], chain, strict=True):
        assert c.arch.hash() in {a.hash() for a in neighbours(space, before.arch, lat.predict).values()}
    for level, m in enumerate(ms[1:], 1):  # 2.5%, 7.5%, 17.5% below the student at the least
        assert m <= ms[0] * (1 - 0.05 * (2**level - 1) / 2)
        assert level == 1 or m <= ms[level - 1] * (1 - 0.05 * 2 ** (level - 2))  # 5%, 10% below the last
    # the first step is the smallest that clears its mark: no point one step from the student lies between
    smaller = [lat.predict(a) for a in neighbours(space, top.arch, lat.predict).values() if lat.predict(a) < ms[0]]
    assert max(m for m in smaller if m <= ms[0] * 0.975) == ms[1]
    assert len({c.arch.hash() for c in chain}) == 3
    assert shrunk_reserves([top], space, lat, top=1)[0].arch == chain[0].arch  # one level: the chain's first

    budget = ms[0]  # the model put the top student at the budget; every student measures 25% over its prediction
    judged = {c.name: 1.25 * m for c, m in zip([top, *chain], ms, strict=True)} | {other.name: 0.5 * budget}
    fits = [c for c in chain if judged[c.name] <= budget]
    assert fits and judged[chain[0].name] > budget  # one step was not enough
    out = replace_over_budget([top, other, *chain], judged, budget, top=1)
    assert [c.name for c in out] == [top.name, fits[0].name]
    for c in chain:  # none of the chain holds: a reserve of another shape
        judged[c.name] = 2 * budget
    assert [c.name for c in replace_over_budget([top, other, *chain], judged, budget, top=1)] == [top.name, other.name]


def test_a_student_a_few_per_cent_over_gives_way_to_a_point_one_small_step_below() -> None:
    """Judged 3% over its prediction, the top student is replaced by its chain's first point, one small step below
    it (one head or one neuron size fewer in a layer), not by a narrower width or a dropped layer."""
    from nas_bert.choose import Candidate, replace_over_budget
    from nas_bert.choose.candidates import shrunk_reserves

    space = auto_for(BERT_BASE)
    lat, points = _ParamCost(4.0), families(space, EMB)
    top = Candidate("trial-9", "search", points["spread-3"][1], 9, {"approx_rank": 0})
    chain = shrunk_reserves([top], space, lat, top=1, levels=3)
    first = chain[0].name.removeprefix("trial-9.")
    assert ".heads" in f".{first.split('.')[-1]}" or "neurons" in first, first  # a layer's heads or neurons
    budget = lat.predict(top.arch)
    judged = {c.name: 1.03 * lat.predict(c.arch) for c in [top, *chain]}
    assert judged[chain[0].name] <= budget < judged[top.name]
    assert [c.name for c in replace_over_budget([top, *chain], judged, budget, top=1)] == [top.name, chain[0].name]


def test_a_student_measured_well_under_its_budget_grows_into_its_chain() -> None:
    """An over-predicting latency model leaves a searched student measured well under the budget: each of the top
    is timed beside a chain of larger points, each one step from the last (0.5, 1.5 x the model's error above the
    student at the least), and the largest of its own chain that the budget holds with that error to spare takes
    its place; a student measured over, or whose chain holds nothing, keeps its place, and no grown point is a
    finalist of its own."""
    from nas_bert.choose import Candidate, replace_over_budget, replace_under_budget
    from nas_bert.choose.candidates import grown_reserves
    from nas_bert.space import neighbours

    space = auto_for(BERT_BASE)
    lat, points = _ParamCost(5.0), families(space, EMB)
    # one step up is a layer's neurons (5.5%) or a whole layer more (grown to the chain's 2^2 x 5% above the student)
    top = Candidate("trial-9", "search", points["spread-3-i1536"][1], 9, {"approx_rank": 0})
    other = Candidate("trial-5", "search", points["truncated-2"][1], 5, {"approx_rank": 1})
    chain = grown_reserves([top, other], space, lat, top=1, levels=2)  # only the top 1 by approximate loss
    assert [c.proxies["grow_level"] for c in chain] == [1, 2]
    assert {c.proxies["grown_of"] for c in chain} == {top.name} and all(c.proxies["reserve"] for c in chain)
    assert chain[1].name.startswith(chain[0].name + ".")
    ms = [lat.predict(top.arch), *(lat.predict(c.arch) for c in chain)]
    for before, c in zip([top, *chain[:-1]], chain, strict=True):
        assert c.arch.hash() in {a.hash() for a in neighbours(space, before.arch, lat.predict).values()}
    assert ms[0] * 1.025 <= ms[1] and ms[1] * 1.05 <= ms[2] <= ms[0] * 1.2  # 2.5% above, then 5% above the last
    # the first step is the smallest that clears its mark: no point one step from the student lies between
    larger = [m for a in neighbours(space, top.arch, lat.predict).values() if (m := lat.predict(a)) >= ms[0] * 1.025]
    assert min(larger) == ms[1]

    budget = 1.02 * ms[2]  # the model put the top student 2% under the largest of its chain; measured 15% faster
    judged = {c.name: 0.85 * m for c, m in zip([top, *chain], ms, strict=True)} | {other.name: 0.5 * budget}
    assert judged[chain[1].name] <= 0.95 * budget
    out = replace_over_budget(replace_under_budget([top, other, *chain], judged, budget, 0.05), judged, budget, top=1)
    assert [c.name for c in out] == [chain[1].name, other.name]
    assert out[0].proxies["grown_of"] == top.name and not out[0].proxies.get("reserve")  # it stands as the top did
    judged[chain[1].name] = 0.97 * budget  # within the budget, not with the error to spare: the first level
    assert [c.name for c in replace_under_budget([top, other, *chain], judged, budget, 0.05)] == [chain[0].name,
                                                                                                 other.name]
    judged[chain[0].name] = 0.97 * budget  # none with the error to spare: the student stays
    assert [c.name for c in replace_under_budget([top, other, *chain], judged, budget, 0.05)] == [top.name, other.name]
    judged = {**judged, top.name: 1.1 * budget, chain[0].name: 0.5 * budget}  # over: it shrinks, it does not grow
    assert [c.name for c in replace_under_budget([top, other, *chain], judged, budget, 0.05)] == [top.name, other.name]


def test_a_search_starts_from_the_best_points_the_study_scored_under_its_budget(tmp_path) -> None:
    """Points a larger budget's search scored with the same supernet seed a smaller budget's search: the best by
    the proxy that the latency model predicts within the budget, hand-designed points and points scored with
    another supernet left out."""
    from nas_bert.search.loop import carried_points
    from nas_bert.store import ArchitectureRow, Database

    space = auto_for(BERT_BASE)
    fam = families(space, EMB)
    db = Database(f"sqlite:///{tmp_path / 'study.db'}")
    rng = random.Random(0)
    points = {a.hash(): a for a in (sample(space, EMB, rng).validate(space) for _ in range(40))}
    points = {h: a for h, a in points.items() if h not in {b.hash() for _, b in fam.values()}}
    budget = sorted(a.params() for a in points.values())[len(points) // 2] / 1e6
    loss = {h: rng.random() for h in points}
    recipe = fam["truncated-1"][1]
    with db.session() as s:
        for h, a in [*points.items(), (recipe.hash(), recipe)]:
            s.add(ArchitectureRow(study="s", hash=h, arch_json=a.canonical_json(), params=a.params(), flops=0,
                                  checkpoint_sha="sha", predicted_ms=0.0, approx_loss=loss.get(h, -1.0)))
        other = sample(space, EMB, rng)  # the best loss of all, but scored with another supernet
        s.add(ArchitectureRow(study="s", hash=other.hash(), arch_json=other.canonical_json(), params=0, flops=0,
                              checkpoint_sha="old", predicted_ms=0.0, approx_loss=-2.0))
        s.add(ArchitectureRow(study="t", hash=other.hash(), arch_json=other.canonical_json(), params=0, flops=0,
                              checkpoint_sha="sha", predicted_ms=0.0, approx_loss=-2.0))  # another study's

    class Cost:
        def predict(self, a: Architecture) -> float:
            return a.params() / 1e6

    ctx = SimpleNamespace(study=SimpleNamespace(space=space, name="s"), teacher=SimpleNamespace(embeddings_spec=lambda: EMB),
                          latency=Cost(), db=db, checkpoint_sha="sha")
    fits = sorted((loss[h], h) for h, a in points.items() if a.params() / 1e6 <= budget)
    assert 3 < len(fits) < len(points)
    got = carried_points(ctx, budget, 3)
    assert [a.hash() for a in got] == [h for _, h in fits[:3]]
    assert len(carried_points(ctx, budget, 100)) == len(fits)
    assert carried_points(ctx, 0.0, 3) == []
    db.dispose()


def test_run_searches_the_largest_budget_first(tiny_study_file) -> None:
    from nas_bert.pipeline import plan
    from nas_bert.study import load_study

    study = load_study(tiny_study_file)
    study.cfg.search.budgets_ms = [2.0, 9.0, 5.0]
    searches = [key for name, key, _ in plan(study) if name == "search"]
    assert searches == ["9ms", "5ms", "2ms"]
    assert [key for name, key, _ in plan(study) if name == "export"] == ["2,9,5"]
