"""The timing harness: interleaved blocked_autorange rounds that drop the blocks another process slowed.

Table entries (each the plain student module it is in an extracted model), whole students and any
callable (an ONNX Runtime session, a teacher) are all timed this way; `in_fresh_process` runs a timing
run in a new process.
"""

from __future__ import annotations

import logging
import os
import time
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import benchmark
from tqdm.auto import tqdm

from nas_bert.errors import NasBertError
from nas_bert.latency.runtime import Job, runtime_job
from nas_bert.lifetime import die_with_parent
from nas_bert.model import NasBertConfig, NasBertEmbeddings, NasBertLayer, NasBertModel, mask_bias, resize
from nas_bert.space import Architecture, Block, Embeddings, Op
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
QUIET_DELAY, MIN_QUIET_BLOCKS, NOISY_PAUSE, MAX_ATTEMPTS = 0.02, 3, 0.5, 3
REFERENCE_EVERY = 6  # with a reference job: timed again after every this many others (and at each round's ends)

log = logging.getLogger(__name__)

# What a table key times: ("op", hidden, Op), ("grow" | "output", in, out) or ("embeddings", Embeddings).
Spec = tuple[Any, ...]


def run_delay_ns() -> int | None:
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
    last = (run_delay_ns(), time.perf_counter())

    def after_block(_number: int, _seconds: float) -> None:
        nonlocal last
        now = (run_delay_ns(), time.perf_counter())
        waited = None if now[0] is None or last[0] is None else now[0] - last[0]
        quiet.append(waited is None or waited <= QUIET_DELAY * (now[1] - last[1]) * 1e9)
        last = now

    m = timer.blocked_autorange(callback=after_block, min_run_time=cfg.min_run_time)  # type: ignore[arg-type]
    kept = [t for t, ok in zip(m.times, quiet, strict=True) if ok]
    return kept, [t for t, ok in zip(m.times, quiet, strict=True) if not ok]


def _call(timer: benchmark.Timer, cfg: LatencyConfig) -> tuple[list[float], list[float]]:
    """One job's turn in a round: a blocked_autorange round, retried after a pause while other processes keep too
    few of its blocks good; its good blocks and the others."""
    quiet: list[float] = []
    noisy: list[float] = []
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            time.sleep(min(NOISY_PAUSE, 2.5 * cfg.min_run_time))  # let the other process's burst pass
        kept, others = _round(timer, cfg)
        quiet += kept
        noisy += others
        if len(kept) >= min(MIN_QUIET_BLOCKS, len(kept) + len(others)):
            break
    return quiet, noisy


def _low(quiet: list[float], noisy: list[float]) -> float:
    """Milliseconds: the low percentile of the good blocks (of all blocks where too few were good)."""
    return float(np.percentile(quiet if len(quiet) >= MIN_QUIET_BLOCKS else quiet + noisy, QUANTILE)) * 1000.0


