"""Which of the teacher's layers a student keeps: fidelity and fine-tuned accuracy, untouched and distilled.

    python benchmarks/bench_layers.py --config studies/quality.yaml 0,1,2 0,2,5 0,1,5 0,4,5
    python benchmarks/bench_layers.py --config studies/quality.yaml --distil 0,1,2 0,1,5 \
        NAS=studies/quality/export/<the 1/2 student>

Each argument is a set of the teacher's layers (0-based, comma-separated) kept whole, the others dropped, with
":i<neurons>" their feed-forwards pruned to their most important neurons (0,2,3,5:i768) and a layer's own heads and
neurons after its index (0,2h8i512,4h8i512,5: h0 or i0 drops that sublayer), or NAME=FOLDER: the architecture of a
distilled or exported student. First every point and the teacher are timed in one interleaved run (each relative to
the teacher beside it) and scored as the study's search scores a trial; --latency-only stops there: which points a
budget holds, and how the search would rank them. Each is extracted from the teacher as every point of the space
made from the teacher is (the teacher's own weights, nothing trained) and evaluated under the study's `evaluate`
protocol; with --distil it is also distilled with the study's recipe (the baselines' uniform layer mapping, the
study's steps) and evaluated again. The table gives fidelity on the WordNet test glosses and on the man pages,
fine-tuned accuracy, and each accuracy minus the first row's with its paired 90% interval over the test examples.
Why: at one latency, students keeping the teacher's lower layers may fine-tune better while those keeping its upper
layers agree with it better; this says how much of either comes from the layers kept and how much from the
distillation. Every row is a stage of the study's database: a rerun resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Timings, accuracy_difference, cpu_name, table
from nas_bert.distill import StudentContext, distill_baseline
from nas_bert.evaluate import EvaluationResult, evaluate_path
from nas_bert.latency import build_student, measure_models
from nas_bert.model import save_student
from nas_bert.pipeline import Runner, shared_stages
from nas_bert.record import Record
from nas_bert.search import open_context
from nas_bert.space import Architecture
from nas_bert.space.families import layers_point
from nas_bert.study import load_study

LAYER = re.compile(r"(\d+)(?:h(\d+))?(?:i(\d+))?")  # a kept layer: its index, its own heads and neurons


class LayersRun(Record):
    architecture: str
    metrics: EvaluationResult


def architecture_of(spec: str, study: Any, ctx: StudentContext) -> tuple[str, Architecture]:
    """(row name, architecture) of one argument: a layer set, or NAME=FOLDER."""
    if "=" in spec:
        name, folder = spec.split("=", 1)
        config = Path(folder) / "config.json"
        arch = json.loads(config.read_text()).get("architecture") if config.is_file() else None
        if not isinstance(arch, dict):
            sys.exit(f"{spec}: {folder} is not a nas-bert student folder (no architecture in config.json)")
        return name, Architecture.from_dict(arch)
    kept, _, size = spec.partition(":i")
    try:
        sizes = {}
        for token in kept.split(","):
            if not (m := LAYER.fullmatch(token.strip())):
                raise ValueError(token)
            sizes[int(m[1])] = (None if m[2] is None else int(m[2]), None if m[3] is None else int(m[3]))
        layers, inner = sorted(sizes), int(size) if size else None
    except ValueError:
        sys.exit(f"{spec}: give the teacher's layers as comma-separated numbers from 0 (e.g. 0,2,5), optionally "
                 "with their feed-forward neurons (0,2,3,5:i768) or a layer's own heads and neurons (0,2h6i512,5; "
                 "h0 or i0 drops that sublayer), or NAME=FOLDER")
    n = ctx.teacher.num_layers
    if not layers or layers[0] < 0 or layers[-1] >= n:
        sys.exit(f"{spec}: the teacher has layers 0..{n - 1}; give some of those")
    arch = layers_point(study.space, ctx.teacher.embeddings_spec(), layers, inner=inner, sizes=sizes)
    if arch is None:
        sys.exit(f"{spec}: the study's space is not made from the teacher (set search_space: auto) or lacks one of "
                 f"these sizes (heads: {sorted(study.space.head_counts)}; feed-forward neurons: "
                 f"{sorted(study.space.ffn_sizes)})")
    own = [f"{b}" + "".join(f"{k}{v}" for k, v in zip("hi", sizes[b], strict=True) if v is not None) for b in layers]
    return "layers " + ",".join(own) + (f", feed-forward {inner}" if inner else ""), arch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--distil", action="store_true", help="also distil each with the study's recipe")
    ap.add_argument("--latency-only", action="store_true",
                    help="time the students beside the teacher and stop (no evaluation): which points a budget holds")
    ap.add_argument("students", nargs="+", help="layer sets (0,2,5) or NAME=FOLDER; the first is the reference")
    args = ap.parse_args()
    t0 = time.time()
    study = load_study(args.config)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    r = Runner(study)
    shared_stages(r, study)
    ctx = StudentContext.open(study)
    cfg = study.cfg.evaluate
    out = study.workdir / "layers"
    points = dict(architecture_of(spec, study, ctx) for spec in args.students)
    search = open_context(study, progress=False)  # its latency model; each point scored as the search scores it

    def time_all() -> Timings:  # every point and the teacher in one interleaved run, each relative to the teacher
        models = [build_student(a) for a in points.values()] + [copy.deepcopy(ctx.teacher.encoder).cpu()]
        ms = measure_models(models, study.cfg.latency, int(ctx.teacher.config.vocab_size), reference=len(models) - 1)
        return Timings(dict(zip([*points, "teacher"], ms, strict=True)))

    ms = r.stage("layers-latency", ",".join(a.hash() for a in points.values()), ("latency",), time_all, Timings).root
    print(table(["student", "predicted ms", "measured ms", "/ teacher",
                 f"search proxy ({search.proxy}; lower ranks first)"],
                [[name, f"{search.latency.predict(a):.2f}", f"{ms[name]:.2f}", f"{ms[name] / ms['teacher']:.3f}",
                  f"{search.score(a):.4f}"] for name, a in points.items()]))
    print(f"teacher {ms['teacher']:.2f} ms in this run\n")
    if args.latency_only:
        return
    rows: list[tuple[str, str, EvaluationResult]] = []
    for name, arch in points.items():
        key = arch.hash()

        def untouched(arch: Architecture = arch, key: str = key) -> LayersRun:
            module = ctx.start(arch, "spread")  # the teacher's own weights for this point, nothing trained
            folder = save_student(module.student, ctx.teacher, out / f"untouched-{key}")
            return LayersRun(architecture=str(arch), metrics=evaluate_path(study, str(folder), cfg=cfg))

        def distilled(arch: Architecture = arch, key: str = key) -> LayersRun:
            d = distill_baseline(ctx, f"layers-{key}", arch, batches=ctx.unit_batches(), family="spread")
            return LayersRun(architecture=str(arch), metrics=evaluate_path(study, d["student_path"], cfg=cfg))

        rows.append((name, "untouched", r.stage("layers-untouched", key, ("evaluate",), untouched, LayersRun).metrics))
        if args.distil:
            rows.append((name, "distilled", r.stage("layers-distilled", key, ("distill", "evaluate"), distilled,
                                                    LayersRun).metrics))
    lines = []
    ref = {mode: m for _, mode, m in rows[: 1 + args.distil]}
    for name, mode, m in rows:
        versus = "-" if m is ref[mode] else accuracy_difference(m.test_correct, ref[mode].test_correct)
        lines.append([name, mode, f"{m.fidelity:.3f}", "-" if m.ood_fidelity is None else f"{m.ood_fidelity:.3f}",
                      f"{m.accuracy:.3f}", versus])
    print(table(["student", "weights", "fidelity (WordNet)", "fidelity (man pages)", "accuracy",
                 f"accuracy - {rows[0][0]} (paired 90%)"], lines))
    print(f"\nteacher accuracy {rows[0][2].teacher_accuracy:.3f}; accuracy: {cfg.finetune_steps} fine-tuning steps; "
          f"distillation {study.cfg.distill.steps} steps ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
