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
from nas_bert.latency import MODEL_ROUNDS, LatencyConfig, _time_ms, hardware_name, measure_model
from nas_bert.modeling_nas_bert import NasBertModel
from nas_bert.search import budgets_in_db, latest_checkpoint, optuna_study_name, pareto_rows, storage_for
from nas_bert.supernet import Supernet
from nas_bert.teacher import Teacher, load_teacher
from nas_bert.train import sha256_file

ONNX_TOL = 1e-4  # fp32 ONNX must reproduce PyTorch to this max abs diff
INT8_REL_TOL = 0.5  # int8 sanity bound: max abs diff / max |output| (dynamic quantisation is lossy)
CODE_FILES = ("configuration_nas_bert.py", "modeling_nas_bert.py")
# Real text of different lengths for checking the ONNX graphs (dynamic batch and sequence axes).
SAMPLE_TEXTS = (
    "a dog",
    "the act of making something new",
    "a small, fast model that computes the same hidden states as its supernet path",
    "an expression of greeting",
    "a written account of the events of a life, told in the order in which they happened to the writer",
    "ok",
)


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
        if not path.is_file() or re.search(r"^\s*(from|import)\s+nas_bert\b", path.read_text(), re.M):
            raise NasBertError(f"{path} is missing or imports nas_bert; the student code must be self-contained")


