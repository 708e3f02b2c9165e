"""The calibration: `measured ~ a * raw + c * operators + w * resizes + b`, which corrects a student's summed
table timings (raw) to its end-to-end latency; its fit, its error and the key it is stored under. Which
students it is fitted on, and their timing, are in `students`."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from nas_bert.space import Architecture, Embeddings, SearchSpace
from nas_bert.store import json_hash
from nas_bert.study import LatencyConfig

CALIBRATION_VERSION = 5  # 5: through the reference, c >= -a x the cheapest operator; 4: with students of one width;
# 3: measured ~ a * raw + c * operators + w * resizes + b

Point = tuple[float, int, int, float]  # a calibration student's (raw ms, operators run, resizes, measured ms)


def operators(arch: Architecture) -> int:
    """How many operators a student runs (identity sublayers run nothing)."""
    return sum(op.kind != "identity" for b in arch.blocks for op in b.ops)


def resizes(arch: Architecture) -> int:
    """How many blocks change the width of their input (a slice into a narrower block, a map into a wider one)."""
    widths = [arch.embeddings.width, *(b.hidden for b in arch.blocks)]
    return sum(a != b for a, b in itertools.pairwise(widths))


@dataclass
class Calibration:
    """measured ~ a * raw + c * operators + w * resizes + b, with the (raw, operators, resizes, measured) points
    it was fitted on,
    and the measured latency of the space's largest student (`reference_ms`): timed again later, it says
    how much faster or slower the host is than when the model was fitted (`drift`)."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0
    w: float = 0.0
    points: list[Point] = field(default_factory=list)
    loo_mape: float = float("nan")  # leave-one-out mean absolute percentage error, in %
    reference_ms: float | None = None

    def __post_init__(self) -> None:
        self._floor = self.floor_ratio()

    def floor_ratio(self) -> float:
        """The floor's share of `a * raw`: 1 without fitted points; else the line's least ratio to `a * raw` over
        the students it was fitted on (at most 1, at least 0), so that the floor never lifts a fitted student."""
        ratios = [(self.a * r + self.c * n + self.w * z + self.b) / (self.a * r) for r, n, z, _ in self.points if r > 0]
        return min(1.0, max(0.0, min(ratios))) if ratios else 1.0

    def __call__(self, raw: float, ops: int, resized: int) -> float:
        """The fitted line, never below the student's scaled module time `a * raw` times `floor_ratio`: a negative
        intercept fitted on whole students would otherwise predict a near-empty one (the embeddings alone) below
        zero. The floor is proportional to `a * raw`, so the prediction never falls as a student grows (an operator
        more adds at least a x its table time to both), and its ratio is the line's least over the fitted students,
        so the line stands as fitted wherever it was fitted (floored at `a * raw` itself, a negative intercept put
        every full-width student of the quality study 0.14 ms above its fit)."""
        return max(self.a * raw + self.c * ops + self.w * resized + self.b, self.a * raw * self._floor)

    def to_json(self, emb: Embeddings) -> str:
        return json.dumps({"version": CALIBRATION_VERSION, "a": self.a, "b": self.b, "c": self.c, "w": self.w,
                           "points": self.points, "embeddings": asdict(emb), "reference_ms": self.reference_ms})

    @classmethod
    def from_json(cls, text: str, mape: float) -> Calibration:
        d = json.loads(text)
        points = [(float(r), int(n), int(z), float(m)) for r, n, z, m in d["points"]]
        return cls(a=d["a"], b=d["b"], c=d["c"], w=d["w"], points=points,
                   loo_mape=mape if mape >= 0 else float("nan"), reference_ms=d.get("reference_ms"))


