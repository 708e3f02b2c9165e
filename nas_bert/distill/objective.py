"""Stage 7: distil an extracted student from the teacher with a layer mapping.

Distillation points: a student "layer" is two consecutive non-identity sublayers (BERT's
attention + feed-forward pair), so point m is the output of the 2m-th non-identity sublayer
(and the last sublayer is always a point). A mapping gives each point the teacher layer it
learns from (1..N, non-decreasing). Losses, weighted in the study file; the primary one is what the
teacher is used for (`Teacher.use`), the others are auxiliaries:
- pooled (sentence-transformers teacher): 1 - cosine between the student's and the teacher's
  sentence embeddings (the teacher's pooling, normalised);
- similarity (sentence-transformers teacher): MSE between the in-batch cosine-similarity matrices of
  the centred sentence embeddings, the geometry a retrieval index or a clustering relies on;
- hidden: MSE between each point (through a learned projection, TinyBERT's W_h) and its teacher layer;
- embeddings: MSE between the student's and teacher's embedding outputs (the tables start equal);
- attention: MiniLMv2 relations (Q-Q, K-K, V-V with a fixed number of relation heads, so the
  student's head count does not matter), for each student attention sublayer against the
  teacher layer of its point, by KL divergence;
- final: MSE of the student's output (its output projection, which starts as the supernet's
  output adapter, or the teacher's own layers for a copied student) against the teacher's last
  hidden state; a student without an output projection gets a distillation-only one;
- logits: temperature KD on the teacher's MLM predictions, when the teacher has an MLM head.
Validation also reports `fidelity`: the Spearman correlation of the pairwise cosine similarities of
the student's and the teacher's sentence embeddings on held-out text, which distillation maximises
by keeping its best weights. The same training loop as the supernet (checkpoints, resume, accelerate,
progress).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_bert.errors import NasBertError
from nas_bert.evaluate import fidelity
from nas_bert.model import NasBertModel
from nas_bert.space import Architecture
from nas_bert.supernet import masked_mse
from nas_bert.teacher import Teacher

Tensor = torch.Tensor


def layer_slot_form(arch: Architecture) -> bool:
    """Whether `arch` is a student of a space made from the teacher: one block of two sublayers per teacher layer."""
    return len(arch.blocks) > 1 and all(len(b.ops) == 2 for b in arch.blocks)


def distill_points(arch: Architecture) -> list[int]:
    """Indices into the student's hidden_states (0 = embeddings) of the distillation points: after every two
    sublayers (a layer), or in a space made from the teacher after each kept teacher layer."""
    if layer_slot_form(arch):
        ends, depth = [], 0
        for b in arch.blocks:
            depth += b.depth
            if b.depth:
                ends.append(depth)
        return ends
    depth = arch.depth
    points = list(range(2, depth + 1, 2))
    if depth % 2:
        points.append(depth)
    return points


def layer_widths(arch: Architecture) -> list[int]:
    """Width of hidden_states[i]: the embeddings' for i = 0, then each non-identity sublayer's."""
    widths = [arch.embeddings.width]
    for b in arch.blocks:
        widths += [b.hidden] * b.depth
    return widths


def uniform_mapping(m: int, n: int) -> list[int]:
    """TinyBERT's g(m) = m * N / M (rounded half up), for points 1..M."""
    return [max(1, min(n, math.floor(i * n / m + 0.5))) for i in range(1, m + 1)]


def own_layers_mapping(arch: Architecture) -> list[int] | None:
    """Each kept teacher layer learns from itself (its output, teacher layer b + 1 of block b); None for a student
    that is not made of the teacher's layers."""
    return [b + 1 for b, blk in enumerate(arch.blocks) if blk.depth] if layer_slot_form(arch) else None


def last_layers_mapping(m: int, n: int) -> list[int]:
    """The last M teacher layers (clamped at layer 1 when the student has more points)."""
    return [max(1, n - m + i) for i in range(1, m + 1)]


def check_mapping(mapping: list[int], arch: Architecture, n_layers: int) -> list[int]:
    m = len(distill_points(arch))
    if len(mapping) != m:
        raise NasBertError(f"mapping {mapping} has {len(mapping)} entries; this student has {m} distillation points")
    if any(not 1 <= g <= n_layers for g in mapping):
        raise NasBertError(f"mapping {mapping}: teacher layers must lie in 1..{n_layers}")
    if any(a > b for a, b in itertools.pairwise(mapping)):
        raise NasBertError(f"mapping {mapping} is not monotone; each point must map at or above the previous one")
    return list(mapping)


