"""A teacher's layers as its family names them (`families`), and how much each of its units matters.

Shared by everything that starts from the teacher's weights: the supernet's initialisation and the
teacher-initialised baselines (ETD extraction of the most important hidden dimensions, heads and
feed-forward neurons).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nas_bert.errors import NasBertError
from nas_bert.teacher.families import TeacherLayer
from nas_bert.teacher.loading import Teacher

Tensor = torch.Tensor


def teacher_layers(teacher: Teacher) -> list[TeacherLayer]:
    """The teacher's transformer layers by its family's names, checked to compute what a student copy computes
    (post-LayerNorm, exact GELU: 'gelu_new' and 'gelu_fast' are tanh approximations, and differ)."""
    layers = teacher.family.teacher_layers(teacher.encoder)
    if getattr(teacher.config, "hidden_act", "gelu") != "gelu":
        raise NasBertError(f"teacher activation '{teacher.config.hidden_act}' differs from the students' GELU; "
                           "a copied student would not match it")
    return layers


def head_size(teacher: Teacher) -> int:
    """Dimensions per attention head."""
    return teacher.hidden_size // int(teacher.config.num_attention_heads)


@dataclass
class Importance:
    """Scores from the teacher's activations: hidden dims (H,), and per layer heads and neurons."""

    hidden: Tensor
    heads: list[Tensor]
    neurons: list[Tensor]


@torch.no_grad()
def teacher_importance(teacher: Teacher, batches: list[dict[str, Tensor]]) -> Importance:
    """How much each unit contributes to the teacher's outputs, averaged over real tokens:
    a hidden dimension by its mean square across all layer outputs, a head by the norm of its share
    of the attention output (after W_o), a feed-forward neuron by |activation| x ||its output column||."""
    layers = teacher_layers(teacher)
    hs = head_size(teacher)
    H, N = teacher.hidden_size, teacher.num_layers
    heads = [torch.zeros(H // hs) for _ in range(N)]
    neurons = [torch.zeros(int(teacher.config.intermediate_size)) for _ in range(N)]
    hidden = torch.zeros(H)
    captured: dict[tuple[int, str], Tensor] = {}
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(layer.attn_out.register_forward_pre_hook(
            lambda m, a, i=i: captured.__setitem__((i, "ctx"), a[0])))
        hooks.append(layer.ffn_out.register_forward_pre_hook(
            lambda m, a, i=i: captured.__setitem__((i, "act"), a[0])))
    tokens = 0
    try:
        for batch in batches:
            mask = batch["attention_mask"].bool()
            states = teacher.hidden_states(batch["input_ids"], batch["attention_mask"])
            tokens += int(mask.sum())
            for s in states:
                hidden += s[mask].float().pow(2).sum(0).cpu()
            for i, layer in enumerate(layers):
                ctx = captured[(i, "ctx")][mask]  # (tokens, H): heads side by side
                wo = layer.attn_out.weight  # (H, H)
                for h in range(H // hs):
                    part = ctx[:, h * hs:(h + 1) * hs] @ wo[:, h * hs:(h + 1) * hs].T
                    heads[i][h] += part.norm(dim=-1).sum().cpu()
                act = captured[(i, "act")][mask]  # (tokens, inner)
                neurons[i] += (act.abs().sum(0) * layer.ffn_out.weight.norm(dim=0)).cpu()
    finally:
        for h in hooks:
            h.remove()
    if not tokens:
        raise NasBertError("importance needs at least one batch with real tokens")
    return Importance(hidden / tokens, [h / tokens for h in heads], [n / tokens for n in neurons])
