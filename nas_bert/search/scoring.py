"""Stages 3 and 4: NAS-BERT's performance approximation and end-to-end rescoring, or the zero-step fidelity
of the extracted student (`fidelity_proxy`, the default in a space made from the teacher), as it is or after a
cross-fitted linear readout, or what that readout adds over the embeddings alone.

A block sub-architecture's score is its validation MSE against the teacher's boundary states,
computed with the trained supernet and memoised in the database per (supernet checkpoint,
block, block hash); an architecture's approximate loss is the sum over its blocks. Rescoring
runs the whole chained student (teacher embeddings -> every block, no teacher states in
between) against the teacher's final hidden state on more validation text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nas_bert.evaluate import fidelity, readout_fidelity, readout_gain
from nas_bert.space import Architecture
from nas_bert.store import BlockScore, Database
from nas_bert.supernet import Supernet, ValidationCache, block_val_loss, masked_mse
from nas_bert.teacher import Teacher


@dataclass
class BlockScorer:
    """Memoised block scores: in memory, then the database, then the supernet."""

    supernet: Supernet
    cache: ValidationCache
    db: Database
    checkpoint_sha: str
    memo: dict[tuple[int, str], float] = field(default_factory=dict)
    computed: int = 0  # block scores this process had to compute (the rest were memoised)

    def load_memo(self) -> None:
        with self.db.session() as s:
            rows = s.scalars(select(BlockScore).where(BlockScore.checkpoint_sha == self.checkpoint_sha))
            self.memo.update({(r.block, r.block_hash): r.loss for r in rows})

    def block_loss(self, b: int, arch: Architecture) -> float:
        block = arch.blocks[b]
        key = (b, block.hash())
        if key not in self.memo:
            with self.db.session() as s:
                row = s.scalars(select(BlockScore).where(
                    BlockScore.checkpoint_sha == self.checkpoint_sha, BlockScore.block == b,
                    BlockScore.block_hash == key[1])).first()
            if row is not None:
                self.memo[key] = row.loss
            else:
                loss = block_val_loss(self.supernet, b, block, self.cache)
                self.computed += 1
                self.memo[key] = loss
                try:
                    with self.db.session() as s:
                        s.add(BlockScore(checkpoint_sha=self.checkpoint_sha, block=b, block_hash=key[1], loss=loss))
                except IntegrityError:  # another worker stored the same score first
                    pass
        return self.memo[key]

    def approx_loss(self, arch: Architecture) -> float:
        return sum(self.block_loss(b, arch) for b in range(len(arch.blocks)))


def with_output(supernet: Supernet, arch: Architecture) -> Architecture:
    """`arch` as the extracted student is: returning to the teacher's width."""
    return arch if arch.output else Architecture(arch.embeddings, arch.blocks, supernet.teacher_width)


@torch.no_grad()
def rescore(supernet: Supernet, arch: Architecture, cache: ValidationCache) -> float:
    """End-to-end MSE of the chained student against the teacher's last hidden state.

    The student's output is what the extracted student returns: its last block, completed to the
    teacher's width by the last boundary's prediction, in the teacher's order.
    """
    total, tokens = 0.0, 0.0
    arch = with_output(supernet, arch)
    for batch, bounds in zip(cache.batches, cache.bounds, strict=True):
        mask = batch["attention_mask"]
        out = supernet.forward_student(bounds[0], arch, mask)  # (B, T, teacher width)
        n = float(mask.sum())
        total += float(masked_mse(out, bounds[-1], mask)) * n
        tokens += n
    return total / max(tokens, 1.0)


@torch.no_grad()
def fidelity_proxy(supernet: Supernet, arch: Architecture, cache: ValidationCache, teacher: Teacher,
                   mode: str = "fidelity") -> float:
    """The extracted student's zero-step fidelity (its pooled output against the teacher's, as `evaluate`
    measures it) on the validation batches, as a loss: 1 - fidelity. The chained path is exactly what the
    extracted student computes, so this is the start a short distillation would begin from. `mode` "readout":
    after the best cross-fitted linear map of its vectors into the teacher's (`readout_fidelity`); "gain": what
    that readout adds over the teacher's embeddings alone (`readout_gain`)."""
    ours, theirs, embeddings = [], [], []
    arch = with_output(supernet, arch)
    for batch, bounds in zip(cache.batches, cache.bounds, strict=True):
        mask = batch["attention_mask"]
        ours.append(teacher.embed(supernet.forward_student(bounds[0], arch, mask), mask))
        theirs.append(teacher.embed(bounds[-1], mask))
        if mode == "gain":
            embeddings.append(teacher.embed(bounds[0], mask))
    s, t = torch.cat(ours).float().cpu(), torch.cat(theirs).float().cpu()
    if mode == "gain":
        value = readout_gain(s, torch.cat(embeddings).float().cpu(), t)
    else:
        value = (readout_fidelity if mode == "readout" else fidelity)(s, t)
    return 1.0 - (value if math.isfinite(value) else -1.0)


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Rank agreement between approximate and rescored losses (None with fewer than 3 points)."""
    if len(xs) < 3:
        return None
    from scipy.stats import kendalltau

    tau: Any = kendalltau(xs, ys).statistic
    return float(tau)