class DistillModule(nn.Module):
    """The student plus what only distillation needs: projections to the teacher's width.

    Attention inputs are captured with forward pre-hooks so the student's own code stays plain, registered for the
    length of one forward only: a hook left on the student would make it reference this module (a cycle that only
    the garbage collector frees, a student at a time) and, in a copy of the student (`finetune`'s), keep every
    attention input of every step with its graph.
    """

    def __init__(self, student: NasBertModel, arch: Architecture, teacher_width: int) -> None:
        super().__init__()
        self.student = student
        widths = layer_widths(arch)
        self.points = distill_points(arch)
        order = student.config.dim_order or list(range(teacher_width))
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)
        # each point starts as the map that puts its dimensions back in the teacher's places
        self.point_proj = nn.ModuleList(_scatter(widths[i], self.order) for i in self.points)
        # a student without an output stage (older architectures) gets a distillation-only one
        self.final_proj = _scatter(widths[-1], self.order) if not arch.output else None
        # the layer index (in hidden_states numbering) of every attention sublayer
        self.mha_layers: list[tuple[int, nn.Module]] = []
        i = 0
        for block in student.blocks:
            for layer in block.layers:
                i += 1
                if layer.kind == "mha":
                    self.mha_layers.append((i, layer))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Any]:
        inputs: list[Tensor] = []
        hooks = [layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for _, layer in self.mha_layers]
        try:
            out = self.student(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        finally:
            for h in hooks:
                h.remove()
        qkv = []
        for (idx, layer), x in zip(self.mha_layers, inputs, strict=True):
            qkv.append((idx, layer.query(x), layer.key(x), layer.value(x)))  # each (B, T, h)
        return {"hidden_states": out.hidden_states, "last": out.last_hidden_state, "qkv": qkv}


def _scatter(width: int, order: Tensor) -> nn.Linear:
    """A linear map from a student's leading `width` dimensions (importance order) to the teacher's."""
    proj = nn.Linear(width, len(order))
    with torch.no_grad():
        proj.weight.zero_()
        proj.weight[order[:width], torch.arange(width)] = 1.0
        proj.bias.zero_()
    return proj


def relation_kl(s: Tensor, t: Tensor, heads: int, bias: Tensor) -> Tensor:
    """MiniLMv2: KL(teacher || student) of softmax(X X^T / sqrt(d)) with `heads` relation heads."""
    def rel(x: Tensor) -> Tensor:
        B, T, h = x.shape
        d = h // heads
        x = x[..., : d * heads].view(B, T, heads, d).transpose(1, 2)  # (B, R, T, d)
        return F.log_softmax(x @ x.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)  # (B, R, T, T)

    ls, lt = rel(s), rel(t)
    kl = (lt.exp() * (lt - ls)).sum(-1)  # (B, R, T)
    return kl.mean()


class TeacherTaps:
    """Forward hooks on the teacher's query/key/value projections (made once per teacher)."""

    def __init__(self, teacher: Teacher) -> None:
        self.out: dict[tuple[int, str], Tensor] = {}
        layers = teacher.family.teacher_layers(teacher.encoder)  # its query, key and value by its family's names
        self.handles = [getattr(layer, name).register_forward_hook(self._hook(n, name))
                        for n, layer in enumerate(layers, start=1) for name in ("query", "key", "value")]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, n: int, name: str):
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            self.out[(n, name)] = output

        return hook


def similarity_loss(s: Tensor, t: Tensor) -> Tensor:
    """MSE between the cosine-similarity matrices of two batches of sentence vectors (B, H), each centred
    on its batch mean (the direction every sentence shares carries no geometry)."""
    def gram(v: Tensor) -> Tensor:
        v = F.normalize(v - v.mean(0, keepdim=True), dim=-1)
        return v @ v.T

    return F.mse_loss(gram(s), gram(t))