def _time_jobs(jobs: list[Job], cfg: LatencyConfig, rounds: int, bar: tqdm | None = None,
               reference: int | None = None) -> list[float]:
    """Milliseconds per call of each job: warm-up, `rounds` interleaved rounds, a low percentile of good blocks.

    With `reference` (a job's index), the host's speed may move during the run, as a shared VM's does by 20-50%
    for minutes (BENCHMARKS.md): the reference is timed at the start of every round and after every
    REFERENCE_EVERY other jobs, each other job's time in a round is divided by the reference's just before and
    after it, and its result is the median of those ratios times the reference's own time. Jobs timed while the
    host was slow are then not slower than the rest."""
    # torch's default timer synchronises CUDA wherever a GPU is visible: a CPU target's timing neither needs that nor
    # should start a CUDA context
    clock = {"timer": timeit.default_timer} if cfg.device == "cpu" else {}
    timers = [benchmark.Timer(stmt=stmt, globals=env, num_threads=cfg.threads, **clock) for stmt, env in jobs]
    quiet: list[list[float]] = [[] for _ in jobs]
    noisy: list[list[float]] = [[] for _ in jobs]
    ratios: list[list[float]] = [[] for _ in jobs]
    others = [i for i in range(len(jobs)) if i != reference]
    with torch.inference_mode():
        for timer in timers:
            timer.timeit(3)  # warm-up: allocator, lazy kernel selection, caches
        for _ in range(rounds):
            turn: dict[int, float] = {}  # this round's time of each job
            refs: list[tuple[int, float]] = []  # (other jobs timed before it, its time) of each reference timing
            for n, i in enumerate(others):
                if reference is not None and n % REFERENCE_EVERY == 0:
                    refs.append((n, _timed_turn(timers[reference], cfg, quiet[reference], noisy[reference])))
                turn[i] = _timed_turn(timers[i], cfg, quiet[i], noisy[i])
                if bar is not None:
                    bar.update()
            if reference is None:
                continue
            refs.append((len(others), _timed_turn(timers[reference], cfg, quiet[reference], noisy[reference])))
            if bar is not None:
                bar.update()
            for n, i in enumerate(others):
                before = max(r for r in refs if r[0] <= n)[1]
                after = min(r for r in refs if r[0] > n)[1]
                ratios[i].append(turn[i] / (0.5 * (before + after)))
    if any(len(q) < MIN_QUIET_BLOCKS for q in quiet):
        log.warning("latency: other processes kept the CPU busy during some timings; they may be high")
    low = [_low(q, n) for q, n in zip(quiet, noisy, strict=True)]
    if reference is None:
        return low
    return [low[i] if i == reference else float(np.median(ratios[i])) * low[reference] for i in range(len(jobs))]


def _timed_turn(timer: benchmark.Timer, cfg: LatencyConfig, quiet: list[float], noisy: list[float]) -> float:
    """One turn of a job (`_call`), its blocks added to the job's; returns the turn's own low percentile."""
    kept, others = _call(timer, cfg)
    quiet += kept
    noisy += others
    return _low(kept, others)


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


