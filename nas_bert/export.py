"""Stage 6: export searched students as self-contained transformers folders, with ONNX and a model card.

Each student folder loads with `AutoModel.from_pretrained(path, trust_remote_code=True)` and nothing
but torch and transformers installed: the two student code files travel with the weights. The export
is written into a temporary folder beside the target and renamed into place once complete, so a kill
never leaves half an export, and the database records it only after the rename.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from sqlalchemy import select
from tqdm.auto import tqdm

from nas_bert.architecture import Architecture
from nas_bert.blockwise import load_supernet_checkpoint
from nas_bert.config import Study
from nas_bert.configuration_nas_bert import NasBertConfig
from nas_bert.db import ArchitectureRow, Checkpoint, Database, ExportRow, SupernetRun
from nas_bert.errors import NasBertError
from nas_bert.latency import LatencyConfig, hardware_name, measure_callables
from nas_bert.modeling_nas_bert import NasBertModel
from nas_bert.search import (
    best_under_budget,
    budgets_in_db,
    latest_checkpoint,
    optuna_study_name,
    pareto_rows,
    storage_for,
)
from nas_bert.supernet import Supernet
from nas_bert.teacher import Teacher, load_teacher
from nas_bert.train import sha256_file

ONNX_TOL = 1e-4  # fp32 ONNX must reproduce PyTorch to this max abs diff
INT8_REL_TOL = 0.5  # int8 sanity bound on ||int8 - fp32|| / ||fp32|| over real tokens; dynamic quantisation is
# lossy (about 0.1-0.15 with per-channel weights for MiniLM and its students), a broken graph is near 1
CODE_FILES = ("configuration_nas_bert.py", "modeling_nas_bert.py")
VARIANTS = ("torch_fp32", "onnx_fp32", "onnx_int8")  # the student's measured runtimes
# Real text of different lengths for checking the ONNX graphs (dynamic batch and sequence axes).
SAMPLE_TEXTS = ("a dog", "the act of making something new", "an expression of greeting", "ok",
                "a small, fast model that computes the same hidden states as its supernet path",
                "a written account of the events of a life, told in the order in which they happened to the writer")


@dataclass
class Member:
    """One student to export: its database row (as a dict), where it came from and its folder name."""

    name: str
    row: dict[str, Any]
    trial: int | None
    budget_ms: float | None
    budgets: list[float] = field(default_factory=list)


# -- the student folder -------------------------------------------------------------------------
def extract_student(study: Study, arch: Architecture, teacher: Teacher, supernet: Supernet) -> NasBertModel:
    """A standalone student: the supernet's slices for `arch` on the teacher's embedding tables."""
    arch.validate(study.space)
    return supernet.extract(arch, teacher.encoder.embeddings).eval()


def save_student(model: NasBertModel, folder: Path, tokenizer: Any) -> None:
    """Weights, config.json with auto_map, the two student code files and the teacher's tokenizer."""
    # Registering makes save_pretrained copy the defining module and its relative imports, and write auto_map.
    NasBertConfig.register_for_auto_class()
    NasBertModel.register_for_auto_class("AutoModel")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in CODE_FILES:  # the copies must not reach back into nas_bert, or loading needs it installed
        path = folder / name
        if not path.is_file() or re.search(r"^\s*(from|import)\s+nas_bert\b", path.read_text(), re.MULTILINE):
            raise NasBertError(f"{path} is missing or imports nas_bert; the student code must be self-contained")


