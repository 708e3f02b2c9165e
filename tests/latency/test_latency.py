"""The latency model: table coverage, resumable builds, calibration reuse, fingerprints, lower bound."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sqlalchemy import func, select

from nas_bert.errors import NasBertError
from nas_bert.latency import (
    Calibration,
    LatencyModel,
    calibration_architectures,
    calibration_key,
    calibration_students,
    device_fingerprint,
    embeddings_key,
    ensure_latency_model,
    fit_calibration,
    fit_linear,
    grow_key,
    harness,
    in_run,
    latency_report,
    loo_mape,
    op_key,
    output_key,
    reference_time,
    resizes,
    table_specs,
    timed_beside,
)
from nas_bert.latency import build as latency_build
from nas_bert.space import (
    IDENTITY,
    Architecture,
    Block,
    Embeddings,
    SearchSpace,
    largest,
    load_space,
    op_choices,
    sample,
    smallest,
    truncated,
)
from nas_bert.store import Database, LatencyCalibration, LatencyRow
from nas_bert.study import LatencyConfig

EMB = Embeddings(vocab_size=1000, max_positions=64, type_vocab_size=2, width=32)
# timed in this process, where the tests count and stop the timings (test_a_new_process_builds_the_model: the other way)
CFG = LatencyConfig(threads=1, min_run_time=0.01, seq_len=32, calibration_archs=4, calibration_one_width=0,
                    fresh_process=False)
MODEL_STMT = "model("  # how calibration timings (whole students) start


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space("tiny")


@pytest.fixture(scope="module", autouse=True)
def _no_retries() -> Iterator[None]:
    # Behaviour, not timing quality: never pause to wait out other processes' bursts.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "MAX_ATTEMPTS", 1)
        mp.setattr(harness, "NOISY_PAUSE", 0.0)
        yield


class Built:
    """One build shared by the module: its database, model, the timings it ran and the threads after."""

    def __init__(self, db: Database, model: LatencyModel, stmts: list[str], threads_before: int, threads_after: int):
        self.db, self.model, self.stmts = db, model, stmts
        self.threads_before, self.threads_after = threads_before, threads_after


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, space: SearchSpace) -> Iterator[Built]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('latency')}/lat.db")
    stmts: list[str] = []
    real = harness._time_jobs

    def counting(jobs: list[harness.Job], cfg: LatencyConfig, rounds: int, bar: Any = None,
                 reference: int | None = None) -> list[float]:
        stmts.extend(stmt for stmt, _ in jobs)
        return real(jobs, cfg, rounds, bar, reference)

    threads = torch.get_num_threads()
    torch.set_num_threads(CFG.threads + 1)  # so that restoring it is observable
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(harness, "_time_jobs", counting)
            model = ensure_latency_model(db, space, EMB, CFG, progress=False)
        yield Built(db, model, stmts, CFG.threads + 1, torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(build: Built) -> LatencyModel:
    return build.model


@pytest.fixture()
def timed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statement of every timing actually run (table entries and whole students)."""
    stmts: list[str] = []
    real = harness._time_jobs

    def counting(jobs: list[harness.Job], cfg: LatencyConfig, rounds: int, bar: Any = None,
                 reference: int | None = None) -> list[float]:
        stmts.extend(stmt for stmt, _ in jobs)
        return real(jobs, cfg, rounds, bar, reference)

    monkeypatch.setattr(harness, "_time_jobs", counting)
    return stmts


def expected_keys(space: SearchSpace) -> set[str]:
    keys = {embeddings_key(EMB)}
    keys |= {op_key(op, h) for h in space.hidden_sizes for op in op_choices(space, h)}
    keys |= {grow_key(i, o) for i in space.hidden_sizes for o in space.hidden_sizes if o > i}
    keys |= {output_key(h, EMB.width) for h in space.hidden_sizes}
    return keys


def row_count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(LatencyRow))


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        LatencyConfig(threads=0)
    with pytest.raises(ValidationError):
        LatencyConfig(calibration_archs=2)
    with pytest.raises(ValidationError):
        LatencyConfig(thread=2)  # type: ignore[call-arg]