class _Resize(nn.Module):
    """A map into a wider block as an extracted model runs it (`resize` with a learned extension)."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.o, self.grow = o, nn.Linear(i, o - i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, self.o, self.grow.weight, self.grow.bias)


class _Reorder(nn.Module):
    """A full-width last block's reordering into the teacher's dimensions."""

    def __init__(self, o: int) -> None:
        super().__init__()
        self.register_buffer("index", torch.randperm(o))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.index)


def _key_job(spec: Spec, cfg: LatencyConfig) -> Job:
    """The plain student module of one table entry, with inputs shaped as in an extracted model, on the study's
    runtime (`runtime_job`; under PyTorch the statement the table has always timed)."""
    dev = torch.device(cfg.device)
    B, T = cfg.batch_size, cfg.seq_len
    if spec[0] == "embeddings":
        emb = spec[1]
        _check_positions(emb, cfg)
        module: nn.Module = NasBertEmbeddings(_layer_config(emb)).eval().to(dev)
        ids = torch.randint(0, emb.vocab_size, (B, T), device=dev)
        return runtime_job(module, (ids,), cfg, ("m(ids)", {"m": module, "ids": ids}))
    if spec[0] == "grow":
        _, i, o = spec
        x = torch.randn(B, T, i, device=dev)
        g = _Resize(i, o).eval().to(dev)
        return runtime_job(g, (x,), cfg, ("resize(x, o, grow.weight, grow.bias)",
                                          {"resize": resize, "o": o, "grow": g.grow, "x": x}))
    if spec[0] == "output":
        _, i, o = spec
        x = torch.randn(B, T, i, device=dev)
        if i == o:  # a full-width last block: the reordering into the teacher's dimensions
            r = _Reorder(o).to(dev)
            return runtime_job(r, (x,), cfg, ("x.index_select(-1, index)", {"x": x, "index": r.index}))
        m = nn.Linear(i, o).eval().to(dev)
        return runtime_job(m, (x,), cfg, ("m(x)", {"m": m, "x": x}))
    _, h, op = spec
    layer = NasBertLayer(_layer_config(), h, op.to_dict()).eval().to(dev)
    mask = torch.ones(B, T, dtype=torch.long, device=dev)
    x = torch.randn(B, T, h, device=dev)
    bias = mask_bias(mask, x.dtype)
    return runtime_job(layer, (x, bias, mask), cfg, ("layer(x, bias, mask)",
                                                     {"layer": layer, "x": x, "bias": bias, "mask": mask}))


def measure_keys(specs: list[Spec], cfg: LatencyConfig, bar: tqdm | None = None, reference: Spec | None = None,
                 reference_ms: float | None = None) -> tuple[list[float], float | None]:
    """Time table entries (interleaved) as the plain student modules they are in an extracted model. With a
    `reference` entry, each relative to it timed beside it (`_time_jobs`) and scaled to `reference_ms` (its
    time in the table's first chunk, so that every chunk is at one speed; None: its time now). Returns the times
    and the reference's time now (None without one)."""
    jobs = [_key_job(spec, cfg) for spec in specs]
    if reference is None:
        return _time_jobs(jobs, cfg, TABLE_ROUNDS, bar), None
    *times, now = _time_jobs([*jobs, _key_job(reference, cfg)], cfg, TABLE_ROUNDS, bar, reference=len(jobs))
    return [t * (reference_ms or now) / now for t in times], now


def _model_job(model: nn.Module, cfg: LatencyConfig, vocab_size: int) -> Job:
    dev = torch.device(cfg.device)
    model.eval().to(dev)
    ids = torch.randint(0, vocab_size, (cfg.batch_size, cfg.seq_len), device=dev)
    mask = torch.ones_like(ids)
    return runtime_job(model, (ids, mask), cfg,
                       ("model(input_ids=ids, attention_mask=mask)", {"model": model, "ids": ids, "mask": mask}))


def measure_models(models: list[nn.Module], cfg: LatencyConfig, vocab_size: int, bar: tqdm | None = None,
                   reference: int | None = None) -> list[float]:
    """End-to-end ms of students, interleaved (ids, all-ones mask); `bar` advances per student per round. With
    `reference` (an index), each relative to that model timed beside it (`_time_jobs`)."""
    return _time_jobs([_model_job(m, cfg, vocab_size) for m in models], cfg, MODEL_ROUNDS, bar, reference)


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
    from concurrent.futures.process import BrokenProcessPool

    for attempt in range(2):  # a timing process killed from outside (kill -9, the OOM killer) is started once more
        # the new process dies with this one (a stopped job's command killed mid-timing leaves no timer running)
        try:
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            if attempt:
                raise NasBertError("the timing process was killed twice (by a signal from outside, or out of "
                                   "memory); run the command again: timings taken so far are kept") from None
            log.warning("latency: the timing process was killed; timing again in a new one")
    raise AssertionError("unreachable")


def measure_callables(calls: list[Callable[[], Any]], cfg: LatencyConfig, reference: int | None = None) -> list[float]:
    """Milliseconds per call of any callables (an ONNX Runtime session, a teacher), timed exactly like
    the table: interleaved rounds, blocks disturbed by other processes dropped, a low percentile; with
    `reference` (an index), each relative to that callable timed beside it (`_time_jobs`)."""
    return _time_jobs([("f()", {"f": f}) for f in calls], cfg, MODEL_ROUNDS, reference=reference)


def build_student(arch: Architecture, reorder: bool | None = None) -> NasBertModel:
    """A student with random weights: latency does not depend on the values. With `reorder`, its hidden
    dimensions are in an importance order as a searched student's are, so a full-width last block pays
    for the reordering back into the teacher's dimensions (a teacher's own first layers do not)."""
    width = arch.embeddings.width
    order = list(range(width - 1, -1, -1)) if (arch.reorders() if reorder is None else reorder) else None
    return NasBertModel(NasBertConfig(architecture=arch.to_dict(), dim_order=order)).eval()