def _encode(tokenizer: Any, texts: tuple[str, ...], seq_len: int, padding: bool | str = True) -> dict[str, np.ndarray]:
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=seq_len, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export_onnx(model: NasBertModel, folder: Path, tokenizer: Any, seq_len: int) -> dict[str, Any]:
    """onnx/model.onnx (dynamic batch and sequence) and onnx/model.int8.onnx, both checked against PyTorch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = folder / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / "model.onnx", out / "model.int8.onnx"
    model = model.eval()
    example = {k: torch.from_numpy(v) for k, v in _encode(tokenizer, SAMPLE_TEXTS[1:3], seq_len).items()}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    # The TorchScript exporter cannot trace LayerNorm over a dynamic width; the dynamo exporter can.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example["input_ids"], example["attention_mask"]), str(fp32), dynamo=True, verbose=False,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=False,
        )
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        # Per-channel weight scales: BERT's outlier rows make one scale per tensor lose most of the rest.
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.level = level
    # Batches of 1, 3 and 6 texts of different lengths, and one padded to the full sequence length.
    batches = [_encode(tokenizer, SAMPLE_TEXTS[:1], seq_len), _encode(tokenizer, SAMPLE_TEXTS[2:5], seq_len),
               _encode(tokenizer, SAMPLE_TEXTS, seq_len), _encode(tokenizer, SAMPLE_TEXTS[:2], seq_len, "max_length")]
    s32, s8 = _session(fp32, 1), _session(int8, 1)
    diff32, refs, q8s = 0.0, [], []
    for feeds in batches:
        with torch.inference_mode():
            ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
        diff32 = max(diff32, float(np.abs(s32.run(None, feeds)[0] - ref).max()))
        real = feeds["attention_mask"].astype(bool)
        refs.append(ref[real])
        q8s.append(s8.run(None, feeds)[0][real])
    ref, q8 = np.concatenate(refs), np.concatenate(q8s)  # (real tokens, width)
    rel8 = float(np.linalg.norm(q8 - ref) / np.linalg.norm(ref))
    cos8 = float(np.mean((q8 * ref).sum(-1) / (np.linalg.norm(q8, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)))
    if not diff32 <= ONNX_TOL:
        raise NasBertError(f"{fp32}: ONNX output differs from PyTorch by {diff32:.2e} (> {ONNX_TOL:g}); "
                           "report this with the model's nas_bert.json")
    if not rel8 <= INT8_REL_TOL:
        raise NasBertError(f"{int8}: int8 output is {rel8:.2f} of the output's norm away from PyTorch's "
                           f"(> {INT8_REL_TOL:g}); use onnx/model.onnx and report this with nas_bert.json")
    return {"onnx_max_abs_diff": diff32, "int8_rel_error": rel8, "int8_mean_cosine": cos8,
            "checked_shapes": [list(b["input_ids"].shape) for b in batches],
            "onnx_mb": _mb(fp32), "int8_mb": _mb(int8)}


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 3)


# -- latency ------------------------------------------------------------------------------------


def measure_latencies(student: NasBertModel, folder: Path, teacher: Teacher, cfg: LatencyConfig) -> dict[str, Any]:
    """Milliseconds of the student (PyTorch fp32, ONNX fp32, ONNX int8) and the teacher, on this machine.

    The four are timed in interleaved rounds like the latency table (blocks disturbed by other processes
    are dropped, a low percentile of the rest is kept), so predicted and measured figures are comparable
    and the speed-ups fair. ONNX Runtime gets intra_op_num_threads = cfg.threads.
    """
    dev = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, student.config.vocab_size, (cfg.batch_size, cfg.seq_len), generator=gen)
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
    on_dev = {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev)}
    s32, s8 = (_session(folder / "onnx" / f, cfg.threads) for f in ("model.onnx", "model.int8.onnx"))
    teacher_model, student = teacher.encoder.eval().to(dev), student.eval().to(dev)
    calls: dict[str, Callable[[], Any]] = {
        "teacher_torch_fp32": lambda: teacher_model(**on_dev), "torch_fp32": lambda: student(**on_dev),
        "onnx_fp32": lambda: s32.run(None, feeds), "onnx_int8": lambda: s8.run(None, feeds)}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads)
        values = measure_callables(list(calls.values()), cfg)  # the latency table's timing, so both agree
    finally:
        torch.set_num_threads(threads)
        student.to("cpu")
        teacher.encoder.to("cpu")
    ms: dict[str, Any] = dict(zip(calls, values, strict=True))
    return ms


# -- which students -----------------------------------------------------------------------------
def _row(db: Database, study: Study, arch_hash: str) -> dict[str, Any]:
    with db.session() as s:
        r = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name,
                                                    ArchitectureRow.hash == arch_hash)).one()
        return {c: getattr(r, c) for c in ("hash", "arch_json", "params", "flops", "checkpoint_sha", "predicted_ms",
                                           "approx_loss", "rescored_loss")}


def _searched(study: Study, budgets: list[float] | None) -> list[float]:
    known = budgets_in_db(study)
    if not known:
        raise NasBertError(f"study '{study.name}' has no search yet; run `nas-bert search --config {study.file} "
                           "--latency-budget-ms X` first")
    for b in budgets or []:
        if optuna_study_name(study, b) not in {optuna_study_name(study, k) for k in known}:
            raise NasBertError(f"no search for budget {b:g} ms in study '{study.name}'; searched budgets: "
                               f"{', '.join(f'{k:g}' for k in known)} ms")
    return list(budgets) if budgets else known


def select_members(db: Database, study: Study, budgets: list[float] | None) -> list[Member]:
    """Every distinct architecture on a feasible front, or the best feasible one per requested budget."""
    members: dict[str, Member] = {}
    for b in _searched(study, budgets):
        if budgets is None:
            for r in pareto_rows(db, study, b):
                if r["hash"] in members:
                    members[r["hash"]].budgets.append(b)
                else:
                    members[r["hash"]] = Member(f"nasbert-front-{r['hash'][:8]}", _row(db, study, r["hash"]),
                                                r["trial"], b, [b])
            continue
        best = best_under_budget(pareto_rows(db, study, b))  # the same choice as the search's summary
        if best is None:
            raise NasBertError(f"the search for budget {b:g} ms in study '{study.name}' has no feasible trial; "
                               "search with more trials or a larger budget")
        h = best["hash"]
        feasible = {h: best["trial"]}
        best = _row(db, study, h)
        members[f"{b:g}:{h}"] = Member(f"nasbert-{b:g}ms-{h[:8]}", best, feasible[h], b, [b])
    if not members:
        raise NasBertError(f"no feasible trial in any search of study '{study.name}'; search with a larger budget")
    return list(members.values())


def _checkpoint(db: Database, study: Study, scored_sha: str) -> dict[str, Any]:
    """The checkpoint an architecture was scored with (else the latest), verified on disk against its sha256."""
    with db.session() as s:
        q = (select(Checkpoint).join(SupernetRun, Checkpoint.run_id == SupernetRun.id)
             .where(SupernetRun.study == study.name, SupernetRun.space_hash == study.space.fingerprint(),
                    Checkpoint.sha256 == scored_sha, Checkpoint.deleted == 0))
        ck = s.scalars(q).first()
    ck = ck or latest_checkpoint(db, study)  # the scored one was pruned: extract from the current supernet
    path = Path(ck.path)
    if not path.is_file():
        raise NasBertError(f"supernet checkpoint {path} is missing from disk; restore it or retrain with "
                           f"`nas-bert train-supernet --config {study.file}`")
    if sha256_file(path) != ck.sha256:
        raise NasBertError(f"supernet checkpoint {path} does not match the sha256 recorded in the database (changed "
                           "on disk); restore the original file or retrain with "
                           f"`nas-bert train-supernet --config {study.file}`")
    return {"path": str(path), "step": ck.step, "sha256": ck.sha256, "scored_with_sha256": scored_sha}


# -- model card ---------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _extra_metrics(info: dict[str, Any]) -> str:
    """Rows for distillation and evaluation, when those stages have run."""
    m, d, rows = info["metrics"], info.get("distilled"), []
    if d:
        rows.append(f"| distilled | {d['steps']} steps, layer mapping {d['mapping']} |")
        rows.append(f"| held-out final-state MSE before / after distillation | {_fmt(d['final_loss_before'], '.5f')} / "
                    f"{_fmt(d['final_loss_after'], '.5f')} |")
    labels = {"eval_fidelity": "fidelity to the teacher (Spearman of pairwise cosine similarities)",
              "eval_accuracy": "downstream accuracy", "eval_teacher_accuracy": "teacher's accuracy (same protocol)",
              "eval_accuracy_ratio": "accuracy / teacher's", "eval_label_loyalty": "label loyalty",
              "eval_probability_loyalty": "probability loyalty (1 - Jensen-Shannon distance)"}
    task = f" ({m['eval_task']})" if "eval_task" in m else ""
    rows += [f"| {label}{task if k != 'eval_fidelity' else ''} | {_fmt(m[k], '.4f')} |"
             for k, label in labels.items() if m.get(k) is not None]
    return "\n".join(rows) + ("\n" if rows else "")


def model_card(info: dict[str, Any], arch: Architecture) -> str:
    """README.md: usage, the architecture per block and sublayer, latency beside the teacher's, metrics, command."""
    m, lat, t, ck = info["metrics"], info["latency"], info["teacher"], info["checkpoint"]
    cfg, sp, tms = lat["config"], lat["speedup"], _fmt(lat["teacher_torch_fp32"])
    emb = arch.embeddings
    rows = [f"| - | embeddings | {emb.width} | the teacher's (vocab {emb.vocab_size}) | {emb.params():,} |"]
    prev = arch.embeddings.width
    for i, b in enumerate(arch.blocks):
        rows.append(f"| {i} | projection | {prev} -> {b.hidden} | linear | {prev * b.hidden + b.hidden:,} |")
        rows += [f"| {i} | {j} | {b.hidden} | {op} | {op.params(b.hidden):,} |" for j, op in enumerate(b.ops)]
        prev = b.hidden
    runtimes = "\n".join(f"| {label} | {_fmt(lat[k])} | {tms} | {_fmt(sp[k], '.2f')}x |" for label, k in
                         (("PyTorch fp32", "torch_fp32"), ("ONNX fp32", "onnx_fp32"), ("ONNX int8", "onnx_int8")))
    table = "\n".join(rows)
    stale = "" if ck["scored_with_sha256"] == ck["sha256"] else (
        f"; the search scored it with checkpoint sha256 `{ck['scored_with_sha256']}`, since pruned")
    return f"""---
library_name: transformers
pipeline_tag: feature-extraction
tags: [nas-bert, bert, onnx]
---
# {info["name"]}

A BERT student found by nas-bert in study `{info["study"]}` (trial {info["trial"]} of the \
{_fmt(info["budget_ms"], "g")} ms search), extracted from the trained supernet on the embeddings of the teacher \
`{t["name"]}`{" and distilled from it" if info.get("distilled") else ""}. It returns `last_hidden_state` of shape (batch, sequence, {arch.output or arch.blocks[-1].hidden}).

## Usage

```python
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{info["name"]}", trust_remote_code=True)
model = AutoModel.from_pretrained("{info["name"]}", trust_remote_code=True)
hidden = model(**tokenizer(["a sentence"], return_tensors="pt")).last_hidden_state
```

ONNX: `onnx/model.onnx` (fp32) and `onnx/model.int8.onnx` (dynamic int8 weights) take `input_ids` and \
`attention_mask` of any batch size and sequence length and return `last_hidden_state`.

## Architecture

| block | sublayer | width | operator | parameters |
|---|---|---|---|---|
{table}

Parameters: **{info["params"]:,}** (teacher {t["params"]:,}). FLOPs per sequence of {cfg["seq_len"]} tokens: \
**{info["flops"]:,}**. Weights: {info["size_mb"]:.2f} MB.

## Latency

Measured on {lat["machine"]}, batch {cfg["batch_size"]}, sequence length {cfg["seq_len"]}, {cfg["threads"]} \
threads. The student's three runtimes and the teacher were timed in interleaved rounds, as the latency table \
is (disturbed blocks dropped, 10th percentile of the rest); the prediction is the search's latency model.

| runtime | student ms | teacher ms (PyTorch fp32) | speed-up |
|---|---|---|---|
| predicted (latency model) | {_fmt(info["predicted_ms"])} | | |
{runtimes}

## Metrics

| metric | value |
|---|---|
| approximate loss (sum of block MSE) | {_fmt(m["approx_loss"], ".5f")} |
| rescored loss (end-to-end MSE vs teacher) | {_fmt(m["rescored_loss"], ".5f")} |
| ONNX fp32 max abs diff vs PyTorch | {m["onnx_max_abs_diff"]:.2e} |
| ONNX int8 relative error vs PyTorch (norm of difference / norm) | {m["int8_rel_error"]:.3f} |
| ONNX int8 mean cosine to PyTorch per token | {m["int8_mean_cosine"]:.4f} |
{_extra_metrics(info)}
## Provenance

- architecture hash `{info["hash"]}`; the full architecture JSON is in `nas_bert.json`
- supernet checkpoint `{ck["path"]}` (step {ck["step"]}, sha256 `{ck["sha256"]}`){stale}

Made with:

```
{info["command"]}
```
"""


