"""Hand-designed students initialised from the teacher: what a NAS student must beat.

- `truncated`: the teacher's first k layers, copied exactly (DistilBERT-style initialisation);
- `uniform`: the teacher's depth at a smaller uniform width, its weights extracted from the
  teacher (ETD, Chen et al. 2021): the leading hidden dimensions, heads and feed-forward neurons,
  or the most important ones, ranked by how much each contributes to the teacher's outputs on
  corpus text.

Both are plain `Architecture`s (one block), so they are timed, distilled, evaluated and exported
by the same code as searched students.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from nas_bert.architecture import Architecture, Block, Op
from nas_bert.configuration_nas_bert import NasBertConfig
from nas_bert.errors import NasBertError
from nas_bert.importance import Importance, bert_layers, head_size
from nas_bert.modeling_nas_bert import NasBertModel
from nas_bert.supernet import copy_attention, copy_embeddings, copy_ffn
from nas_bert.teacher import Teacher

Tensor = torch.Tensor
Order = Literal["leading", "importance"]


def truncated_architecture(teacher: Teacher, layers: int) -> Architecture:
    """The teacher's first `layers` layers at full width: one block of (attention, feed-forward) pairs."""
    n = teacher.num_layers
    if not 1 <= layers <= n:
        raise NasBertError(f"truncated teacher: layers must lie in 1..{n}, got {layers}")
    return uniform_architecture(teacher, teacher.hidden_size, layers)


def uniform_architecture(teacher: Teacher, width: int, layers: int | None = None) -> Architecture:
    """`layers` BERT layers (default: the teacher's depth) at one width, the teacher's head size and
    feed-forward ratio (heads = width / head size)."""
    layers = layers or teacher.num_layers
    hs, H = head_size(teacher), teacher.hidden_size
    if width % hs or not hs <= width <= H:
        raise NasBertError(f"uniform width {width}: must be a multiple of the teacher's head size {hs} in {hs}..{H}")
    inner = int(teacher.config.intermediate_size) * width // H
    pair = (Op("mha", heads=width // hs), Op("ffn", inner=inner))
    return Architecture.build(teacher.embeddings_spec(), (Block(width, pair * layers),))


def _top(scores: Tensor | None, k: int, total: int) -> Tensor:
    """Indices kept: the leading k, or the k best-scored, in their original order."""
    if scores is None:
        return torch.arange(k)
    return torch.sort(torch.topk(scores, k).indices).values


def teacher_initialised(arch: Architecture, teacher: Teacher, importance: Importance | None = None
                        ) -> tuple[NasBertModel, tuple[Tensor, Tensor]]:
    """A uniform one-block student with weights extracted from the teacher's first layers.

    Student layer i takes teacher layer i. Units kept: the leading ones, or the best-scored when
    `importance` is given; at full width nothing is dropped and the copy is exact. Returns the student
    and the (weight, bias) from its width back to the teacher's (the selection's transpose), which is
    also its output projection's start.
    """
    if len(arch.blocks) != 1:
        raise NasBertError("teacher-initialised students have one block; build them with uniform_architecture")
    layers = bert_layers(teacher)
    block = arch.blocks[0]
    ops = [op for op in block.ops if op.kind != "identity"]
    pairs = list(zip(ops[::2], ops[1::2], strict=True))
    if len(ops) % 2 or any((a.kind, b.kind) != ("mha", "ffn") for a, b in pairs) or len(pairs) > len(layers):
        raise NasBertError("teacher-initialised students are (attention, feed-forward) pairs, at most the teacher's depth")
    H, hs, w = teacher.hidden_size, head_size(teacher), block.hidden
    dims = _top(importance.hidden if importance else None, w, H)
    student = NasBertModel(NasBertConfig(architecture=arch.to_dict(), layer_norm_eps=float(teacher.config.layer_norm_eps)))
    copy_embeddings(teacher.encoder.embeddings, student)
    select = torch.zeros(w, H)
    select[torch.arange(w), dims] = 1.0
    with torch.no_grad():
        sb = student.blocks[0]
        sb.projection.weight.copy_(select)
        sb.projection.bias.zero_()
        for i, (mha, ffn) in enumerate(pairs):
            t = layers[i]
            a, f = sb.layers[2 * i], sb.layers[2 * i + 1]
            heads = _top(importance.heads[i] if importance else None, mha.heads, H // hs)
            cols = (heads[:, None] * hs + torch.arange(hs)).reshape(-1)  # the kept heads' dimensions
            copy_attention((a.query, a.key, a.value, a.output), a.LayerNorm, t, cols, dims)
            inner = _top(importance.neurons[i] if importance else None, ffn.inner, t.intermediate.dense.out_features)
            copy_ffn((f.intermediate.weight, f.intermediate.bias, f.output.weight, f.output.bias), f.LayerNorm, t,
                     inner, dims)
        final = (select.T.contiguous(), torch.zeros(H))  # kept dimensions back in their places
        if student.output_projection is not None:
            student.output_projection.weight.copy_(final[0])
            student.output_projection.bias.copy_(final[1])
    return student, final


def describe(kind: str, arch: Architecture, order: str | None = None) -> str:
    """One line for tables: "teacher's first 3 layers", "6 x 192 wide (6 heads), importance units"."""
    b = arch.blocks[0]
    layers = b.depth // 2
    if kind == "truncated":
        return f"teacher's first {layers} layer{'s' * (layers != 1)}"
    return f"{layers} x {b.hidden} wide ({b.ops[0].heads} heads), {order} units"


def distill_baseline(ctx: Any, name: str, arch: Architecture, importance: Importance | None = None,
                     steps: int | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Distil a teacher-initialised student exactly as searched students are (the study's distill
    settings, data and losses), with TinyBERT's uniform layer mapping; resumable under
    <study workdir>/baselines/<name>. `ctx` is a `students.StudentContext`."""
    from nas_bert.distill import distill_points, uniform_mapping
    from nas_bert.students import train_student

    cfg = ctx.study.cfg.distill
    steps = steps or cfg.steps
    student, final_init = teacher_initialised(arch, ctx.teacher, importance)
    module = ctx.wrap(student, arch, final_init, cfg.freeze_embeddings)
    mapping = uniform_mapping(len(distill_points(arch)), ctx.teacher.num_layers)
    root = ctx.study.workdir / "baselines" / name
    before, report, step, path = train_student(ctx, arch, module, mapping, root, steps, stop_after, label=name)
    return {"name": name, "arch_hash": arch.hash(), "architecture": str(arch), "params": arch.params(),
            "mapping": mapping, "before": before, "after": report, "step": step, "target_steps": steps,
            "student_path": str(path) if path else None}
