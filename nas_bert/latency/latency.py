"""The latency model of a target device: NAS-BERT's per-operator lookup table plus a calibration.

Every operator the search can place, the embeddings, every map into a wider block and every output
map is timed once as the plain student module it is in an extracted model (equal widths and slices
into a narrower block cost nothing); a student's raw latency is the sum of its parts. What isolated
timings get wrong is corrected by `measured ~ a * raw + c * operators + w * resizes + b`, fitted on whole
students measured end to end: an operator timed alone in a loop runs with its weights and input hot in
cache and its threads awake (a < 1 where that flatters big matrix products), every operator in a model
pays a fixed cost its isolated timing does not show (c, per operator run), and so does every change of
width between blocks (w, per resize: a narrower block works on a strided slice, a wider one on a
concatenation; without it the calibration, taught by random students that change width at most blocks,
over-predicted the students of one width throughout, the teacher's own layers among them, by 5-8%). Summed timings alone
(`a * raw + b`) were 11-23% off on the students a search picks (mostly shallow, narrow, convolutional),
because a calibration on random students taught it the ratio of deep, wide ones. The calibration
students are half uniform random and half spread evenly over the space's latency range, so the small
students budgets ask for are fitted too. Timings live in the study database under a device
fingerprint, so a second search on the same machine measures nothing.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from torch import nn
from torch.utils import benchmark
from tqdm.auto import tqdm

from nas_bert.errors import NasBertError
from nas_bert.model import NasBertConfig, NasBertEmbeddings, NasBertLayer, NasBertModel, mask_bias, resize
from nas_bert.space import (
    IDENTITY,
    Architecture,
    Block,
    Embeddings,
    Op,
    SearchSpace,
    largest,
    op_choices,
    sample,
    smallest,
    truncated,
)
from nas_bert.store import Database, LatencyCalibration, LatencyRow, json_hash
from nas_bert.study import LatencyConfig

# Timing on shared cores. Other processes of this machine show up as time our threads waited for a
# CPU (schedstat): a block that waited more than QUIET_DELAY of its time is dropped, and a round with
# fewer than MIN_QUIET_BLOCKS good blocks is retried after a pause (NOISY_PAUSE s, or 2.5 rounds if
# rounds are shorter, so quick test builds stay quick), MAX_ATTEMPTS tries in all. Other
# guests of the host are invisible but only ever slow blocks down, in bursts of up to seconds: so a
# timing is several blocked_autorange rounds, interleaved across a chunk of timings to spread them in
# time, and the result is a low percentile (QUANTILE) of its good blocks. On a busy 2-core VM this
# repeats to ~1% where a round's median drifts by 5-20%.
TABLE_ROUNDS, MODEL_ROUNDS = 5, 7  # whole students are the ground truth of the calibration and reports
QUANTILE = 10.0
CHUNK = 12  # table timings interleaved and stored together: an interrupted build loses one chunk at most
QUIET_DELAY, MIN_QUIET_BLOCKS, NOISY_PAUSE, MAX_ATTEMPTS = 0.02, 3, 0.5, 3

log = logging.getLogger(__name__)


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
    return json_hash(blob)


# -- operator keys --------------------------------------------------------------------------------
def op_key(op: Op, hidden: int) -> str:
    size = {"mha": op.heads, "ffn": op.inner, "sepconv": op.kernel}[op.kind]
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


Spec = tuple[Any, ...]  # what a key times: ("op", hidden, Op), ("grow" | "output", in, out) or ("embeddings", Embeddings)


def table_specs(space: SearchSpace, emb: Embeddings) -> dict[str, Spec]:
    """Every timing a student of `space` on embeddings `emb` can need, by key."""
    specs: dict[str, Spec] = {embeddings_key(emb): ("embeddings", emb)}
    specs |= {op_key(op, h): ("op", h, op) for h in space.hidden_sizes for op in op_choices(space, h)}
    specs |= {grow_key(i, o): ("grow", i, o) for i in space.hidden_sizes for o in space.hidden_sizes if o > i}
    specs |= {output_key(i, emb.width): ("output", i, emb.width) for i in space.hidden_sizes}
    return specs


# -- timing ---------------------------------------------------------------------------------------
Job = tuple[str, dict[str, Any]]  # a Timer statement and its globals


def _run_delay_ns() -> int | None:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU (Linux schedstat)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except (OSError, ValueError, IndexError):
            return None
    return total


def _round(timer: benchmark.Timer, cfg: LatencyConfig) -> tuple[list[float], list[float]]:
    """One blocked_autorange round: seconds per call of its good blocks, and of those another process slowed."""
    quiet: list[bool] = []
    last = (_run_delay_ns(), time.perf_counter())

    def after_block(_number: int, _seconds: float) -> None:
        nonlocal last
        now = (_run_delay_ns(), time.perf_counter())
        waited = None if now[0] is None or last[0] is None else now[0] - last[0]
        quiet.append(waited is None or waited <= QUIET_DELAY * (now[1] - last[1]) * 1e9)
        last = now

    m = timer.blocked_autorange(callback=after_block, min_run_time=cfg.min_run_time)  # type: ignore[arg-type]
    kept = [t for t, ok in zip(m.times, quiet, strict=True) if ok]
    return kept, [t for t, ok in zip(m.times, quiet, strict=True) if not ok]


def _time_jobs(jobs: list[Job], cfg: LatencyConfig, rounds: int, bar: tqdm | None = None) -> list[float]:
    """Milliseconds per call of each job: warm-up, `rounds` interleaved rounds, a low percentile of good blocks."""
    timers = [benchmark.Timer(stmt=stmt, globals=env, num_threads=cfg.threads) for stmt, env in jobs]
    quiet: list[list[float]] = [[] for _ in jobs]
    noisy: list[list[float]] = [[] for _ in jobs]
    with torch.inference_mode():
        for timer in timers:
            timer.timeit(3)  # warm-up: allocator, lazy kernel selection, caches
        for _ in range(rounds):
            for i, timer in enumerate(timers):
                for attempt in range(MAX_ATTEMPTS):
                    if attempt:
                        time.sleep(min(NOISY_PAUSE, 2.5 * cfg.min_run_time))  # let the other process's burst pass
                    kept, others = _round(timer, cfg)
                    quiet[i] += kept
                    noisy[i] += others
                    if len(kept) >= min(MIN_QUIET_BLOCKS, len(kept) + len(others)):
                        break
                if bar is not None:
                    bar.update()
    if any(len(q) < MIN_QUIET_BLOCKS for q in quiet):
        log.warning("latency: other processes kept the CPU busy during some timings; they may be high")
    good = [q if len(q) >= MIN_QUIET_BLOCKS else q + n for q, n in zip(quiet, noisy, strict=True)]
    return [float(np.percentile(g, QUANTILE)) * 1000.0 for g in good]


def _layer_config(emb: Embeddings | None = None) -> NasBertConfig:
    emb = emb or Embeddings(vocab_size=2, max_positions=8, type_vocab_size=1, width=8)
    arch = Architecture(emb, (Block(emb.width, (Op("ffn", inner=emb.width),)),))
    return NasBertConfig(architecture=arch.to_dict())


def _check_positions(emb: Embeddings, cfg: LatencyConfig) -> None:
    if cfg.seq_len > emb.max_positions:
        raise NasBertError(
            f"latency seq_len {cfg.seq_len} exceeds the embeddings' {emb.max_positions} positions; "
            f"use seq_len <= {emb.max_positions}"
        )


def _key_job(spec: Spec, cfg: LatencyConfig) -> Job:
    """The plain student module of one table entry, with inputs shaped as in an extracted model."""
    dev = torch.device(cfg.device)
    B, T = cfg.batch_size, cfg.seq_len
    if spec[0] == "embeddings":
        emb = spec[1]
        _check_positions(emb, cfg)
        module: nn.Module = NasBertEmbeddings(_layer_config(emb)).eval().to(dev)
        return "m(ids)", {"m": module, "ids": torch.randint(0, emb.vocab_size, (B, T), device=dev)}
    if spec[0] == "grow":
        _, i, o = spec
        grow = nn.Linear(i, o - i).eval().to(dev)
        return "resize(x, o, grow.weight, grow.bias)", {"resize": resize, "o": o, "grow": grow,
                                                        "x": torch.randn(B, T, i, device=dev)}
    if spec[0] == "output":
        _, i, o = spec
        x = torch.randn(B, T, i, device=dev)
        if i == o:  # a full-width last block: the reordering into the teacher's dimensions
            return "x.index_select(-1, index)", {"x": x, "index": torch.randperm(o, device=dev)}
        return "m(x)", {"m": nn.Linear(i, o).eval().to(dev), "x": x}
    _, h, op = spec
    layer = NasBertLayer(_layer_config(), h, op.to_dict()).eval().to(dev)
    mask = torch.ones(B, T, dtype=torch.long, device=dev)
    x = torch.randn(B, T, h, device=dev)
    return "layer(x, bias, mask)", {"layer": layer, "x": x, "bias": mask_bias(mask, x.dtype), "mask": mask}


def measure_keys(specs: list[Spec], cfg: LatencyConfig, bar: tqdm | None = None) -> list[float]:
    """Time table entries (interleaved) as the plain student modules they are in an extracted model."""
    return _time_jobs([_key_job(spec, cfg) for spec in specs], cfg, TABLE_ROUNDS, bar)


def _model_job(model: nn.Module, cfg: LatencyConfig, vocab_size: int) -> Job:
    dev = torch.device(cfg.device)
    model.eval().to(dev)
    ids = torch.randint(0, vocab_size, (cfg.batch_size, cfg.seq_len), device=dev)
    return "model(input_ids=ids, attention_mask=mask)", {"model": model, "ids": ids, "mask": torch.ones_like(ids)}


def measure_models(models: list[nn.Module], cfg: LatencyConfig, vocab_size: int, bar: tqdm | None = None
                   ) -> list[float]:
    """End-to-end ms of students, interleaved (ids, all-ones mask); `bar` advances per student per round."""
    return _time_jobs([_model_job(m, cfg, vocab_size) for m in models], cfg, MODEL_ROUNDS, bar)


def measure_model(model: nn.Module, cfg: LatencyConfig, vocab_size: int) -> float:
    """End-to-end milliseconds of one student (input ids and an all-ones attention mask)."""
    return measure_models([model], cfg, vocab_size)[0]


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a new Python process (spawned), its result returned and its exception raised here.

    The latency table, its calibration, the finalists' and the export's timing runs take place there. In
    the process that has run the stages before them (training, search, evaluation), the calibration
    students and the teacher were timed 5-12% slower relative to the students beside them than in a fresh
    process, so the calibration refitted on
    them over-predicted those students by 4-10%; in a fresh process by 0-2.4% (BENCHMARKS.md). What the long
    process carries that does it was not pinned down (not ONNX Runtime's spinning threads, not a large Python
    heap, not a fragmented allocator); a new process carries none of it and costs a few seconds.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def measure_callables(calls: list[Callable[[], Any]], cfg: LatencyConfig) -> list[float]:
    """Milliseconds per call of any callables (an ONNX Runtime session, a teacher), timed exactly like
    the table: interleaved rounds, blocks disturbed by other processes dropped, a low percentile."""
    return _time_jobs([("f()", {"f": f}) for f in calls], cfg, MODEL_ROUNDS)


def build_student(arch: Architecture, reorder: bool = True) -> NasBertModel:
    """A student with random weights: latency does not depend on the values. With `reorder`, its hidden
    dimensions are in an importance order as a searched student's are, so a full-width last block pays
    for the reordering back into the teacher's dimensions (a teacher's own first layers do not)."""
    width = arch.embeddings.width
    order = list(range(width - 1, -1, -1)) if reorder else None
    return NasBertModel(NasBertConfig(architecture=arch.to_dict(), dim_order=order)).eval()


# -- calibration ----------------------------------------------------------------------------------
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
        return self.a * raw + self.c * ops + self.w * resized + self.b

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


def calibration_architectures(space: SearchSpace, emb: Embeddings, cfg: LatencyConfig,
                              table: LatencyModel) -> list[Architecture]:
    """The smallest and the largest student, then `calibration_archs` more (distinct, seeded by cfg.seed):
    half uniformly random, half spread log-evenly over the summed-table latency between the two, so the
    calibration sees the small students that tight budgets select as well as the random ones; then
    `calibration_one_width` students of one width (the teacher's first layers), shared out over the widths and
    spread over each width's range."""
    rng = random.Random(f"nas-bert-latency-calibration:{cfg.seed}")
    lo, hi = smallest(space, emb), largest(space, emb)
    archs = {a.hash(): a for a in (lo, hi)}
    n_random = cfg.calibration_archs - cfg.calibration_archs // 2
    for _ in range(100 * cfg.calibration_archs):  # bounded: a tiny space may have few distinct students
        if len(archs) >= n_random + 2:
            break
        a = sample(space, emb, rng)
        archs.setdefault(a.hash(), a)
    # Candidates for the spread half: each block's depth drawn uniformly (uniform students are nearly all
    # deep), so shallow, fast students are among them.
    pool: dict[str, Architecture] = {}
    for _ in range(40 * cfg.calibration_archs):
        a = sample(space, emb, rng, uniform_depth=True)
        if a.hash() not in archs:
            pool.setdefault(a.hash(), a)
    log_lo, log_hi = float(np.log(table.raw_ms(lo))), float(np.log(table.raw_ms(hi)))
    _spread(archs, pool, table, log_lo, log_hi, cfg.calibration_archs // 2)
    # Students of one width: the teacher's first k layers at each width and feed-forward ratio, the family
    # the seeds and baselines come from. Random students nearly all change width between blocks, and a fit
    # on them alone over-predicted these by 4-11% (BENCHMARKS.md). Shared out over the widths, the widest
    # first (the full-width cuts, which change no width at all), each width's spread over its latency range.
    depths = range(1, space.blocks * space.sublayers_per_block // 2 + 1)
    widths = sorted(space.hidden_sizes, reverse=True)
    for i, w in enumerate(widths):
        family = {a.hash(): a for k in depths for r in space.ffn_ratios
                  if (a := truncated(space, emb, k, w, r)) is not None}
        if family:
            raws = [table.raw_ms(a) for a in family.values()]
            n = cfg.calibration_one_width // len(widths) + (i < cfg.calibration_one_width % len(widths))
            _spread(archs, family, table, float(np.log(min(raws))), float(np.log(max(raws))), n, ends=True)
    return list(archs.values())


def _spread(archs: dict[str, Architecture], pool: dict[str, Architecture], table: LatencyModel, log_lo: float,
            log_hi: float, n: int, ends: bool = False) -> None:
    """Add to `archs` the `n` students of `pool` nearest to log-even steps of raw latency from log_lo to
    log_hi (both ends among the steps when `ends`, else strictly between them)."""
    logs = {h: float(np.log(table.raw_ms(a))) for h, a in sorted(pool.items()) if h not in archs}
    targets = np.linspace(log_lo, log_hi, n) if ends else np.linspace(log_lo, log_hi, n + 2)[1:-1]
    for target in targets:
        if not logs:
            break
        best = min(logs, key=lambda h: abs(logs[h] - target))
        archs[best] = pool[best]
        del logs[best]


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

    def raw_ms(self, arch: Architecture, reorder: bool = True) -> float:
        """Sum of the table entries of the student's modules. A full-width last block costs its reordering into
        the teacher's dimensions only where the student has one (`reorder`: a searched student; the teacher's
        own layers, pruned or cut, keep its order, as `build_student(arch, reorder=False)`)."""
        total, prev = self._ms(embeddings_key(arch.embeddings)), arch.embeddings.width
        for b in arch.blocks:
            total += self.block_raw_ms(b, prev)
            prev = b.hidden
        if not arch.output or (prev == arch.output and not reorder):
            return total
        return total + self._ms(output_key(prev, arch.output))

    def predict(self, arch: Architecture, calibration: Calibration | None = None, reorder: bool = True) -> float:
        """Calibrated end-to-end milliseconds, by the stored calibration or another (one refitted in a later run);
        `reorder` as in `raw_ms`."""
        return (self.calibration if calibration is None else calibration)(self.raw_ms(arch, reorder), operators(arch),
                                                                           resizes(arch))

    def refitted(self, archs: list[Architecture], measured: list[float]) -> Calibration:
        """The calibration's form fitted on students timed end to end now (the table stays as it is)."""
        points = [(self.raw_ms(a), operators(a), resizes(a), ms) for a, ms in zip(archs, measured, strict=True)]
        a, c, w, b = fit_calibration(points)
        return Calibration(a=a, b=b, c=c, w=w, points=points, loo_mape=loo_mape(points))

    def fastest_architecture(self, space: SearchSpace, emb: Embeddings) -> Architecture:
        """The student of `space` with the lowest predicted latency (exact).

        Within a block of width h the cheapest choice is the minimum depth of the cheapest operator;
        the map into block b depends on block b-1's width, so a dynamic programme over widths
        picks the widths. The calibration is increasing in raw (a > 0), in operators (c >= 0) and in resizes
        (w >= 0), and every block here has the minimum depth, so minimising raw + (w / a) x resizes is enough.
        """
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


def latency_report(model: LatencyModel) -> dict[str, Any]:
    """A JSON-able summary: fingerprint, settings, the table, the calibration and its error."""
    cal = model.calibration
    mape = cal.loo_mape if np.isfinite(cal.loo_mape) else None
    return {
        "fingerprint": model.fingerprint,
        "hardware": hardware_name(model.config.device),
        "torch": torch.__version__,
        "config": model.config.model_dump(),
        "table": dict(sorted(model.table.items())),
        "calibration": {"a": cal.a, "b": cal.b, "c": cal.c, "w": cal.w, "points": [list(p) for p in cal.points]},
        "n": len(cal.points),
        "loo_mape_pct": mape,
    }


# -- building and caching -------------------------------------------------------------------------
def _load_table(db: Database, fingerprint: str) -> dict[str, float]:
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
        return _load_table(db, fingerprint)[key]


def calibrate(
    model: LatencyModel, space: SearchSpace, emb: Embeddings, cfg: LatencyConfig, progress: bool = True
) -> Calibration:
    """Measure the calibration students end to end and fit measured ~ a * raw + c * operators + w * resizes + b."""
    archs, students = calibration_students(model, space, emb)
    with tqdm(total=len(archs) * MODEL_ROUNDS, desc="latency calibration", disable=not progress, leave=False) as bar:
        measured = measure_models(students, cfg, emb.vocab_size, bar)
    cal = model.refitted(archs, measured)
    ref = largest(space, emb).hash()
    cal.reference_ms = next(ms for arch, ms in zip(archs, measured, strict=True) if arch.hash() == ref)
    return cal


def calibration_students(model: LatencyModel, space: SearchSpace, emb: Embeddings
                         ) -> tuple[list[Architecture], list[NasBertModel]]:
    """The calibration students and their modules (random weights, one embedding table for all: the same
    module and timing, far less memory). Timed again beside the students a later stage judges, they refit
    the calibration at the host's speed then (`in_run`). All of them: a refit on the two ends and the spread
    half alone (12 of 22) lost the deep students that pin the per-operator cost and was 8-10% off on the
    search's pools where the refit on all 22 was 1.6-2.5% (BENCHMARKS.md)."""
    archs = calibration_architectures(space, emb, model.config, model)
    students = [build_student(a) for a in archs]
    for st in students[1:]:
        st.embeddings = students[0].embeddings
    return archs, students


def in_run(model: LatencyModel, space: SearchSpace, emb: Embeddings, archs: list[Architecture],
           measured: list[float]) -> tuple[float, Calibration]:
    """What the calibration students timed again in a run say: the host's drift (the reference student now /
    when the model was fitted) and the calibration refitted on their times, which predicts the other
    students of that run at the host's speed now. A shared host's speed moves 5-20% between the fit and
    a later stage; the stored model, and so the search, keep the fitted speed."""
    _, ref_ms = model.reference(space, emb)
    return measured[1] / ref_ms, model.refitted(archs, measured)


def calibration_key(fingerprint: str, space: SearchSpace, cfg: LatencyConfig) -> str:
    """The stored calibration's key: the device, the space, and what chose and fitted its students (a
    calibration of another version or other students is never reused)."""
    how = json_hash([CALIBRATION_VERSION, cfg.calibration_archs, cfg.calibration_one_width, cfg.seed], None)
    return f"{fingerprint}:{space.fingerprint()}:{how[:8]}"


def ensure_latency_model(
    db: Database, space: SearchSpace, emb: Embeddings, cfg: LatencyConfig, progress: bool = True
) -> LatencyModel:
    """The device's latency model, measuring only what the database does not hold yet.

    Each timing is stored as soon as it is taken, so an interrupted build resumes where it stopped. What is
    missing is timed in a new process (`latency.fresh_process`), as the finalists' and the export's runs
    are: the table and its calibration are then taken in the conditions of the timings they predict.
    """
    _check_positions(emb, cfg)
    if cfg.fresh_process and _missing(db, space, emb, cfg):
        in_fresh_process(_build_latency_model, db.url, space, emb, cfg, progress)
    return _build(db, space, emb, cfg, progress)


def _missing(db: Database, space: SearchSpace, emb: Embeddings, cfg: LatencyConfig) -> bool:
    """Whether the database lacks a table entry or the calibration of this device, space and embeddings."""
    fingerprint = device_fingerprint(cfg)
    if any(k not in _load_table(db, fingerprint) for k in table_specs(space, emb)):
        return True
    return _stored_calibration(db, calibration_key(fingerprint, space, cfg), emb) is None


def _stored_calibration(db: Database, key: str, emb: Embeddings) -> Calibration | None:
    """The calibration stored under `key` for these embeddings (None if there is none, or one for others)."""
    with db.session() as s:
        row = s.get(LatencyCalibration, key)
        stored = (row.model_json, row.mape) if row is not None else None
    if stored is None or json.loads(stored[0]).get("embeddings") != asdict(emb):
        return None
    return Calibration.from_json(*stored)


def _build_latency_model(url: str, space: SearchSpace, emb: Embeddings, cfg: LatencyConfig, progress: bool) -> None:
    _build(Database(url), space, emb, cfg, progress)  # in the new process: time and store, return nothing


def _build(db: Database, space: SearchSpace, emb: Embeddings, cfg: LatencyConfig, progress: bool) -> LatencyModel:
    fingerprint = device_fingerprint(cfg)
    specs = table_specs(space, emb)
    table = _load_table(db, fingerprint)
    missing = [k for k in specs if k not in table]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads)
        with tqdm(total=len(missing) * TABLE_ROUNDS, desc="latency table", disable=not progress, leave=False) as bar:
            for chunk in (missing[i:i + CHUNK] for i in range(0, len(missing), CHUNK)):
                for key, ms in zip(chunk, measure_keys([specs[k] for k in chunk], cfg, bar), strict=True):
                    table[key] = _store_row(db, fingerprint, key, ms)
        model = LatencyModel(fingerprint, cfg, table)

        cal_key = calibration_key(fingerprint, space, cfg)
        if (stored := _stored_calibration(db, cal_key, emb)) is not None:
            model.calibration = stored
            return model
        cal = calibrate(model, space, emb, cfg, progress)
        mape = cal.loo_mape if np.isfinite(cal.loo_mape) else -1.0
        try:
            with db.session() as s:
                row = s.get(LatencyCalibration, cal_key)
                if row is None:
                    s.add(LatencyCalibration(fingerprint=cal_key, model_json=cal.to_json(emb), mape=mape,
                                             n=len(cal.points)))
                elif json.loads(row.model_json).get("embeddings") != asdict(emb):  # made for other embeddings
                    row.model_json, row.mape, row.n = cal.to_json(emb), mape, len(cal.points)
        except IntegrityError:
            pass  # a concurrent worker (another machine) stored its calibration first
        # every worker predicts with the one stored calibration, so their searches agree on their inputs
        with db.session() as s:
            row = s.get(LatencyCalibration, cal_key)
            model.calibration = Calibration.from_json(row.model_json, row.mape) if row is not None else cal
        return model
    finally:
        torch.set_num_threads(threads)