# -- the export ---------------------------------------------------------------------------------
def _export_one(study: Study, m: Member, teacher: Teacher, supernet: Supernet, ckpt: dict[str, Any],
                tinfo: dict[str, Any], folder: Path, command: str) -> dict[str, Any]:
    cfg = study.cfg.latency
    arch = Architecture.from_json(m.row["arch_json"])
    distilled = _distilled(study, arch.hash())
    if distilled is not None:  # the distilled weights when stage 7 has run, else the supernet's slices
        student = NasBertModel.from_pretrained(distilled["student_path"]).eval()
    else:
        student = extract_student(study, arch, teacher, supernet)
    save_student(student, folder, teacher.tokenizer)
    checks = export_onnx(student, folder, teacher.tokenizer, min(cfg.seq_len, arch.embeddings.max_positions))
    ms = measure_latencies(student, folder, teacher, cfg)
    metrics = {"approx_loss": m.row["approx_loss"], "rescored_loss": m.row["rescored_loss"], **checks,
               **_evaluation(study, arch.hash())}
    info = {
        "name": m.name, "study": study.name, "hash": m.row["hash"], "trial": m.trial, "budget_ms": m.budget_ms,
        "budgets_ms": m.budgets, "params": arch.params(), "flops": arch.flops(cfg.seq_len),
        "size_mb": _mb(folder / "model.safetensors"), "predicted_ms": m.row["predicted_ms"],
        "latency": {**ms, "machine": f"{hardware_name(cfg.device)} ({os.cpu_count()} cpus)", "config": cfg.model_dump(),
                    "speedup": {k: ms["teacher_torch_fp32"] / ms[k] for k in VARIANTS}},
        "metrics": metrics, "teacher": dict(tinfo), "checkpoint": ckpt, "command": command,
        "safetensors_sha256": sha256_file(folder / "model.safetensors"), "distilled": distilled,
    }
    (folder / "README.md").write_text(model_card(info, arch))
    (folder / "nas_bert.json").write_text(json.dumps({**info, "architecture": arch.to_dict(),
                                                      "exported_at": datetime.now(UTC).isoformat(timespec="seconds")},
                                                     indent=2))
    return info


