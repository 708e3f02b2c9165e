"""The per-operator lookup table of one device: its keys, the device's fingerprint, the stored rows, and
`LatencyModel`, which sums a student's entries and calibrates the sum."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nas_bert.errors import NasBertError
from nas_bert.latency.calibration import Calibration, fit_calibration, loo_mape, operators, resizes
from nas_bert.latency.harness import Spec
from nas_bert.space import IDENTITY, Architecture, Block, Embeddings, Op, SearchSpace, largest, op_choices
from nas_bert.store import Database, LatencyRow, json_hash
from nas_bert.study import LatencyConfig


# -- device fingerprint ----------------------------------------------------------------------------
def hardware_name(device: str = "cpu") -> str:
    """The CPU model (from /proc/cpuinfo where there is one) or the CUDA device's name."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise NasBertError("latency device 'cuda' was requested but no CUDA GPU is visible; use device: cpu")
        return f"cuda:{torch.cuda.get_device_name(torch.cuda.current_device())}"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_fingerprint(cfg: LatencyConfig) -> str:
    """Stable hash of the hardware, torch version and the settings that change timings."""
    blob = {
        "hardware": hardware_name(cfg.device),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": cfg.device,
        "threads": cfg.threads,
        "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len,
    }
    if cfg.runtime != "torch":  # PyTorch's fingerprints stay as they were before runtimes were named
        import onnxruntime

        blob |= {"runtime": cfg.runtime, "onnxruntime": onnxruntime.__version__}
    return json_hash(blob)


# -- operator keys --------------------------------------------------------------------------------
def op_key(op: Op, hidden: int) -> str:
    size = {"mha": op.heads, "ffn": op.inner, "sepconv": op.kernel}[op.kind]
    if op.kind == "mha" and op.inner:  # heads of their own width (the form without one keeps its old key)
        size = f"{op.heads}x{op.inner // op.heads}"
    return f"{op.kind}:{hidden}:{size}"


def grow_key(in_width: int, out_width: int) -> str:
    """The linear map into a wider block (a narrower or equal one is a free slice)."""
    return f"grow:{in_width}:{out_width}"


def output_key(in_width: int, out_width: int) -> str:
    """Back to the teacher's dimensions: a linear map, or a reordering when the widths are equal."""
    return f"output:{in_width}:{out_width}"


def embeddings_key(emb: Embeddings) -> str:
    # The vocabulary is in the key: two teachers with the same width have different tables.
    return f"embeddings:{emb.vocab_size}:{emb.width}"


def table_specs(space: SearchSpace, emb: Embeddings) -> dict[str, Spec]:
    """Every timing a student of `space` on embeddings `emb` can need, by key."""
    specs: dict[str, Spec] = {embeddings_key(emb): ("embeddings", emb)}
    specs |= {op_key(op, h): ("op", h, op) for h in space.hidden_sizes for op in op_choices(space, h)}
    specs |= {grow_key(i, o): ("grow", i, o) for i in space.hidden_sizes for o in space.hidden_sizes if o > i}
    specs |= {output_key(i, emb.width): ("output", i, emb.width) for i in space.hidden_sizes}
    return specs


