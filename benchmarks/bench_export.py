"""Stage 6 benchmark: exported students' latency in PyTorch fp32, ONNX fp32 and ONNX int8 beside the teacher.

    python benchmarks/bench_export.py --config studies/demo.yaml [--dir studies/demo/export]

With an existing export folder (index.json), every student listed there is loaded the way a user
loads it (AutoModel with trust_remote_code, ONNX Runtime sessions) and timed again; without one, the
study's feasible fronts are exported into it first. For each student the teacher is timed in the same
interleaved rounds, so each speed-up ratio comes from one run on one machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import onnxruntime
import torch
import transformers
from transformers import AutoModel
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cpu_name, table
from nas_bert.errors import NasBertError
from nas_bert.export import VARIANTS, export_front, measure_latencies
from nas_bert.latency import hardware_name
from nas_bert.study import load_study
from nas_bert.teacher import load_teacher


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def bench(study: Any, out_dir: Path) -> dict[str, Any]:
    index = json.loads((out_dir / "index.json").read_text())
    teacher = load_teacher(study.cfg.teacher, "cpu")
    rows = []
    for s in index["students"]:
        folder = out_dir / s["name"]
        student = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        ms = measure_latencies(student, folder, teacher, study.cfg.latency)
        rows.append({"name": s["name"], "params": sum(p.numel() for p in student.parameters()),
                     "weights_mb": (folder / "model.safetensors").stat().st_size / 2**20,
                     "int8_mb": (folder / "onnx" / "model.int8.onnx").stat().st_size / 2**20,
                     "folder_mb": folder_mb(folder), "predicted_ms": s.get("predicted_ms"),
                     "teacher_ms": ms["teacher_torch_fp32"], **{k: ms[k] for k in VARIANTS},
                     "speedup": {k: ms["teacher_torch_fp32"] / ms[k] for k in VARIANTS}})
    return {"teacher": study.cfg.teacher, "teacher_params": sum(p.numel() for p in teacher.encoder.parameters()),
            "students": rows}


def report(r: dict[str, Any]) -> str:
    head = ["student", "params", "weights MB", "folder MB", "pred ms", "torch fp32 ms", "onnx fp32 ms", "onnx int8 ms",
            "teacher ms", "x torch", "x onnx", "x int8"]
    rows = []
    for s in r["students"]:
        x = s["speedup"]
        rows.append([s["name"], f"{s['params']:,}", f"{s['weights_mb']:.2f}", f"{s['folder_mb']:.2f}",
                     "-" if s["predicted_ms"] is None else f"{s['predicted_ms']:.3f}",
                     *(f"{s[k]:.3f}" for k in VARIANTS), f"{s['teacher_ms']:.3f}", *(f"{x[k]:.2f}x" for k in VARIANTS)])
    return (f"teacher {r['teacher']}: {r['teacher_params']:,} parameters, PyTorch fp32, timed beside each student\n"
            + table(head, rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="studies/demo.yaml")
    p.add_argument("--db", default=None, help="database URL overriding the study file's")
    p.add_argument("--dir", type=Path, default=None, help="export folder (default: <workdir>/export)")
    p.add_argument("--threads", type=int, default=None, help="override the study's latency threads")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    overrides = {"latency.threads": args.threads} if args.threads else None
    try:
        study = load_study(args.config, args.db, overrides)
        out_dir = args.dir or study.export_dir
        cfg = study.cfg.latency
        print(f"command: {shlex.join(['python', *sys.argv])}")
        machine = cpu_name() if cfg.device == "cpu" else hardware_name(cfg.device)
        print(f"machine: {machine} ({os.cpu_count()} cpus, {platform.machine()}), torch "
              f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, transformers {transformers.__version__}")
        print(f"latency: device {cfg.device}, batch {cfg.batch_size}, seq_len {cfg.seq_len}, threads {cfg.threads}")
        if not (out_dir / "index.json").is_file():
            print(f"no export in {out_dir}; exporting the study's feasible fronts first")
            export_front(study, out_dir, command=shlex.join(["python", *sys.argv]))
        result = bench(study, out_dir)
    except NasBertError as e:
        sys.exit(f"error: {e}")
    print(f"export: {out_dir}")
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