class TeacherCache:
    """The teacher's outputs on training batches, by the batches' content, up to `max_mb`. The students of one
    context (the finalists, the mapping search's proxy runs) train on the same batches in the same order, so the
    teacher runs on each once instead of once per student (its forward pass was 25-39% of a finalist's step on
    the demo). When full, nothing more is added: the first batches are the ones every run shares. The outputs
    are the same tensors the teacher would compute again (it is frozen, in eval mode)."""

    def __init__(self, max_mb: int) -> None:
        self.max_bytes, self.bytes, self.hits, self.misses = max_mb * 2**20, 0, 0, 0
        self._out: dict[bytes, tuple[tuple[Tensor, ...], dict[tuple[int, str], Tensor]]] = {}

    @staticmethod
    def key(batch: dict[str, Tensor]) -> bytes:
        """A digest of what the teacher reads: the token ids and the attention mask."""
        h = hashlib.blake2b(digest_size=16)
        for name in ("input_ids", "attention_mask"):
            t = batch[name].detach()
            h.update(repr((name, tuple(t.shape), str(t.dtype))).encode())
            h.update(t.cpu().contiguous().numpy().tobytes())
        return h.digest()

    def get(self, key: bytes) -> tuple[tuple[Tensor, ...], dict[tuple[int, str], Tensor]] | None:
        out = self._out.get(key)
        self.hits, self.misses = self.hits + (out is not None), self.misses + (out is None)
        return out

    def put(self, key: bytes, out: tuple[tuple[Tensor, ...], dict[tuple[int, str], Tensor]]) -> None:
        size = sum(t.numel() * t.element_size() for t in [*out[0], *out[1].values()])
        if self.bytes + size <= self.max_bytes:
            self._out[key] = out
            self.bytes += size