def _distilled(study: Study, arch_hash: str) -> dict[str, Any] | None:
    """The finished distillation of this architecture, if stage 7 has run."""
    from nas_bert.db import DistillRun

    with Database(study.db_url).session() as s:
        run = s.scalars(select(DistillRun).where(DistillRun.study == study.name, DistillRun.arch_hash == arch_hash,
                                                 DistillRun.status == "finished")).first()
        if run is None or not run.student_path or not Path(run.student_path).is_dir():
            return None
        report = json.loads(run.report_json)
        return {"student_path": run.student_path, "steps": run.target_steps, "mapping": json.loads(run.mapping_json),
                "final_loss_before": (report.get("before") or {}).get("final"),
                "final_loss_after": (report.get("after") or {}).get("final")}


def _evaluation(study: Study, arch_hash: str) -> dict[str, Any]:
    """Stage 8's latest metrics for this architecture (empty when it was not evaluated)."""
    from nas_bert.db import EvaluationRow

    with Database(study.db_url).session() as s:
        row = s.scalars(select(EvaluationRow).where(EvaluationRow.study == study.name, EvaluationRow.arch_hash == arch_hash)
                        .order_by(EvaluationRow.id.desc())).first()
        if row is None:
            return {}
        keep = ("fidelity", "accuracy", "teacher_accuracy", "accuracy_ratio", "label_loyalty", "probability_loyalty")
        metrics = json.loads(row.metrics_json)
        return {f"eval_{k}": metrics[k] for k in keep if k in metrics} | {"eval_task": row.task}


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished export into place; an old one is renamed away first, then deleted."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _record(db: Database, study: Study, infos: list[dict[str, Any]], out_dir: Path) -> None:
    """measured_ms of each architecture and one ExportRow per folder; rows of folders an overwrite removed go."""
    root = str(out_dir.resolve())
    paths = {str((out_dir / i["name"]).resolve()) for i in infos}
    with db.session() as s:
        for old in s.scalars(select(ExportRow).where(ExportRow.study == study.name)):
            if os.path.dirname(old.path) == root and old.path not in paths:
                s.delete(old)
        for info in infos:
            row = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name,
                                                          ArchitectureRow.hash == info["hash"])).one()
            row.measured_ms = info["measured_ms"]["torch_fp32"]
            path = str((out_dir / info["name"]).resolve())
            exp = s.scalars(select(ExportRow).where(ExportRow.study == study.name, ExportRow.arch_hash == info["hash"],
                                                    ExportRow.path == path)).first()
            if exp is None:
                exp = ExportRow(study=study.name, arch_hash=info["hash"], path=path)
                s.add(exp)
            exp.trial_number, exp.budget_ms, exp.sha256 = info["trial"], info["budget_ms"], info["safetensors_sha256"]
            exp.metrics_json = json.dumps(info)