# -- the model ------------------------------------------------------------------------------------
@dataclass
class LatencyModel:
    """Lookup table (key -> ms) of one device plus its calibration; predicts a student's latency."""

    fingerprint: str
    config: LatencyConfig
    table: dict[str, float]
    calibration: Calibration = field(default_factory=Calibration)

    def _ms(self, key: str) -> float:
        try:
            return self.table[key]
        except KeyError:
            raise NasBertError(
                f"latency table {self.fingerprint} has no timing for '{key}'; build it for this search space "
                "and teacher first (ensure_latency_model)"
            ) from None

    def block_raw_ms(self, block: Block, in_width: int) -> float:
        """The map into the block (only a wider block has one) plus its operators (identity costs nothing)."""
        ops = sum(self._ms(op_key(op, block.hidden)) for op in block.ops if op.kind != "identity")
        return (self._ms(grow_key(in_width, block.hidden)) if block.hidden > in_width else 0.0) + ops

    def raw_ms(self, arch: Architecture, reorder: bool | None = None) -> float:
        """Sum of the table entries of the student's modules. A full-width last block costs its reordering into
        the teacher's dimensions only where the student has one (`reorder`: a searched student; the teacher's
        own layers, pruned or cut, keep its order, as `build_student(arch, reorder=False)`)."""
        total, prev = self._ms(embeddings_key(arch.embeddings)), arch.embeddings.width
        for b in arch.blocks:
            total += self.block_raw_ms(b, prev)
            prev = b.hidden
        if not arch.output or (prev == arch.output and not (arch.reorders() if reorder is None else reorder)):
            return total
        return total + self._ms(output_key(prev, arch.output))

    def predict(self, arch: Architecture, calibration: Calibration | None = None, reorder: bool | None = None) -> float:
        """Calibrated end-to-end milliseconds, by the stored calibration or another (one refitted in a later run);
        `reorder` as in `raw_ms`."""
        return (self.calibration if calibration is None else calibration)(self.raw_ms(arch, reorder), operators(arch),
                                                                           resizes(arch))

    def refitted(self, archs: list[Architecture], measured: list[float], anchor: int | None = None,
                 space: SearchSpace | None = None) -> Calibration:
        """The calibration's form fitted on students timed end to end now (the table stays as it is), through the
        student at index `anchor` where one is given, with no operator of `space` cheaper than none
        (`fit_calibration`)."""
        points = [(self.raw_ms(a), operators(a), resizes(a), ms) for a, ms in zip(archs, measured, strict=True)]
        cheapest = self.cheapest_operator_ms(space)
        a, c, w, b = fit_calibration(points, anchor, cheapest)
        return Calibration(a=a, b=b, c=c, w=w, points=points, loo_mape=loo_mape(points, anchor, cheapest))

    def cheapest_operator_ms(self, space: SearchSpace | None = None) -> float:
        """The cheapest operator (attention, feed-forward or convolution) of `space` in the table (of every space
        the table holds without one: a bound no tighter than needed only where the space is not known); 0 where
        there is none."""
        if space is None:
            keys = [k for k in self.table if k.split(":", 1)[0] in ("mha", "ffn", "sepconv")]
        else:
            keys = [op_key(op, h) for h in space.hidden_sizes for op in op_choices(space, h)]
        return min((self.table[k] for k in keys if k in self.table), default=0.0)

    def fastest_architecture(self, space: SearchSpace, emb: Embeddings) -> Architecture:
        """The student of `space` with the lowest predicted latency (exact).

        Within a block of width h the cheapest choice is the minimum depth of the cheapest operator;
        the map into block b depends on block b-1's width, so a dynamic programme over widths
        picks the widths. The calibration is increasing in raw (a > 0), in operators (c >= -a x the cheapest one) and in resizes
        (w >= 0), and every block here has the minimum depth, so minimising raw + (w / a) x resizes is enough.
        """
        if space.layer_slots:  # every layer dropped: a dropped layer keeps the width before it
            return Architecture.build(emb, tuple(Block(emb.width, (IDENTITY,) * space.sublayers_per_block)
                                                 for _ in range(space.blocks)))
        per_resize = self.calibration.w / self.calibration.a
        depth = space.depths[0]
        cheapest: dict[int, Block] = {}
        for h in space.hidden_sizes:
            op = min(op_choices(space, h), key=lambda o: self._ms(op_key(o, h)))
            cheapest[h] = Block(h, (op,) * depth + (IDENTITY,) * (space.sublayers_per_block - depth))
        # best[h] = (raw cost of blocks so far ending at width h, the blocks)
        best: dict[int, tuple[float, tuple[Block, ...]]] = {emb.width: (self._ms(embeddings_key(emb)), ())}
        for _ in range(space.blocks):
            best = {
                h: min(((c + self.block_raw_ms(blk, prev) + per_resize * (h != prev), (*blocks, blk))
                        for prev, (c, blocks) in best.items()),
                       key=lambda t: t[0])
                for h, blk in cheapest.items()
            }
        _, blocks = min(((c + self._ms(output_key(h, emb.width)), blocks) for h, (c, blocks) in best.items()),
                        key=lambda t: t[0])
        return Architecture.build(emb, blocks)

    def reference(self, space: SearchSpace, emb: Embeddings) -> tuple[Architecture, float]:
        """The drift reference: the space's largest student and its latency when the model was fitted."""
        arch = largest(space, emb)
        ms = self.calibration.reference_ms
        return arch, ms if ms is not None else self.predict(arch)

    def fastest_possible(self, space: SearchSpace, emb: Embeddings) -> float:
        """The minimum predicted latency over the space: no latency budget below it can be met."""
        return self.predict(self.fastest_architecture(space, emb))


# -- stored rows ----------------------------------------------------------------------------------
def load_table(db: Database, fingerprint: str) -> dict[str, float]:
    with db.session() as s:
        rows = s.scalars(select(LatencyRow).where(LatencyRow.fingerprint == fingerprint)).all()
        return {r.key: r.ms for r in rows}


def _store_row(db: Database, fingerprint: str, key: str, ms: float) -> float:
    """Insert one timing; if a concurrent worker stored the key first, keep (and return) theirs."""
    try:
        with db.session() as s:
            s.add(LatencyRow(fingerprint=fingerprint, key=key, ms=ms))
        return ms
    except IntegrityError:
        return load_table(db, fingerprint)[key]