class DistillObjective:
    """The weighted sum of the distillation losses for one mapping (the train loop's objective)."""

    def __init__(self, teacher: Teacher, arch: Architecture, mapping: list[int], weights: dict[str, float],
                 relation_heads: int, temperature: float, val_batches: list[dict[str, Tensor]],
                 taps: TeacherTaps | None,
                 val_teacher: dict[int, tuple[tuple[Tensor, ...], dict[tuple[int, str], Tensor]]] | None = None,
                 cache: TeacherCache | None = None) -> None:
        self.teacher, self.arch, self.mapping = teacher, arch, check_mapping(mapping, arch, teacher.num_layers)
        sentence = teacher.use == "sentence"
        # terms that do not apply to this teacher's use are off, whatever their weight
        self.w = {k: v for k, v in weights.items() if sentence or k not in ("pooled", "similarity")}
        self.w = {k: v for k, v in self.w.items() if k != "logits" or teacher.mlm is not None}
        if not any(v > 0 for v in self.w.values()):
            raise NasBertError(f"every distillation loss that applies to this teacher ({teacher.use} use) has weight 0; "
                               "set distill.weights")
        self.primary = {"sentence": "pooled", "mlm": "logits", "states": "final"}[teacher.use]
        self.relation_heads, self.temperature = relation_heads, temperature
        self.taps = taps if self.w.get("attention", 0) > 0 else None
        self.val_batches = val_batches
        # the teacher's outputs on the validation batches, computed once (shared by the objectives of one context)
        self._val_teacher = {} if val_teacher is None else val_teacher
        self.cache = cache  # the teacher's outputs on training batches (shared by the objectives of one context)
        self.last_vectors: tuple[Tensor, Tensor] | None = None

    def _teacher(self, batch: dict[str, Tensor]) -> tuple[tuple[Tensor, ...], dict[tuple[int, str], Tensor]]:
        key = id(batch)
        if key in self._val_teacher:  # validation batches are fixed: the teacher runs on them once
            return self._val_teacher[key]
        val = any(batch is v for v in self.val_batches)
        # the teacher's query/key/value taps are in an entry only where the objective reads them
        digest = None if val or self.cache is None else self.cache.key(batch) + (b"q" if self.taps else b"-")
        if digest is not None and (hit := self.cache.get(digest)) is not None:  # type: ignore[union-attr]
            return hit
        states = self.teacher.hidden_states(batch["input_ids"], batch["attention_mask"])
        out = states, dict(self.taps.out) if self.taps else {}
        if val:
            self._val_teacher[key] = out
        elif digest is not None:
            self.cache.put(digest, out)  # type: ignore[union-attr]
        return out

    def terms(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The loss terms, and the student's and teacher's sentence vectors (B, teacher width)."""
        mask = batch["attention_mask"]
        t_states, t_qkv = self._teacher(batch)
        out = model(batch["input_ids"], mask)
        s = out["hidden_states"]
        core = model.module if hasattr(model, "module") else model  # DDP wraps the module
        final = core.final_proj(s[-1]) if core.final_proj is not None else out["last"]  # (B, T, teacher width)
        s_vec, t_vec = self.teacher.embed(final, mask), self.teacher.embed(t_states[-1], mask)
        terms: dict[str, Tensor] = {}
        if self.w.get("pooled", 0) > 0:
            terms["pooled"] = (1.0 - F.cosine_similarity(s_vec, t_vec, dim=-1)).mean()
        if self.w.get("similarity", 0) > 0 and len(s_vec) > 2:
            terms["similarity"] = similarity_loss(s_vec, t_vec)
        if self.w.get("hidden", 0) > 0 and core.points:
            terms["hidden"] = torch.stack([masked_mse(proj(s[i]), t_states[g], mask)
                                           for proj, i, g in zip(core.point_proj, core.points, self.mapping, strict=True)]).mean()
        if self.w.get("embeddings", 0) > 0 and s[0].shape[-1] == t_states[0].shape[-1]:
            terms["embeddings"] = masked_mse(s[0], t_states[0].index_select(-1, core.order), mask)
        if self.w.get("final", 0) > 0:
            terms["final"] = masked_mse(final, t_states[-1], mask)
        if self.w.get("attention", 0) > 0 and out["qkv"]:
            bias = (1.0 - mask[:, None, None, :].to(s[0].dtype)) * -1e4
            kls = []
            for idx, q, k, v in out["qkv"]:
                g = self.mapping[next(p for p, pt in enumerate(core.points) if pt >= idx)]
                for name, x in (("query", q), ("key", k), ("value", v)):
                    kls.append(relation_kl(x, t_qkv[(g, name)], self.relation_heads, bias))
            terms["attention"] = torch.stack(kls).mean()
        if self.w.get("logits", 0) > 0:
            head = getattr(self.teacher.mlm, "cls", None) or getattr(self.teacher.mlm, "lm_head", None)
            if head is not None:
                sel = batch["labels"] != -100 if "labels" in batch else mask.bool()
                T = self.temperature
                with torch.no_grad():
                    t_logits = head(t_states[-1][sel]) / T
                s_logits = head(final[sel]) / T
                terms["logits"] = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1),
                                           log_target=True, reduction="batchmean") * T * T
        return terms, s_vec, t_vec

    def loss(self, model: nn.Module, batch: dict[str, Tensor], micro_step: int) -> tuple[Tensor, dict[str, float]]:
        terms, _, _ = self.terms(model, batch)
        total = sum(self.w.get(k, 0) * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def _held_out(self, model: nn.Module) -> tuple[dict[str, float], Tensor, Tensor]:
        sums: dict[str, float] = {}
        s_vecs, t_vecs = [], []
        for batch in self.val_batches:
            terms, s_vec, t_vec = self.terms(model, batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(self.val_batches)
            s_vecs.append(s_vec.float().cpu())
            t_vecs.append(t_vec.float().cpu())
        return sums, torch.cat(s_vecs), torch.cat(t_vecs)

    @torch.no_grad()
    def embeddings_vectors(self) -> Tensor:
        """The teacher's embedding output on the held-out batches, pooled as its sentence vectors: what the
        embeddings alone hold (`readout_gain`'s floor), row for row with `vectors`."""
        return torch.cat([self.teacher.embed(self._teacher(b)[0][0], b["attention_mask"]).float().cpu()
                          for b in self.val_batches])

    def vectors(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's sentence vectors of the held-out batches, (n, teacher width) each."""
        _, s_vecs, t_vecs = self._held_out(model)
        return s_vecs, t_vecs

    def validate(self, model: nn.Module) -> dict[str, Any]:
        """Held-out losses on fixed batches (`primary` names the one comparable across mappings, the GA's
        fitness), and the fidelity of the student's sentence vectors to the teacher's on them."""
        was_training = model.training
        model.eval()
        sums, s_vecs, t_vecs = self._held_out(model)
        model.train(was_training)
        self.last_vectors = (s_vecs, t_vecs)  # the sentence vectors of this validation, for an interval on them
        sums["loss"] = sum(self.w.get(k, 0) * v for k, v in sums.items())
        sums["fidelity"] = fidelity(s_vecs, t_vecs) if len(s_vecs) >= 3 else float("nan")
        sums["primary"] = sums.get(self.primary, sums["loss"])
        return sums
