"""The hand-designed students as points of a space made from the teacher (`layer_slots`).

Each is a recipe a user gets for free, written as an `Architecture` of the space, so the search starts
from them, the finalists are judged beside them, and (the supernet's weights being the teacher's,
importance-ordered) a point equal to one of them has exactly its weights:

- `truncated-k`: the teacher's first k layers (DistilBERT's initialisation, the untouched cut);
- `spread-k`: k evenly spread layers, the first and the last kept (sentence-transformers' layer reduction);
- `pruned-k-iN`: the first k layers with each feed-forward pruned to its N most important neurons;
- `spread-k-iN`: k evenly spread layers with each feed-forward pruned to N (family `spread-pruned`: layer
  reduction and neuron pruning together, so more attention layers fit a budget with the last layer kept);
- `uniform-W`: every layer at width W, heads and neurons in proportion (ETD's extraction);
- `minitron-k-W`: width and depth pruned together (Minitron): the first k layers at width W.
"""

from __future__ import annotations

from collections.abc import Callable

from nas_bert.errors import NasBertError
from nas_bert.space.architecture import IDENTITY, Architecture, Block, Embeddings, Op, keep_widths, mha_op
from nas_bert.space.search_space import SearchSpace

FAMILIES = ("truncated", "spread", "pruned", "spread-pruned", "uniform", "minitron")


def spread_layers(n: int, k: int) -> list[int]:
    """k of n layers, evenly spread, the first and the last among them (k = 1: the first)."""
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def layers_point(space: SearchSpace, emb: Embeddings, layers: list[int], width: int | None = None,
                 heads: int | None = None, inner: int | None = None,
                 sizes: dict[int, tuple[int | None, int | None]] | None = None) -> Architecture | None:
    """The teacher's `layers` kept at `width` (default: full), `heads` heads and `inner` neurons (default: in
    proportion to the width), the others dropped; `sizes` gives a layer its own (heads, neurons), 0 dropping that
    sublayer and None keeping the point's. None where the space lacks one of those sizes."""
    if not space.layer_slots or not {"mha", "ffn"} <= set(space.operators):
        return None
    width = width or space.max_hidden
    heads = heads or width // space.head_size
    inner = inner or space.max_inner * width // space.max_hidden
    blocks, prev = [], emb.width
    for b in range(space.blocks):
        if b not in layers:  # a dropped layer passes its input on
            blocks.append(Block(prev, (IDENTITY, IDENTITY)))
            continue
        h, n = (sizes or {}).get(b, (None, None))
        h, n = heads if h is None else h, inner if n is None else n
        if (h and h not in space.head_counts) or (n and n not in space.ffn_sizes) or not (h or n):
            return None
        blocks.append(Block(width, (mha_op(h, space.head_size, width) if h else IDENTITY,
                                    Op("ffn", inner=n) if n else IDENTITY)))
        prev = width
    if width not in space.hidden_sizes:
        return None
    return Architecture.build(emb, tuple(blocks)).validate(space)


def families(space: SearchSpace, emb: Embeddings) -> dict[str, tuple[str, Architecture]]:
    """Every hand-designed student of the space: name -> (family, architecture); empty for a space not made
    from the teacher. The teacher itself (every layer, all of it) is a point too, but no family's member."""
    if not space.layer_slots:
        return {}
    n, H = space.blocks, space.max_hidden
    out: dict[str, tuple[str, Architecture | None]] = {}
    for k in range(1, n):
        out[f"truncated-{k}"] = ("truncated", layers_point(space, emb, list(range(k))))
    for k in range(2, n):
        if (layers := spread_layers(n, k)) != list(range(k)):
            out[f"spread-{k}"] = ("spread", layers_point(space, emb, layers))
            for inner in space.ffn_sizes[:-1]:
                out[f"spread-{k}-i{inner}"] = ("spread-pruned", layers_point(space, emb, layers, inner=inner))
    for k in range(1, n + 1):
        for inner in space.ffn_sizes[:-1]:
            out[f"pruned-{k}-i{inner}"] = ("pruned", layers_point(space, emb, list(range(k)), inner=inner))
    for w in (w for w in space.hidden_sizes if w < H):
        out[f"uniform-{w}"] = ("uniform", layers_point(space, emb, list(range(n)), w))
        for k in range(1, n):
            out[f"minitron-{k}-{w}"] = ("minitron", layers_point(space, emb, list(range(k)), w))
    return {name: (fam, arch) for name, (fam, arch) in out.items() if arch is not None}


def teacher_point(space: SearchSpace, emb: Embeddings) -> Architecture | None:
    """The teacher itself as a point of the space (every layer, every head and neuron, full width)."""
    return layers_point(space, emb, list(range(space.blocks)))


