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

CALIBRATION_VERSION = 4  # 4: with students of one width; 3: measured ~ a * raw + c * operators + w * resizes + b

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

    def __call__(self, raw: float, ops: int, resized: int) -> float:
        """The fitted line, never below the student's scaled module time `a * raw`: a negative intercept fitted on
        whole students would otherwise predict a near-empty one (the embeddings alone) below zero."""
        return max(self.a * raw + self.c * ops + self.w * resized + self.b, self.a * raw)

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


def fit_calibration(points: Iterable[Point]) -> tuple[float, float, float, float]:
    """measured = a * raw + c * operators + w * resizes + b (returns a, c, w, b) by least squares on the
    relative error, as `fit_linear`, with c, w >= 0 (one operator or resize more never predicts a faster
    student) and a > 0: the best fit of the terms the points can pin (enough of them, some spread) whose
    coefficients keep those signs, which is the constrained least-squares optimum; the plain `a * raw + b`
    where none does."""
    pts = np.asarray(list(points), dtype=float)
    raw, ops, rs, meas = pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3]
    best: tuple[float, tuple[float, float, float, float]] | None = None
    for use_c, use_w in ((True, True), (True, False), (False, True)):
        cols = [raw] + ([ops] if use_c else []) + ([rs] if use_w else [])
        if len(pts) < len(cols) + 3 or any(np.ptp(x) == 0 for x in cols):
            continue
        design = np.stack([*(x / meas for x in cols), 1.0 / meas], 1)
        coef, *_ = np.linalg.lstsq(design, np.ones_like(meas), rcond=None)
        if coef[0] <= 0 or any(x < -1e-9 for x in coef[1:-1]):  # a rounding error below zero is zero
            continue
        extra = iter(max(0.0, float(x)) for x in coef[1:-1])
        fit = (float(coef[0]), next(extra) if use_c else 0.0, next(extra) if use_w else 0.0, float(coef[-1]))
        sse = float(np.sum((design @ coef - 1.0) ** 2))
        if best is None or sse < best[0] - 1e-12:
            best = (sse, fit)
    if best is not None:
        return best[1]
    a, b = fit_linear(zip(raw, meas, strict=True))
    return a, 0.0, 0.0, b


def loo_mape(points: list[Point]) -> float:
    """Leave-one-out MAPE (%): each point predicted by a fit on all the others."""
    if len(points) < 3:
        return float("nan")
    errs = []
    for i, (raw, ops, rs, meas) in enumerate(points):
        a, c, w, b = fit_calibration(points[:i] + points[i + 1:])
        errs.append(abs(Calibration(a=a, b=b, c=c, w=w)(raw, ops, rs) - meas) / meas)
    return 100.0 * float(np.mean(errs))


def calibration_key(fingerprint: str, space: SearchSpace, cfg: LatencyConfig) -> str:
    """The stored calibration's key: the device, the space, and what chose and fitted its students (a
    calibration of another version or other students is never reused)."""
    how = json_hash([CALIBRATION_VERSION, cfg.calibration_archs, cfg.calibration_one_width, cfg.seed], None)
    return f"{fingerprint}:{space.fingerprint()}:{how[:8]}"
