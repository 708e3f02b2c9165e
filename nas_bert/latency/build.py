"""Building the latency model of a device: what the database lacks is timed (in a new process by default)
and stored, the rest read back; and its report."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError
from tqdm.auto import tqdm

from nas_bert.latency.calibration import Calibration, calibration_key
from nas_bert.latency.harness import TABLE_ROUNDS, Spec, _check_positions, in_fresh_process, measure_keys
from nas_bert.latency.students import calibrate
from nas_bert.latency.table import LatencyModel, _store_row, device_fingerprint, hardware_name, load_table, table_specs
from nas_bert.record import Record
from nas_bert.space import Embeddings, SearchSpace
from nas_bert.store import Database, LatencyCalibration
from nas_bert.study import LatencyConfig

CHUNK = 12  # table timings interleaved and stored together: an interrupted build loses one chunk at most


def reference_key(specs: dict[str, Spec]) -> str | None:
    """The table entry every chunk is timed against: the widest feed-forward of the widest blocks (a block's
    largest operator, 1-2 ms for a BERT-base layer: long enough to time well, short enough to repeat)."""
    ffn = [(spec[1], spec[2].inner, key) for key, spec in specs.items() if spec[0] == "op" and spec[2].kind == "ffn"]
    return max(ffn)[2] if ffn else None


class LatencyReport(Record):
    """Stage 2's result: a device's latency model, its settings and the calibration's error."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"table"})

    fingerprint: str
    hardware: str
    torch: str
    config: dict[str, Any]  # the study's `latency` section
    # operator key -> ms; left out of `nas-bert run`'s record (the database holds it)
    table: dict[str, float] | None = None
    calibration: dict[str, Any]  # a, b, c, w and the fitted points
    n: int
    loo_mape_pct: float | None  # None when too few students were timed to leave one out
    reference_ms: float | None = None  # the space's largest student (the teacher itself in a space made from it)


def latency_report(model: LatencyModel) -> LatencyReport:
    """The latency model of a device (from `ensure_latency_model`) as stage 2's result.

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus, the
    study's `latency` section and the device. Returns a `LatencyReport`: fingerprint, settings, the table, the
    calibration and its error."""
    cal = model.calibration
    mape = cal.loo_mape if np.isfinite(cal.loo_mape) else None
    return LatencyReport(
        fingerprint=model.fingerprint,
        hardware=hardware_name(model.config.device),
        torch=torch.__version__,
        config=model.config.model_dump(),
        table=dict(sorted(model.table.items())),
        calibration={"a": cal.a, "b": cal.b, "c": cal.c, "w": cal.w, "points": [list(p) for p in cal.points]},
        n=len(cal.points),
        loo_mape_pct=mape,
        reference_ms=cal.reference_ms,
    )


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
    if any(k not in load_table(db, fingerprint) for k in table_specs(space, emb)):
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
    table = load_table(db, fingerprint)
    missing = [k for k in specs if k not in table]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads)
        # every chunk timed against one reference entry, scaled to its time in the first chunk (stored): a host
        # whose speed moves between chunks does not make one chunk's operators dearer than another's
        ref = reference_key(specs)
        ref_row = f"reference:{ref}"
        with tqdm(total=len(missing) * TABLE_ROUNDS, desc="latency table", disable=not progress, leave=False) as bar:
            for chunk in (missing[i:i + CHUNK] for i in range(0, len(missing), CHUNK)):
                times, now = measure_keys([specs[k] for k in chunk], cfg, bar, specs.get(ref), table.get(ref_row))
                if now is not None and ref_row not in table:
                    table[ref_row] = _store_row(db, fingerprint, ref_row, now)
                for key, ms in zip(chunk, times, strict=True):
                    table[key] = _store_row(db, fingerprint, key, ms)
        model = LatencyModel(fingerprint, cfg, {k: v for k, v in table.items() if not k.startswith("reference:")})

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