def _export(study: Study, members_of: Callable[[Database], list[Member]], out_dir: Path,
            plot_budgets: list[float] | None, overwrite: bool, command: str | None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise NasBertError(f"{out_dir} already exists; pass --overwrite to replace it or choose another output folder")
    db = Database(study.db_url)
    try:
        members = members_of(db)
        # Every checkpoint is verified before anything is written: a failed check leaves no trace.
        ckpts = {m.name: _checkpoint(db, study, m.row["checkpoint_sha"]) for m in members}
        command = command or shlex.join(["nas-bert", "export", "--config", str(study.file), "--out", str(out_dir)])
        summary = _write(study, members, ckpts, out_dir, plot_budgets, command)
        _record(db, study, summary["students"], out_dir)
    finally:
        db.dispose()
    return summary


def _write(study: Study, members: list[Member], ckpts: dict[str, dict[str, Any]], out_dir: Path,
           plot_budgets: list[float] | None, command: str) -> dict[str, Any]:
    """Write every student, index.json and pareto.png into a temporary folder, then rename it to out_dir."""
    teacher = load_teacher(study.cfg.teacher, "cpu")
    tinfo = {"name": study.cfg.teacher, "params": sum(p.numel() for p in teacher.encoder.parameters())}
    eps = float(getattr(teacher.config, "layer_norm_eps", 1e-12))
    supernets: dict[str, Supernet] = {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        infos = []
        for m in tqdm(members, desc="export", unit="student"):
            path = ckpts[m.name]["path"]
            if path not in supernets:
                supernets[path] = load_supernet_checkpoint(Path(path), study.space, teacher.hidden_size, eps)
            infos.append(_export_one(study, m, teacher, supernets[path], ckpts[m.name], tinfo, tmp / m.name, command))
        from nas_bert.plots import plot_fronts

        plot_fronts(study, plot_budgets or budgets_in_db(study), tmp / "pareto.png")
        # the teacher is timed beside every student; its figure here is the median over those runs
        tinfo["torch_fp32_ms"] = float(np.median([i["latency"]["teacher_torch_fp32"] for i in infos]))
        summary = {"study": study.name, "out_dir": str(out_dir), "command": command, "teacher": tinfo,
                   "machine": infos[0]["latency"]["machine"], "latency_config": study.cfg.latency.model_dump(),
                   "students": [_student_summary(i) for i in infos]}
        (tmp / "index.json").write_text(json.dumps(summary, indent=2))
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _student_summary(i: dict[str, Any]) -> dict[str, Any]:
    lat, met = i["latency"], i["metrics"]
    keep = ("name", "hash", "trial", "budget_ms", "budgets_ms", "params", "flops", "size_mb", "predicted_ms",
            "safetensors_sha256")
    return {**{k: i[k] for k in keep}, "onnx_mb": met["onnx_mb"], "int8_mb": met["int8_mb"],
            "measured_ms": {k: lat[k] for k in VARIANTS}, "teacher_ms": lat["teacher_torch_fp32"],
            "speedup": lat["speedup"], **{k: met[k] for k in ("approx_loss", "rescored_loss", "onnx_max_abs_diff",
                                                             "int8_rel_error", "int8_mean_cosine")}}


def export_front(study: Study, out_dir: Path, budgets: list[float] | None = None, overwrite: bool = False,
                 command: str | None = None) -> dict[str, Any]:
    """Export every architecture on a feasible front (or, with budgets, the best feasible one per budget)."""
    return _export(study, lambda db: select_members(db, study, budgets), out_dir, budgets, overwrite, command)


def export_trial(study: Study, trial_number: int, budget: float, out_dir: Path, overwrite: bool = False,
                 command: str | None = None) -> dict[str, Any]:
    """Export one trial of one budget's search (feasible or not) into out_dir/nasbert-<budget>ms-t<n>-<hash8>."""
    def member(db: Database) -> list[Member]:
        _searched(study, [budget])
        st = optuna.load_study(study_name=optuna_study_name(study, budget), storage=storage_for(study))
        trial = next((t for t in st.get_trials(deepcopy=False) if t.number == trial_number), None)
        if trial is None or trial.state != TrialState.COMPLETE:
            raise NasBertError(f"no complete trial {trial_number} in the {budget:g} ms search of study '{study.name}'; "
                               f"see `nas-bert pareto --config {study.file}`")
        h = trial.user_attrs["arch_hash"]
        name = f"nasbert-{budget:g}ms-t{trial_number}-{h[:8]}"
        return [Member(name, _row(db, study, h), trial_number, budget, [budget])]

    return _export(study, member, out_dir, [budget], overwrite, command)