def grown(space: SearchSpace, arch: Architecture, fits: Callable[[Architecture], float | None]) -> dict[int, Architecture]:
    """The search's first move from a hand-designed point: the latency the recipe leaves under the budget spent
    on one layer more. Per layer the point drops, that layer kept at the point's width with the most of its
    heads and neurons that still fit (`fits(arch)`: the predicted ms, None when over the budget), or left out
    where none does: layer -> the grown point."""
    kept = [b for b in arch.blocks if b.depth]
    if not space.layer_slots or not kept or not {"mha", "ffn"} <= set(space.operators):
        return {}
    width = kept[0].hidden
    sizes = [(h, n) for h in (*space.head_counts, 0) for n in (*space.ffn_sizes, 0) if h or n]
    out: dict[int, Architecture] = {}
    for b, block in enumerate(arch.blocks):
        if block.depth:
            continue
        best: tuple[float, Architecture] | None = None
        for h, n in sizes:
            ops = (mha_op(h, space.head_size, width) if h else IDENTITY, Op("ffn", inner=n) if n else IDENTITY)
            blocks = [*arch.blocks[:b], Block(width, ops), *arch.blocks[b + 1:]]
            point = Architecture.build(arch.embeddings, tuple(keep_widths(blocks, arch.embeddings.width, space)))
            ms = fits(point)
            if ms is not None and (best is None or ms > best[0]):
                best = (ms, point)
        if best is not None:
            out[b] = best[1].validate(space)
    return out


def neighbours(space: SearchSpace, arch: Architecture, fits: Callable[[Architecture], float | None]
               ) -> dict[str, Architecture]:
    """Every point one step from `arch` that fits (`fits(point)`: the predicted ms, None when over the budget):
    per kept layer its heads or its neurons one size up or down (down from the smallest: that sublayer dropped)
    or the whole layer dropped; per dropped layer the layer kept with the most that fits (`grown`); the width
    one size up or down, every kept layer's heads and neurons as they are where the width holds them.
    name ("L3.heads8", "L3.neurons512", "L3.drop", "+layer3", "width320") -> point."""
    if not space.layer_slots or not {"mha", "ffn"} <= set(space.operators):
        return {}
    kept = [b for b, blk in enumerate(arch.blocks) if blk.depth]
    if not kept:
        return {}
    heads_steps, neuron_steps = (0, *space.head_counts), (0, *space.ffn_sizes)
    hs = space.head_size

    def layer(b: int) -> tuple[int, int]:
        att, ffn = arch.blocks[b].ops[:2]
        return (att.heads if att.kind == "mha" else 0), (ffn.inner if ffn.kind == "ffn" else 0)

    def point(changes: dict[int, tuple[int, int]], width: int | None = None) -> Architecture | None:
        blocks = []
        for b, blk in enumerate(arch.blocks):
            h, n = changes.get(b, layer(b) if blk.depth else (0, 0))
            w = width or blk.hidden
            ops = (mha_op(h, hs, w) if h else IDENTITY, Op("ffn", inner=n) if n else IDENTITY)
            blocks.append(Block(w, ops))
        try:
            return Architecture.build(arch.embeddings, tuple(keep_widths(blocks, arch.embeddings.width, space))
                                      ).validate(space)
        except NasBertError:  # e.g. more heads than the width holds
            return None

    out: dict[str, Architecture | None] = {}
    for b in kept:
        h, n = layer(b)
        for d in (-1, 1):
            i, j = heads_steps.index(h) + d, neuron_steps.index(n) + d
            if 0 <= i < len(heads_steps) and (heads_steps[i] or n):
                out[f"L{b}.heads{heads_steps[i]}"] = point({b: (heads_steps[i], n)})
            if 0 <= j < len(neuron_steps) and (neuron_steps[j] or h):
                out[f"L{b}.neurons{neuron_steps[j]}"] = point({b: (h, neuron_steps[j])})
        if len(kept) > 1:
            out[f"L{b}.drop"] = point({b: (0, 0)})
    widths = sorted({arch.blocks[b].hidden for b in kept})
    if len(widths) == 1 and widths[0] in space.hidden_sizes:
        k = space.hidden_sizes.index(widths[0])
        for w in space.hidden_sizes[max(0, k - 1): k + 2]:
            if w != widths[0]:
                out[f"width{w}"] = point({}, w)
    out |= {f"+layer{b}": a for b, a in grown(space, arch, fits).items()}
    here = arch.hash()
    return {name: a for name, a in out.items() if a is not None and a.hash() != here and fits(a) is not None}
