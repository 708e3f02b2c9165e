"""Hand-designed students initialised from the teacher: what a NAS student must beat.

- `truncated`: the teacher's first k layers, copied exactly (DistilBERT-style initialisation);
- `uniform`: the teacher's depth at a smaller uniform width, its weights extracted from the
  teacher (ETD, Chen et al. 2021): the leading hidden dimensions, heads and feed-forward neurons,
  or the most important ones, ranked by how much each contributes to the teacher's outputs on
  corpus text;
- `pruned`: the teacher's first k layers at full width with their feed-forward pruned to its most
  important neurons (attention, width and embeddings stay the teacher's): the feed-forward is most
  of a layer's cost, its least important neurons little of its output.

Both are plain `Architecture`s (one block), so they are timed, distilled, evaluated and exported
by the same code as searched students.
"""

from __future__ import annotations

from typing import Literal

import torch

from nas_bert.errors import NasBertError
from nas_bert.model import NasBertConfig, NasBertModel
from nas_bert.space import Architecture, Block, Op
from nas_bert.supernet.elastic import copy_attention, copy_embeddings, copy_ffn, importance_order, ridge_completion
from nas_bert.teacher import Importance, Teacher, head_size, teacher_layers

Tensor = torch.Tensor
Order = Literal["leading", "importance"]


def truncated_architecture(teacher: Teacher, layers: int) -> Architecture:
    """The teacher's first `layers` layers at full width: one block of (attention, feed-forward) pairs."""
    n = teacher.num_layers
    if not 1 <= layers <= n:
        raise NasBertError(f"truncated teacher: layers must lie in 1..{n}, got {layers}")
    return uniform_architecture(teacher, teacher.hidden_size, layers)


def uniform_architecture(teacher: Teacher, width: int, layers: int | None = None, inner: int | None = None) -> Architecture:
    """`layers` BERT layers (default: the teacher's depth) at one width, the teacher's head size and
    feed-forward ratio (heads = width / head size), or `inner` feed-forward neurons."""
    layers = layers or teacher.num_layers
    hs, H = head_size(teacher), teacher.hidden_size
    if width % hs or not hs <= width <= H:
        raise NasBertError(f"uniform width {width}: must be a multiple of the teacher's head size {hs} in {hs}..{H}")
    full = int(teacher.config.intermediate_size) * width // H
    if inner is not None and not 1 <= inner <= full:
        raise NasBertError(f"feed-forward of {inner} neurons: must lie in 1..{full} at width {width}")
    inner = inner or full
    pair = (Op("mha", heads=width // hs), Op("ffn", inner=inner))
    return Architecture.build(teacher.embeddings_spec(), (Block(width, pair * layers),))


def pruned_architecture(teacher: Teacher, layers: int, inner: int) -> Architecture:
    """The teacher's first `layers` layers at full width, each feed-forward pruned to `inner` neurons."""
    if not 1 <= layers <= teacher.num_layers:
        raise NasBertError(f"pruned teacher: layers must lie in 1..{teacher.num_layers}, got {layers}")
    return uniform_architecture(teacher, teacher.hidden_size, layers, inner)


def teacher_initialised(arch: Architecture, teacher: Teacher, importance: Importance | None = None,
                        batches: list[dict[str, Tensor]] | None = None) -> NasBertModel:
    """A uniform one-block student with weights extracted from the teacher's first layers.

    Student layer i takes teacher layer i. Hidden dimensions, heads and neurons are ordered by
    `importance` (or kept in order) and the leading ones kept; at full width nothing is dropped and
    the copy is exact (the teacher's own order). A narrower student's output map puts its dimensions
    back and predicts the dropped ones by a ridge regression on the teacher's states over `batches`
    (zeros without them): the same start as a searched student's output.
    """
    if len(arch.blocks) != 1:
        raise NasBertError("teacher-initialised students have one block; build them with uniform_architecture")
    layers = teacher_layers(teacher)
    block = arch.blocks[0]
    ops = [op for op in block.ops if op.kind != "identity"]
    pairs = list(zip(ops[::2], ops[1::2], strict=True))
    if len(ops) % 2 or any((a.kind, b.kind) != ("mha", "ffn") for a, b in pairs) or len(pairs) > len(layers):
        raise NasBertError("teacher-initialised students are (attention, feed-forward) pairs, at most the teacher's depth")
    H, hs, w = teacher.hidden_size, head_size(teacher), block.hidden
    order = importance_order(importance.hidden if importance is not None and w < H else None, H)
    emb = teacher.family.embeddings_of(teacher.encoder)
    relative = teacher.family.relative_attention(teacher.encoder)
    student = NasBertModel(NasBertConfig(architecture=arch.to_dict(), layer_norm_eps=float(teacher.config.layer_norm_eps),
                                         dim_order=order.tolist() if w < H else None,
                                         relative_attention=relative.spec() if relative else None, **emb.student_settings()))
    copy_embeddings(emb, student, order if w < H else None)
    with torch.no_grad():
        if relative is not None:  # MPNet's shared relative position bias; each layer takes its heads' columns
            student.relative_attention_bias.weight.copy_(relative.table.weight)
        sb = student.blocks[0]
        dims = order[:w]
        for i, (mha, ffn) in enumerate(pairs):
            t = layers[i]
            a, f = sb.layers[2 * i], sb.layers[2 * i + 1]
            heads = importance_order(importance.heads[i] if importance else None, H // hs)[: mha.heads]
            rows = (heads[:, None] * hs + torch.arange(hs)).reshape(-1)  # the kept heads' dimensions
            copy_attention((a.query, a.key, a.value, a.output), a.LayerNorm, t, rows, dims)
            if a.relative_heads is not None:
                a.relative_heads.copy_(heads)
            inner = importance_order(importance.neurons[i] if importance else None, t.ffn_in.out_features)[: ffn.inner]
            copy_ffn((f.intermediate.weight, f.intermediate.bias, f.output.weight, f.output.bias), f.LayerNorm, t,
                     inner, dims)
        if student.output_projection is not None:  # kept dimensions back in their places, the rest predicted
            rest_w, rest_b = torch.zeros(H - w, w), torch.zeros(H - w)
            if batches:
                states = [(teacher.hidden_states(b["input_ids"], b["attention_mask"])[len(pairs)], b["attention_mask"])
                          for b in batches]
                x = torch.cat([s.index_select(-1, order.to(s.device))[m.bool()] for s, m in states]).cpu()
                rest_w, rest_b = ridge_completion(x, w)
            inv = torch.argsort(order)
            student.output_projection.weight.copy_(torch.cat([torch.eye(w), rest_w])[inv])
            student.output_projection.bias.copy_(torch.cat([torch.zeros(w), rest_b])[inv])
    return student


def describe(kind: str, arch: Architecture, order: str | None = None) -> str:
    """One line for tables: "teacher's first 3 layers", "6 x 192 wide (6 heads), importance units"."""
    b = arch.blocks[0]
    layers = b.depth // 2
    if kind == "truncated":
        return f"teacher's first {layers} layer{'s' * (layers != 1)}"
    if kind == "pruned":
        return f"teacher's first {layers} layer{'s' * (layers != 1)}, feed-forward pruned to {b.ops[1].inner} neurons"
    return f"{layers} x {b.hidden} wide ({b.ops[0].heads} heads), {order} units"