def fit_linear(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """measured = a * raw + b by least squares on the relative error (each point weighted by 1 / measured),
    so a sub-millisecond student counts as much as the teacher-sized one; a proportional fit when that is
    degenerate or a <= 0."""
    pts = np.asarray(list(points), dtype=float)
    raw, meas = pts[:, 0], pts[:, 1]
    if len(pts) >= 2 and np.ptp(raw) > 0:
        (a, b), *_ = np.linalg.lstsq(np.stack([raw / meas, 1.0 / meas], 1), np.ones_like(meas), rcond=None)
        if a > 0:  # a must be positive, or a cheaper operator would predict a slower model
            return float(a), float(b)
    return float(np.mean(meas / raw)), 0.0


def fit_calibration(points: Iterable[Point], anchor: int | None = None,
                    cheapest_op_ms: float = 0.0) -> tuple[float, float, float, float]:
    """measured = a * raw + c * operators + w * resizes + b (returns a, c, w, b) by least squares on the
    relative error, as `fit_linear`, with w >= 0 (one resize more never predicts a faster student), a > 0 and
    c >= -a * `cheapest_op_ms` (the table's cheapest operator: one operator more, however cheap, never predicts a
    faster student; 0, the default, keeps c >= 0): the best fit of the terms the points can pin (enough of them,
    some spread) whose coefficients keep those bounds, which is the constrained least-squares optimum; the plain
    `a * raw + b` where none does.

    A negative c is what a table timed operator by operator can need: on a host where the table's small operators
    took longer alone than inside a student, the quality study's calibration students of 12 operators and 1.6 ms
    of table time ran in 1.3 ms while the teacher-sized ones ran 11% over theirs, and a fit held to c >= 0 split
    the difference with a 9.6% leave-one-out error, 10% under every student over 6 ms (BENCHMARKS.md).

    With `anchor` (a point's index) the fit passes through that point exactly: the calibration students' largest,
    the teacher's own layers, whose time the budgets given as fractions of the teacher are made from, so that a
    student predicted at half the teacher is predicted against the teacher's time as timed, not the fit's."""
    pts = np.asarray(list(points), dtype=float)
    raw, ops, rs, meas = pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3]
    keep = np.arange(len(pts)) != (-1 if anchor is None else anchor)
    shifted = raw - cheapest_op_ms * ops  # c = c' - a * cheapest_op_ms with c' >= 0: the bound as a sign

    def solve(first: np.ndarray, cols: list[np.ndarray]) -> tuple[np.ndarray, float] | None:
        """Least squares on the relative error with columns [first, *cols] (and the intercept, or through the
        anchor); None where the points cannot pin them (too few, no spread)."""
        if keep.sum() < len(cols) + 4 or any(np.ptp(x) == 0 for x in (first, *cols)):
            return None
        if anchor is None:
            design = np.stack([*(x / meas for x in (first, *cols)), 1.0 / meas], 1)
            target = np.ones_like(meas)
        else:  # through the anchor: each point's offset from it, no intercept of its own
            design = np.stack([(x[keep] - x[anchor]) / meas[keep] for x in (first, *cols)], 1)
            target = (meas[keep] - meas[anchor]) / meas[keep]
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        return coef, float(np.sum((design @ coef - target) ** 2))

    best: tuple[float, tuple[float, float, float, float]] | None = None
    for use_w in (True, False):
        w_col = [rs] if use_w else []
        # c free (c' >= 0: above its bound), c = 0, and c at its bound where the free fit went below it
        free = solve(shifted, [ops, *w_col])
        modes = [("free", free), ("zero", solve(raw, w_col))]
        if free is not None and cheapest_op_ms > 0 and free[0][1] < 0:
            modes.append(("bound", solve(shifted, w_col)))
        for mode, got in modes:
            if got is None:
                continue
            coef, sse = got
            n = 1 + (mode == "free") + use_w  # the coefficients before the intercept
            if coef[0] <= 0 or any(x < -1e-9 for x in coef[1:n]):  # a rounding error below zero is zero
                continue
            a, rest = float(coef[0]), [max(0.0, float(x)) for x in coef[1:n]]
            c = rest[0] - a * cheapest_op_ms if mode == "free" else 0.0 if mode == "zero" else -a * cheapest_op_ms
            w = rest[-1] if use_w else 0.0
            b = (float(coef[-1]) if anchor is None else
                 float(meas[anchor] - a * raw[anchor] - c * ops[anchor] - w * rs[anchor]))
            if best is None or sse < best[0] - 1e-12:
                best = (sse, (a, c, w, b))
    if best is not None:
        return best[1]
    if anchor is not None:  # too few points for a slope of their own: proportional, through the anchor
        return float(meas[anchor] / raw[anchor]), 0.0, 0.0, 0.0
    a, b = fit_linear(zip(raw, meas, strict=True))
    return a, 0.0, 0.0, b


def loo_mape(points: list[Point], anchor: int | None = None, cheapest_op_ms: float = 0.0) -> float:
    """Leave-one-out MAPE (%): each point predicted by a fit on all the others (`fit_calibration` with the same
    anchor and bound; the anchor, which every fit passes through, is not left out)."""
    if len(points) < 3:
        return float("nan")
    errs = []
    for i, (raw, ops, rs, meas) in enumerate(points):
        if i == anchor:
            continue
        at = None if anchor is None else anchor - (i < anchor)
        rest = points[:i] + points[i + 1:]
        a, c, w, b = fit_calibration(rest, at, cheapest_op_ms)
        errs.append(abs(Calibration(a=a, b=b, c=c, w=w, points=rest)(raw, ops, rs) - meas) / meas)
    return 100.0 * float(np.mean(errs))


def calibration_key(fingerprint: str, space: SearchSpace, cfg: LatencyConfig, version: int = CALIBRATION_VERSION) -> str:
    """The stored calibration's key: the device, the space, and what chose and fitted its students (a
    calibration of another version or other students is never reused; `version` finds an older one's row)."""
    how = json_hash([version, cfg.calibration_archs, cfg.calibration_one_width, cfg.seed], None)
    return f"{fingerprint}:{space.fingerprint()}:{how[:8]}"