def test_table_has_every_key(built: LatencyModel, space: SearchSpace) -> None:
    keys = expected_keys(space)
    # 2 widths x 4 operators, 1 map into a wider block (16 -> 32), 2 output maps, the embeddings;
    # equal widths and slices into a narrower block cost nothing and are not timed
    assert len(keys) == 12
    assert keys <= set(built.table)
    assert all(built.table[k] > 0 for k in keys)


def test_second_build_measures_nothing(build: Built, space: SearchSpace, timed: list[str]) -> None:
    first = build.model
    assert sum(not s.startswith(MODEL_STMT) for s in build.stmts) == 12 + 1  # and the chunk's reference entry
    assert sum(s.startswith(MODEL_STMT) for s in build.stmts) == len(first.calibration.points)
    assert row_count(build.db) == 12 + 1  # the reference's time in the first chunk, the scale of every chunk
    second = ensure_latency_model(build.db, space, EMB, CFG, progress=False)
    assert timed == []  # neither the table nor the calibration is measured again
    assert second.table == first.table
    assert second.calibration == first.calibration
    assert row_count(build.db) == 12 + 1


def test_interrupted_build_keeps_what_it_measured(tmp_path: Path, space: SearchSpace, timed: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(f"sqlite:///{tmp_path}/lat.db")
    counting = harness._time_jobs
    calls = 0

    def dies_on_second_chunk(jobs: list[harness.Job], cfg: LatencyConfig, rounds: int, bar: Any = None,
                             reference: int | None = None) -> list[float]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return counting(jobs, cfg, rounds, bar, reference)

    monkeypatch.setattr(latency_build, "CHUNK", 5)
    monkeypatch.setattr(harness, "_time_jobs", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        ensure_latency_model(db, space, EMB, CFG, progress=False)
    assert row_count(db) == 5 + 1  # the first chunk was stored as soon as it was timed, with its reference's time
    timed.clear()
    monkeypatch.setattr(harness, "_time_jobs", counting)
    model = ensure_latency_model(db, space, EMB, CFG, progress=False)
    assert sum(not s.startswith(MODEL_STMT) for s in timed) == 12 - 5 + 2  # and each chunk's reference
    assert expected_keys(space) <= set(model.table)


def test_calibration_is_stored(build: Built, space: SearchSpace) -> None:
    model = build.model
    with build.db.session() as s:
        row = s.get(LatencyCalibration, calibration_key(model.fingerprint, space, CFG))
        assert row is not None
        stored = json.loads(row.model_json)
        n = row.n
    cal = model.calibration
    assert cal.a > 0
    assert (stored["a"], stored["b"], stored["c"], stored["w"]) == (cal.a, cal.b, cal.c, cal.w)
    assert cal.c >= -cal.a * model.cheapest_operator_ms(space) and cal.w >= 0  # no operator costs less than none
    raw, ops, rs, ms = cal.points[1]  # the largest student, the reference: the fit passes through it as timed
    assert cal(raw, ops, rs) == pytest.approx(ms) and cal.reference_ms == ms
    assert n == len(stored["points"]) == len(cal.points) == CFG.calibration_archs + 2
    assert all(raw > 0 and ops >= 0 and rs >= 0 and ms > 0 for raw, ops, rs, ms in cal.points)


def test_predictions(built: LatencyModel, space: SearchSpace) -> None:
    rng = random.Random(1)
    for _ in range(20):
        arch = sample(space, EMB, rng)
        assert built.predict(arch) > 0
        assert built.raw_ms(arch) > 0
    assert built.predict(largest(space, EMB)) > built.predict(smallest(space, EMB))


def test_predictions_match_measurements_of_students_not_calibrated_on(
        space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Predicted against measured end to end, on random students the calibration never saw.

    The tolerance is this machine's noise right now, measured, never a wall-clock bound: two latency models
    built independently, and the held-out students measured twice. The prediction may be off by 3x the
    largest relative spread of either kind, and by no more than 25% on a quiet machine."""
    monkeypatch.setattr(harness, "MAX_ATTEMPTS", 3)  # timing quality matters here: disturbed rounds are retried
    monkeypatch.setattr(harness, "NOISY_PAUSE", 0.5)
    cfg = CFG.model_copy(update={"min_run_time": 0.02, "calibration_archs": 3})
    models = [ensure_latency_model(Database(f"sqlite:///{tmp_path}/lat{i}.db"), space, EMB, cfg, progress=False)
              for i in range(2)]
    seen = {a.hash() for a in calibration_architectures(space, EMB, cfg, models[0])}
    rng = random.Random(11)
    held_out: dict[str, Architecture] = {}
    while len(held_out) < 4:
        arch = sample(space, EMB, rng)
        if arch.hash() not in seen:
            held_out.setdefault(arch.hash(), arch)
    archs = list(held_out.values())
    students = [harness.build_student(a) for a in archs]
    runs = [harness.measure_models(students, cfg, EMB.vocab_size) for _ in range(2)]
    measured = [min(ms) for ms in zip(*runs, strict=True)]  # other processes only ever slow a timing down

    def spread(x: float, y: float) -> float:
        return abs(x - y) / min(x, y)

    noise = max([spread(*ms) for ms in zip(*runs, strict=True)]
                + [spread(models[0].predict(a), models[1].predict(a)) for a in archs])
    tolerance = max(0.25, 3 * noise)
    for model in models:
        errors = [abs(model.predict(a) - ms) / ms for a, ms in zip(archs, measured, strict=True)]
        assert max(errors) <= tolerance, f"relative errors {errors}, machine noise {noise:.1%}"


@pytest.mark.parametrize("resize_ms", [None, 5.0])
def test_fastest_possible_is_an_attained_lower_bound(built: LatencyModel, space: SearchSpace,
                                                      resize_ms: float | None) -> None:
    # as fitted, and with a width change dearer than any operator (the fastest student keeps one width)
    model = built if resize_ms is None else LatencyModel(
        built.fingerprint, built.config, built.table, Calibration(a=1.0, c=0.02, w=resize_ms, b=0.1))
    best = model.fastest_possible(space, EMB)
    arch = model.fastest_architecture(space, EMB)
    arch.validate(space)
    assert model.predict(arch) == pytest.approx(best)
    rng = random.Random(2)
    assert all(best <= model.predict(sample(space, EMB, rng)) + 1e-9 for _ in range(50))
    # Brute force over blocks of one repeated operator (a cheapest block is always one of them).
    blocks = [
        Block(h, (op,) * d + (IDENTITY,) * (space.sublayers_per_block - d))
        for h in space.hidden_sizes for op in op_choices(space, h) for d in space.depths
    ]
    brute = min(model.predict(Architecture.build(EMB, combo)) for combo in itertools.product(blocks, repeat=space.blocks))
    assert best == pytest.approx(brute)
    if resize_ms is not None:
        assert resizes(arch) <= 1  # at most the step from the embeddings' width into the first block


def test_fingerprint_is_stable_and_follows_settings() -> None:
    fp = device_fingerprint(CFG)
    assert fp == device_fingerprint(LatencyConfig(**CFG.model_dump()))
    assert fp != device_fingerprint(CFG.model_copy(update={"threads": 2}))
    assert fp != device_fingerprint(CFG.model_copy(update={"seq_len": 64}))
    assert fp == device_fingerprint(CFG.model_copy(update={"min_run_time": 0.5}))  # how long, not what


def test_threads_are_restored(build: Built) -> None:
    assert build.threads_after == build.threads_before


def test_report_is_json(built: LatencyModel) -> None:
    report = json.loads(latency_report(built).model_dump_json())
    assert report["fingerprint"] == built.fingerprint
    assert list(report["table"]) == sorted(built.table)
    assert report["n"] == len(built.calibration.points)
    assert report["calibration"]["a"] == built.calibration.a
    assert report["loo_mape_pct"] is None or report["loo_mape_pct"] >= 0
    assert report["config"]["seq_len"] == CFG.seq_len


def test_unknown_operator_is_a_clear_error(built: LatencyModel) -> None:
    other = load_space("nas_bert")
    with pytest.raises(NasBertError, match="no timing"):
        built.predict(largest(other, Embeddings(30522, 512, 2, 384)))


def test_sequence_longer_than_positions_is_rejected(tmp_path: Path, space: SearchSpace) -> None:
    with pytest.raises(NasBertError, match="seq_len"):
        ensure_latency_model(Database(f"sqlite:///{tmp_path}/lat.db"), space, EMB,
                             CFG.model_copy(update={"seq_len": 128}), progress=False)


def test_fit_recovers_a_line() -> None:
    points = [(r, 1.5 * r + 0.3) for r in (1.0, 2.0, 4.0, 7.0)]
    a, b = fit_linear(points)
    assert (a, b) == (pytest.approx(1.5), pytest.approx(0.3))


def test_fit_recovers_a_per_operator_cost() -> None:
    # measured = 0.8 x summed table + 0.09 ms per operator + 0.1 ms: the fit finds all three, and a
    # calibration without the per-operator term could not (two students of equal raw, different depth)
    points = [(raw, ops, rs, 0.8 * raw + 0.09 * ops + 0.1)
              for raw, ops, rs in ((0.2, 0, 1), (2.0, 12, 0), (2.0, 4, 2), (5.0, 9, 1), (9.0, 12, 3), (14.0, 6, 0))]
    a, c, w, b = fit_calibration(points)
    assert (a, c, w, b) == (pytest.approx(0.8), pytest.approx(0.09), pytest.approx(0.0, abs=1e-9), pytest.approx(0.1))
    assert loo_mape(points) == pytest.approx(0.0, abs=1e-9)
    a2, b2 = fit_linear([(r, m) for r, _, _, m in points])
    assert max(abs(a2 * r + b2 - m) / m for r, _, _, m in points) > 0.05


def test_fit_recovers_a_per_resize_cost() -> None:
    # two students of equal raw time and depth, one of a single width, one changing width at every block:
    # only the per-resize term tells them apart
    truth = (1.05, 0.03, 0.04, 0.09)  # a, c, w, b
    shapes = ((0.2, 0, 1), (2.3, 2, 0), (2.3, 2, 3), (3.7, 12, 1), (5.0, 9, 2), (7.4, 12, 0), (9.0, 10, 3))
    points = [(raw, ops, rs, truth[0] * raw + truth[1] * ops + truth[2] * rs + truth[3]) for raw, ops, rs in shapes]
    assert fit_calibration(points) == tuple(pytest.approx(x) for x in truth)
    a, c, _w, b = fit_calibration([(raw, ops, 0, m) for raw, ops, _, m in points])  # the old form, no resizes
    assert max(abs(a * raw + c * ops + b - m) / m for raw, ops, _, m in points) > 0.02


def test_a_negative_intercept_never_predicts_a_near_empty_student_below_its_modules() -> None:
    # whole students fitted with a negative intercept: the embeddings alone (no operator) would come out below zero
    points = [(raw, ops, 0, 0.9 * raw + 0.4 * ops - 0.8) for raw, ops in ((2.0, 2), (4.0, 4), (6.0, 7), (9.0, 12), (12.0, 9))]
    a, c, w, b = fit_calibration(points)
    assert b == pytest.approx(-0.8) and c == pytest.approx(0.4)
    cal = Calibration(a=a, b=b, c=c, w=w)
    assert a * 0.25 + b < 0 and cal(0.25, 0, 0) == pytest.approx(a * 0.25)  # floored at its scaled module time
    assert cal(6.0, 7, 0) == pytest.approx(0.9 * 6.0 + 0.4 * 7 - 0.8)  # the fitted students as fitted


def test_fit_never_makes_an_operator_cheaper_than_none() -> None:
    # points where a per-operator or per-resize cost would come out negative: that term is left out
    points = [(raw, ops, rs, 1.2 * raw - 0.05 * ops + 0.6)
              for raw, ops, rs in ((1, 2, 0), (3, 9, 1), (5, 1, 0), (7, 12, 2), (9, 4, 1))]
    a, c, w, _b = fit_calibration(points)
    assert c == 0 and w >= 0 and a > 0
    points = [(raw, ops, rs, 1.2 * raw - 0.1 * rs + 0.6)
              for raw, ops, rs in ((1, 2, 0), (3, 9, 1), (5, 1, 0), (7, 12, 2), (9, 4, 1), (4, 6, 3))]
    a, c, w, _b = fit_calibration(points)
    assert w == 0 and c >= 0 and a > 0
    flat = [(raw, ops, 0, m) for raw, ops, _, m in points[:4]]  # too few points and no spread: the plain line
    assert fit_calibration(flat)[1:3] == (0.0, 0.0)


def test_an_operator_may_cost_less_inside_a_student_than_alone_but_never_less_than_none() -> None:
    # a table whose operators were each timed slower alone than they run inside a student: a negative cost per
    # operator, found where it stays above minus the cheapest operator's scaled time, held at that bound below it
    shapes = ((0.3, 2, 1), (1.6, 12, 1), (2.1, 2, 1), (3.0, 12, 1), (4.5, 6, 0), (8.8, 8, 0), (15.6, 12, 0))
    points = [(raw, ops, rs, 1.15 * raw - 0.06 * ops + 0.02) for raw, ops, rs in shapes]
    assert fit_calibration(points, cheapest_op_ms=0.09) == (pytest.approx(1.15), pytest.approx(-0.06),
                                                            pytest.approx(0.0, abs=1e-9), pytest.approx(0.02))
    assert fit_calibration(points)[1] == 0.0  # without the table's cheapest operator: c >= 0, as before
    steep = [(raw, ops, rs, 1.15 * raw - 0.2 * ops + 0.5) for raw, ops, rs in shapes]
    a, c, _w, _b = fit_calibration(steep, cheapest_op_ms=0.09)
    assert c == pytest.approx(-a * 0.09) and a * 0.09 + c >= -1e-12  # the cheapest operator still costs >= 0


def test_a_fit_through_the_teacher_sized_student_predicts_it_as_timed() -> None:
    # noisy small students pull a fit on the relative error under the large ones; anchored, the fit passes through
    # the reference (index 1, as the calibration students are ordered) and stays near the large students
    rng = np.random.default_rng(0)
    raws = [0.3, 15.6, *np.geomspace(0.5, 12.0, 20)]
    points = [(r, 12, 0, r * (1.12 if r > 5 else 0.95 + 0.1 * rng.random())) for r in raws]
    free, fixed = fit_calibration(points), fit_calibration(points, anchor=1)
    assert Calibration(*_abcw(free), points=points)(15.6, 12, 0) < 0.95 * points[1][3]
    assert Calibration(*_abcw(fixed), points=points)(15.6, 12, 0) == pytest.approx(points[1][3])
    assert loo_mape(points, anchor=1) < loo_mape(points) + 5  # the anchor itself is not left out
    # where fitted the line stands, negative intercept and all; a near-empty student is floored above zero, at the
    # line's least ratio to a x raw over the fitted students (0.9 / 1.1 here)
    cal = Calibration(a=1.1, c=0.0, w=0.0, b=-0.2, points=[(1.0, 2, 0, 0.9), (9.0, 12, 0, 9.7)])
    assert cal(1.0, 2, 0) == pytest.approx(0.9) and cal(5.0, 6, 0) == pytest.approx(1.1 * 5.0 - 0.2)
    assert cal(0.1, 0, 0) == pytest.approx(1.1 * 0.1 * 0.9 / 1.1)


def test_a_student_one_operator_larger_is_never_predicted_faster() -> None:
    # a negative intercept and a negative cost per operator (at its bound for a 0.1 ms cheapest operator): adding
    # an operator of at least that time never lowers the prediction, on either side of the smallest fitted student
    for c in (0.4, -0.11):
        cal = Calibration(a=1.1, c=c, w=0.0, b=-0.15, points=[(1.0, 2, 0, 1.0), (6.0, 8, 0, 6.5), (15.0, 12, 0, 16.0)])
        for raw in np.linspace(0.05, 3.0, 60):
            for ops in range(6):
                for t in (0.1, 0.3, 1.0):
                    assert cal(raw + t, ops + 1, 0) >= cal(raw, ops, 0) - 1e-12


def _abcw(fit: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    a, c, w, b = fit
    return a, b, c, w  # Calibration's field order


def test_calibration_students_cover_the_latency_range(built: LatencyModel, space: SearchSpace) -> None:
    cfg = CFG.model_copy(update={"calibration_archs": 10})
    archs = calibration_architectures(space, EMB, cfg, built)
    assert len({a.hash() for a in archs}) == len(archs) == 12
    assert archs[:2] == [smallest(space, EMB), largest(space, EMB)]
    raws = sorted(built.raw_ms(a) for a in archs)
    # the 5 spread students fill the log range between the extremes: no gap wider than 2.5 even steps
    logs = [math.log(r) for r in raws]
    step = (logs[-1] - logs[0]) / 6
    assert max(b - a for a, b in itertools.pairwise(logs)) <= 2.5 * step
    assert archs == calibration_architectures(space, EMB, cfg, built)  # deterministic


def test_calibration_includes_students_of_one_width(built: LatencyModel, space: SearchSpace) -> None:
    """After the random and spread students: the teacher's first layers at each width, shared out over the
    widths, each width's shallowest and deepest (log-even steps with both ends) among those not chosen yet."""
    base = CFG.model_copy(update={"calibration_archs": 6})
    cfg = base.model_copy(update={"calibration_one_width": 4})
    plain = calibration_architectures(space, EMB, base, built)
    archs = calibration_architectures(space, EMB, cfg, built)
    assert archs[:len(plain)] == plain and len({a.hash() for a in archs}) == len(archs) == len(plain) + 4
    extra = archs[len(plain):]
    assert [a.blocks[0].hidden for a in extra] == [32, 32, 16, 16]  # the widest first
    assert all(len({b.hidden for b in a.blocks}) == 1 and resizes(a) <= 1 for a in extra)
    seen = {a.hash() for a in plain}
    for w, pair in ((32, extra[:2]), (16, extra[2:])):
        family = [a for k in range(1, 5) if (a := truncated(space, EMB, k, w)) is not None and a.hash() not in seen]
        raws = sorted(built.raw_ms(a) for a in family)
        assert [built.raw_ms(a) for a in pair] == [raws[0], raws[-1]]
    # a calibration of other students is another calibration
    assert calibration_key("fp", space, cfg) != calibration_key("fp", space, base)


def test_a_calibration_of_other_students_is_not_reused(build: Built, space: SearchSpace, timed: list[str]) -> None:
    timed.clear()
    other = CFG.model_copy(update={"calibration_archs": 5})
    model = ensure_latency_model(build.db, space, EMB, other, progress=False)
    assert sum(s.startswith(MODEL_STMT) for s in timed) == 5 + 2  # calibrated anew; the table is reused
    assert sum(not s.startswith(MODEL_STMT) for s in timed) == 0
    assert len(model.calibration.points) == 7


def test_fit_weighs_relative_error() -> None:
    # an empty student (embeddings and output only) beside teacher-sized ones: an unweighted fit would
    # predict it at twice its time; the fit on relative error keeps every student within a few per cent
    points = [(0.13, 0.17), (2.5, 2.8), (5.2, 6.6), (9.2, 11.3), (17.2, 19.7)]
    a, b = fit_linear(points)
    assert all(abs(a * r + b - m) / m < 0.12 for r, m in points)
    assert abs(a * 0.13 + b - 0.17) / 0.17 < 0.12


def test_disturbed_rounds_are_retried_then_used(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    rounds: list[int] = []
    real = harness._round
    monkeypatch.setattr(harness, "_round", lambda timer, cfg: rounds.append(1) or real(timer, cfg))
    monkeypatch.setattr(harness, "MAX_ATTEMPTS", 2)
    monkeypatch.setattr(harness, "run_delay_ns", lambda: 0)  # nobody else ran: no retries
    (ms,) = harness._time_jobs([("sum(range(100))", {})], CFG, rounds=2)
    assert ms > 0 and len(rounds) == 2
    waits = itertools.count(step=10**9)  # every block waited a second for a CPU: each round retried once
    monkeypatch.setattr(harness, "run_delay_ns", lambda: next(waits))
    rounds.clear()
    with caplog.at_level("WARNING", logger="nas_bert.latency.harness"):
        (ms,) = harness._time_jobs([("sum(range(100))", {})], CFG, rounds=2)
    assert ms > 0 and len(rounds) == 4
    assert "busy" in caplog.text


def test_a_host_that_slows_down_mid_run_does_not_make_the_later_jobs_dearer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs of 1-8 ms and a reference of 10 ms on a host 1.5x slower from the sixth turn on, for good (a shared VM
    does this for minutes): timed plainly, the jobs first timed after the slowdown come out 1.5x dear, since their
    low percentile never saw the fast host; timed against the reference beside them, each keeps its true ratio to
    the reference."""
    base = {**{f"job{i}": float(i) for i in range(1, 9)}, "reference": 10.0}
    turns = itertools.count()

    class FakeTimer:
        def __init__(self, stmt: str, globals: dict[str, Any], **_: Any) -> None:
            self.name = globals["name"]

        def timeit(self, number: int) -> None:  # the warm-up
            pass

    def round_(timer: FakeTimer, cfg: LatencyConfig) -> tuple[list[float], list[float]]:
        speed = 1.0 if next(turns) < 5 else 1.5
        return [base[timer.name] * speed / 1000] * 3, []

    monkeypatch.setattr(harness.benchmark, "Timer", FakeTimer)
    monkeypatch.setattr(harness, "_round", round_)
    jobs = [("job()", {"name": name}) for name in base]
    plain = harness._time_jobs(jobs, CFG, rounds=3)
    assert plain[:5] == pytest.approx([1, 2, 3, 4, 5]) and plain[5:] == pytest.approx([9, 10.5, 12, 15])
    turns = itertools.count()
    relative = harness._time_jobs(jobs, CFG, rounds=3, reference=len(jobs) - 1)
    ref = relative[-1]  # the reference's own low percentile (of its blocks, most of them slow)
    assert 10 <= ref < 15 and [t / ref for t in relative] == pytest.approx([t / 10 for t in base.values()])
    assert next(turns) == 3 * (8 + 3)  # eight jobs a round; the reference at its start, after the sixth job, at its end


def test_a_table_chunk_timed_on_a_slower_host_is_scaled_to_the_first(tmp_path: Path, space: SearchSpace,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's chunks are timed minutes apart: the host 1.5x slower for every chunk after the first, each entry
    still gets its time at the first chunk's speed (its ratio to the reference entry timed beside it, times the
    reference's time in the first chunk, which is stored)."""
    speed = iter([1.0] + [1.5] * 100)  # one per timing run: the first chunk fast, every later run slow

    def fake(jobs: list[harness.Job], cfg: LatencyConfig, rounds: int, bar: Any = None,
             reference: int | None = None) -> list[float]:
        now = next(speed)
        if jobs[0][0].startswith(MODEL_STMT):  # the calibration's whole students
            return [now * (1 + k) for k in range(len(jobs))]
        return [now * (2.0 if k == reference else 1 + k / 10) for k in range(len(jobs))]

    monkeypatch.setattr(latency_build, "CHUNK", 5)
    monkeypatch.setattr(harness, "_time_jobs", fake)
    db = Database(f"sqlite:///{tmp_path}/lat.db")
    model = ensure_latency_model(db, space, EMB, CFG, progress=False)
    specs = list(table_specs(space, EMB))
    ref = latency_build.reference_key(table_specs(space, EMB))
    assert ref is not None and ref.startswith("ffn:")
    assert [model.table[k] for k in specs] == pytest.approx([1 + (i % 5) / 10 for i in range(len(specs))])
    with db.session() as sess:
        assert sess.scalar(select(LatencyRow.ms).where(LatencyRow.key == f"reference:{ref}")) == 2.0
    assert f"reference:{ref}" not in model.table  # a row of the build, not an entry a student pays


def test_recalibration_follows_the_host(built: LatencyModel, space: SearchSpace) -> None:
    """The calibration students timed again on a host 1.3x slower than at the fit: the refitted calibration
    predicts students it was not fitted on 1.3x slower too, and the drift says 1.3 (the stored model keeps
    the fitted speed). The intercept is made non-negative so that no prediction sits on the `a * raw` floor: a
    student on the floor is off the fitted line, and the refit on 1.3x those times is then close, not exact, by
    how far the measured host put the smallest student below the line."""
    cfg = CFG.model_copy(update={"calibration_archs": 10})
    fitted = dataclasses.replace(built.calibration, b=abs(built.calibration.b))
    model = LatencyModel(built.fingerprint, cfg, built.table, fitted)
    recal, modules = calibration_students(model, space, EMB)
    assert recal == calibration_architectures(space, EMB, cfg, model) and len(modules) == len(recal) == 12
    assert all(m.embeddings is modules[0].embeddings for m in modules)  # one table, as in the finalists' run
    assert [m.config.architecture for m in modules] == [a.to_dict() for a in recal]
    drift, now = in_run(model, space, EMB, recal, [1.3 * model.predict(a) for a in recal])
    _, ref_ms = model.reference(space, EMB)
    assert drift == pytest.approx(1.3 * model.predict(largest(space, EMB)) / ref_ms)
    rng = random.Random(5)
    for arch in (sample(space, EMB, rng) for _ in range(10)):
        assert model.predict(arch, now) == pytest.approx(1.3 * model.predict(arch), rel=1e-6)


def test_a_later_run_times_the_reference_beside_its_students(built: LatencyModel, space: SearchSpace) -> None:
    """A budget in ms times the calibration students again; a fraction of the teacher times the reference alone
    (the space's largest student, the teacher's layers): either way `reference_time` finds the reference's time."""
    cfg = CFG.model_copy(update={"calibration_archs": 4})
    model = LatencyModel(built.fingerprint, cfg, built.table, built.calibration)
    ref = largest(space, EMB).to_dict()
    (alone,) = timed_beside(model, space, EMB, calibrate=False)
    assert alone.config.architecture == ref
    modules = timed_beside(model, space, EMB, calibrate=True)
    times = [float(i) for i in range(len(modules))]
    assert modules[round(reference_time(times, calibrate=True))].config.architecture == ref
    assert reference_time([7.5], calibrate=False) == 7.5


def test_timing_runs_happen_in_a_new_process() -> None:
    # the finalists' and the export's timing runs go through this: a new process, its result and its errors here
    assert harness.in_fresh_process(os.getpid) != os.getpid()
    assert harness.in_fresh_process(math.factorial, 5) == 120
    with pytest.raises(ValueError, match="negative"):
        harness.in_fresh_process(math.factorial, -1)
    assert LatencyConfig().fresh_process


def _killed_first(marker: str) -> str:
    """Killed by SIGKILL on its first call (a kill -9 from outside), "timed" on the next."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "timed"


def _always_killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_timing_process_is_started_again_once(tmp_path: Path) -> None:
    assert harness.in_fresh_process(_killed_first, str(tmp_path / "killed")) == "timed"
    with pytest.raises(NasBertError, match="timing process was killed twice"):
        harness.in_fresh_process(_always_killed)


def test_a_new_process_builds_the_model(tmp_path: Path, space: SearchSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    # the default: what is missing is timed and stored by a new process; this one only reads it back
    cfg = CFG.model_copy(update={"fresh_process": True})
    db = Database(f"sqlite:///{tmp_path}/fresh.db")
    monkeypatch.setattr(harness, "_time_jobs", lambda *a, **k: pytest.fail("timed in the calling process"))
    model = ensure_latency_model(db, space, EMB, cfg, progress=False)
    assert set(model.table) == set(table_specs(space, EMB)) and all(v > 0 for v in model.table.values())
    assert len(model.calibration.points) == cfg.calibration_archs + 2 and model.calibration.a > 0
    again = ensure_latency_model(db, space, EMB, cfg, progress=False)  # nothing missing: no new process
    assert (again.table, again.calibration.a) == (model.table, model.calibration.a)


def test_a_student_keeping_the_teachers_order_pays_no_reordering(built: LatencyModel, space: SearchSpace) -> None:
    # a student all at full width has the importance order folded into its weights: no reordering
    wide = largest(space, EMB)
    assert wide.blocks[-1].hidden == wide.output == EMB.width and not wide.reorders()
    cost = built.table[output_key(EMB.width, EMB.width)]
    assert built.raw_ms(wide, reorder=True) - built.raw_ms(wide) == pytest.approx(cost) and cost > 0
    assert built.predict(wide, reorder=True) - built.predict(wide) == pytest.approx(built.calibration.a * cost)
    # back to full width after a narrower block: its dimensions stay in importance order, reordered at the end
    from nas_bert.space import Architecture
    from nas_bert.space.architecture import largest_block, smallest_block

    back = Architecture.build(EMB, (smallest_block(space), *[largest_block(space)] * (space.blocks - 1)))
    assert back.reorders() and built.raw_ms(back) - built.raw_ms(back, reorder=False) == pytest.approx(cost)
    narrow = smallest(space, EMB)
    assert narrow.blocks[-1].hidden < narrow.output
    assert built.raw_ms(narrow, reorder=False) == built.raw_ms(narrow)  # its map back to full width is real