def _encode(tokenizer: Any, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=seq_len, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def _torch_out(model: NasBertModel, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"]))
    return out.last_hidden_state.numpy()


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
    example = {k: torch.from_numpy(v) for k, v in _encode(tokenizer, list(SAMPLE_TEXTS[1:3]), seq_len).items()}
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
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    finally:
        root.level = level
    # Batches of 1, 3 and 6 texts of different lengths, and one padded to the full sequence length.
    batches = [_encode(tokenizer, list(SAMPLE_TEXTS[:1]), seq_len), _encode(tokenizer, list(SAMPLE_TEXTS[2:5]), seq_len),
               _encode(tokenizer, list(SAMPLE_TEXTS), seq_len)]
    full = tokenizer(list(SAMPLE_TEXTS[:2]), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    batches.append({k: full[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    s32, s8 = _session(fp32, 1), _session(int8, 1)
    diff32 = diff8 = scale = 0.0
    for feeds in batches:
        ref = _torch_out(model, feeds)
        diff32 = max(diff32, float(np.abs(s32.run(None, feeds)[0] - ref).max()))
        diff8 = max(diff8, float(np.abs(s8.run(None, feeds)[0] - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    if not diff32 <= ONNX_TOL:
        raise NasBertError(f"{fp32}: ONNX output differs from PyTorch by {diff32:.2e} (> {ONNX_TOL:g}); "
                           "report this with the model's nas_bert.json")
    if not diff8 <= INT8_REL_TOL * scale:
        raise NasBertError(f"{int8}: int8 output differs from PyTorch by {diff8:.3g}, over {INT8_REL_TOL:g} x the "
                           f"output scale {scale:.3g}; use onnx/model.onnx")
    return {"onnx_max_abs_diff": diff32, "int8_max_abs_diff": diff8, "output_max_abs": scale,
            "checked_shapes": [list(b["input_ids"].shape) for b in batches],
            "onnx_mb": _mb(fp32), "int8_mb": _mb(int8)}


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 3)


# -- latency ------------------------------------------------------------------------------------
def measure_onnx(path: Path, cfg: LatencyConfig, vocab_size: int) -> float:
    """Milliseconds per ONNX Runtime call at the study's batch, sequence length and thread count."""
    sess = _session(path, cfg.threads)
    gen = np.random.default_rng(0)
    ids = gen.integers(0, vocab_size, (cfg.batch_size, cfg.seq_len), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    # The same timing rules as the PyTorch measurements (warm-up, quiet rounds, median per round).
    return _time_ms("sess.run(None, feeds)", {"sess": sess, "feeds": feeds}, cfg, MODEL_ROUNDS)


def measure_student(model: NasBertModel, folder: Path, cfg: LatencyConfig, vocab_size: int) -> dict[str, float]:
    """PyTorch fp32, ONNX fp32 and ONNX int8 milliseconds of one exported student on this machine."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads)
        return {"torch_fp32": measure_model(model, cfg, vocab_size),
                "onnx_fp32": measure_onnx(folder / "onnx" / "model.onnx", cfg, vocab_size),
                "onnx_int8": measure_onnx(folder / "onnx" / "model.int8.onnx", cfg, vocab_size)}
    finally:
        torch.set_num_threads(threads)
        model.to("cpu")


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
        st = optuna.load_study(study_name=optuna_study_name(study, b), storage=storage_for(study))
        feasible = {}
        for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.values[1] <= b:
                feasible.setdefault(t.user_attrs["arch_hash"], t.number)
        if not feasible:
            raise NasBertError(f"the search for budget {b:g} ms in study '{study.name}' has no feasible trial; "
                               "search with more trials or a larger budget")
        rows = [_row(db, study, h) for h in feasible]
        rescored = [r for r in rows if r["rescored_loss"] is not None]
        best = min(rescored, key=lambda r: r["rescored_loss"]) if rescored else min(rows, key=lambda r: r["approx_loss"])
        members[f"{b:g}:{best['hash']}"] = Member(f"nasbert-{b:g}ms-{best['hash'][:8]}", best, feasible[best["hash"]], b, [b])
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
        raise NasBertError(f"supernet checkpoint {path} does not match the sha256 recorded in the database (changed on "
                           f"disk); restore the original file or retrain with `nas-bert train-supernet --config {study.file}`")
    return {"path": str(path), "step": ck.step, "sha256": ck.sha256, "scored_with_sha256": scored_sha}


# -- model card ---------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def model_card(info: dict[str, Any], arch: Architecture) -> str:
    """README.md: usage, the architecture per block and sublayer, latency beside the teacher's, metrics, command."""
    m, lat, t = info["metrics"], info["latency"], info["teacher"]
    lines = ["---", "library_name: transformers", "pipeline_tag: feature-extraction", "tags: [nas-bert, bert, onnx]", "---",
             f"# {info['name']}", "",
             f"A BERT student found by nas-bert in study `{info['study']}` (trial {info['trial']} of the "
             f"{_fmt(info['budget_ms'], 'g')} ms search), extracted from the supernet with the teacher `{t['name']}`'s "
             "embeddings. It returns `last_hidden_state` of shape (batch, sequence, "
             f"{arch.blocks[-1].hidden}).", "", "## Usage", "", "```python",
             "from transformers import AutoModel, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{info["name"]}")',
             f'model = AutoModel.from_pretrained("{info["name"]}", trust_remote_code=True)',
             'hidden = model(**tokenizer(["a sentence"], return_tensors="pt")).last_hidden_state', "```", "",
             "ONNX: `onnx/model.onnx` (fp32) and `onnx/model.int8.onnx` (dynamic int8) take `input_ids` and "
             "`attention_mask` of any batch and sequence length.", "", "## Architecture", "",
             "| block | sublayer | width | operator | parameters |", "|---|---|---|---|---|",
             f"| - | embeddings | {arch.embeddings.width} | teacher's tables (vocab {arch.embeddings.vocab_size}) "
             f"| {arch.embeddings.params():,} |"]
    prev = arch.embeddings.width
    for i, b in enumerate(arch.blocks):
        lines.append(f"| {i} | projection | {prev} -> {b.hidden} | linear | {prev * b.hidden + b.hidden:,} |")
        lines += [f"| {i} | {j} | {b.hidden} | {op} | {op.params(b.hidden):,} |" for j, op in enumerate(b.ops)]
        prev = b.hidden
    s = lat["speedup"]
    lines += ["", f"Parameters: **{info['params']:,}** (teacher {t['params']:,}). FLOPs per sequence of "
              f"{lat['config']['seq_len']} tokens: **{info['flops']:,}**. Weights: {info['size_mb']:.2f} MB.", "",
              "## Latency", "",
              f"Measured on {lat['machine']}, batch {lat['config']['batch_size']}, sequence length "
              f"{lat['config']['seq_len']}, {lat['config']['threads']} threads (median per round, quietest round).", "",
              "| | student ms | teacher ms (PyTorch fp32) | speed-up |", "|---|---|---|---|",
              f"| predicted (latency model) | {_fmt(info['predicted_ms'])} | | |",
              f"| PyTorch fp32 | {_fmt(lat['torch_fp32'])} | {_fmt(t['torch_fp32_ms'])} | {_fmt(s['torch_fp32'], '.2f')}x |",
              f"| ONNX fp32 | {_fmt(lat['onnx_fp32'])} | {_fmt(t['torch_fp32_ms'])} | {_fmt(s['onnx_fp32'], '.2f')}x |",
              f"| ONNX int8 | {_fmt(lat['onnx_int8'])} | {_fmt(t['torch_fp32_ms'])} | {_fmt(s['onnx_int8'], '.2f')}x |", "",
              "## Metrics", "", "| metric | value |", "|---|---|",
              f"| approximate loss (sum of block MSE) | {_fmt(m['approx_loss'], '.5f')} |",
              f"| rescored loss (end-to-end MSE vs teacher) | {_fmt(m['rescored_loss'], '.5f')} |",
              f"| ONNX fp32 max abs diff vs PyTorch | {m['onnx_max_abs_diff']:.2e} |",
              f"| ONNX int8 max abs diff vs PyTorch | {m['int8_max_abs_diff']:.3g} |", "",
              "## Provenance", "",
              f"- architecture hash `{info['hash']}`; full JSON in `nas_bert.json`",
              f"- supernet checkpoint `{info['checkpoint']['path']}` (step {info['checkpoint']['step']}, "
              f"sha256 `{info['checkpoint']['sha256']}`)", "", "Made with:", "", "```", info["command"], "```", ""]
    return "\n".join(lines)


# -- the export ---------------------------------------------------------------------------------
def _teacher_info(teacher: Teacher, study: Study) -> dict[str, Any]:
    cfg = study.cfg.latency
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.threads)
        ms = measure_model(teacher.encoder, cfg, teacher.embeddings_spec().vocab_size)
    finally:
        torch.set_num_threads(threads)
        teacher.encoder.to("cpu")
    return {"name": study.cfg.teacher, "params": sum(p.numel() for p in teacher.encoder.parameters()), "torch_fp32_ms": ms}


def _export_one(study: Study, m: Member, teacher: Teacher, supernet: Supernet, ckpt: dict[str, Any],
                tinfo: dict[str, Any], folder: Path, command: str) -> dict[str, Any]:
    cfg = study.cfg.latency
    arch = Architecture.from_json(m.row["arch_json"])
    student = extract_student(study, arch, teacher, supernet)
    save_student(student, folder, teacher.tokenizer)
    checks = export_onnx(student, folder, teacher.tokenizer, min(cfg.seq_len, arch.embeddings.max_positions))
    ms = measure_student(student, folder, cfg, arch.embeddings.vocab_size)
    metrics = {"approx_loss": m.row["approx_loss"], "rescored_loss": m.row["rescored_loss"], **checks}
    info = {
        "name": m.name, "study": study.name, "hash": m.row["hash"], "trial": m.trial, "budget_ms": m.budget_ms,
        "budgets_ms": m.budgets, "params": arch.params(), "flops": arch.flops(cfg.seq_len),
        "size_mb": _mb(folder / "model.safetensors"), "predicted_ms": m.row["predicted_ms"],
        "latency": {**ms, "machine": f"{hardware_name(cfg.device)} ({os.cpu_count()} cpus)", "config": cfg.model_dump(),
                    "speedup": {k: tinfo["torch_fp32_ms"] / v for k, v in ms.items()}},
        "metrics": metrics, "teacher": tinfo, "checkpoint": ckpt, "command": command,
        "safetensors_sha256": sha256_file(folder / "model.safetensors"),
    }
    (folder / "README.md").write_text(model_card(info, arch))
    (folder / "nas_bert.json").write_text(json.dumps({**info, "architecture": arch.to_dict(),
                                                      "exported_at": datetime.now(UTC).isoformat(timespec="seconds")},
                                                     indent=2))
    return info


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
    with db.session() as s:
        for info in infos:
            row = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name,
                                                          ArchitectureRow.hash == info["hash"])).one()
            row.measured_ms = info["latency"]["torch_fp32"]
            path = str((out_dir / info["name"]).resolve())
            exp = s.scalars(select(ExportRow).where(ExportRow.study == study.name, ExportRow.arch_hash == info["hash"],
                                                    ExportRow.path == path)).first()
            if exp is None:
                exp = ExportRow(study=study.name, arch_hash=info["hash"], path=path)
                s.add(exp)
            exp.trial_number, exp.budget_ms, exp.sha256 = info["trial"], info["budget_ms"], info["safetensors_sha256"]
            exp.metrics_json = json.dumps({"latency": info["latency"], **info["metrics"]})


def _export(study: Study, members_of: Any, out_dir: Path, plot_budgets: list[float] | None, overwrite: bool,
            command: str | None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise NasBertError(f"{out_dir} already exists; pass --overwrite to replace it or choose another output folder")
    db = Database(study.db_url)
    members: list[Member] = members_of(db)
    # Every checkpoint is verified before anything is written: a failed check leaves no trace.
    ckpts = {m.name: _checkpoint(db, study, m.row["checkpoint_sha"]) for m in members}
    command = command or shlex.join(["nas-bert", "export", "--config", str(study.file), "--out", str(out_dir)])
    teacher = load_teacher(study.cfg.teacher, "cpu")
    eps = float(getattr(teacher.config, "layer_norm_eps", 1e-12))
    supernets: dict[str, Supernet] = {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tinfo = _teacher_info(teacher, study)  # measured once, in the same run as the students
        infos = []
        for m in tqdm(members, desc="export", unit="student"):
            path = ckpts[m.name]["path"]
            if path not in supernets:
                supernets[path] = load_supernet_checkpoint(Path(path), study.space, teacher.hidden_size, eps)
            infos.append(_export_one(study, m, teacher, supernets[path], ckpts[m.name], tinfo, tmp / m.name, command))
        from nas_bert.plots import plot_fronts

        plot_fronts(study, plot_budgets or budgets_in_db(study), tmp / "pareto.png")
        summary = {"study": study.name, "out_dir": str(out_dir), "command": command, "teacher": tinfo,
                   "machine": infos[0]["latency"]["machine"], "latency_config": study.cfg.latency.model_dump(),
                   "students": [_student_summary(i) for i in infos]}
        (tmp / "index.json").write_text(json.dumps(summary, indent=2))
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _record(db, study, infos, out_dir)
    db.dispose()
    return summary


def _student_summary(i: dict[str, Any]) -> dict[str, Any]:
    lat, met = i["latency"], i["metrics"]
    return {"name": i["name"], "hash": i["hash"], "trial": i["trial"], "budget_ms": i["budget_ms"],
            "budgets_ms": i["budgets_ms"], "params": i["params"], "flops": i["flops"], "size_mb": i["size_mb"],
            "onnx_mb": met["onnx_mb"], "int8_mb": met["int8_mb"], "predicted_ms": i["predicted_ms"],
            "measured_ms": {k: lat[k] for k in ("torch_fp32", "onnx_fp32", "onnx_int8")}, "speedup": lat["speedup"],
            "approx_loss": met["approx_loss"], "rescored_loss": met["rescored_loss"],
            "onnx_max_abs_diff": met["onnx_max_abs_diff"], "int8_max_abs_diff": met["int8_max_abs_diff"]}


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
        return [Member(f"nasbert-{budget:g}ms-t{trial_number}-{h[:8]}", _row(db, study, h), trial_number, budget, [budget])]

    return _export(study, member, out_dir, [budget], overwrite, command)
