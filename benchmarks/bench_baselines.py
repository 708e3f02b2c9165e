"""Baselines benchmark: searched students beside what a user gets for free at equal measured latency.

    pip install -e ".[bench]"          # Model2Vec, for the static-embedding family
    python benchmarks/bench_baselines.py --config studies/demo.yaml
    python benchmarks/bench_baselines.py --config studies/demo.yaml --budgets-from-study   # after `nas-bert run`
    python benchmarks/bench_baselines.py --config my.yaml --budgets-from-study --families truncated,spread

Budgets are fractions of the teacher's measured latency (default 1/2, 1/4, 1/8), rounded to
--round ms so that a rerun on a slightly noisier machine lands on the same budgets; a budget at or below
the space's fastest student (predicted) is lifted to the next step above it. For each budget:
- NAS: the study's own stages 4-8 (search, rescoring, layer mapping, distillation, evaluation),
  the same stages `nas-bert run` records, so budgets the study already ran are not redone;
- truncated: the teacher's first k layers copied exactly (DistilBERT-style initialisation);
- uniform: the teacher's depth at one smaller width, extracted from the teacher (ETD), with the
  leading and/or the most important dimensions, heads and neurons (--orders);
- pruned: the teacher's first k layers at full width, their feed-forward pruned to its most important
  neurons (each smaller feed-forward ratio of the search space);
- spread, and spread-pruned: evenly spread layers of the teacher, the first and the last kept
  (sentence-transformers' layer reduction), as they are and with their feed-forwards pruned;
- the same truncated teacher untouched (no training at all: what a user gets in one line);
- Model2Vec: a static model distilled from the teacher in seconds (`model2vec.distill`), the fast extreme.
Each hand-designed family contributes its fastest member measured at >= (1 - tolerance) x the NAS
student's latency: within the tolerance when the family has one, else the nearest slower member,
which the NAS student must then beat while being faster (the table marks it). Every trained student is
distilled with the study's distill settings (same steps, data, losses; baselines use TinyBERT's
uniform layer mapping, NAS students their searched one) and evaluated under one protocol: fidelity on the
WordNet test glosses and on the out-of-domain manpages set (which nothing trains or chooses on),
fine-tuned accuracy, loyalty. All latencies, the teacher's included, come from one interleaved timing
run of randomly initialised copies (latency does not depend on weights; Model2Vec's includes its
tokenisation). Every stage is recorded in the study database: a rerun resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Timings, accuracy_difference, cpu_name, study_budgets, table
from nas_bert.distill import StudentContext, distill_baseline
from nas_bert.evaluate import (
    EvaluationResult,
    evaluate_encoder,
    evaluate_path,
    fidelity_resamples,
    paired_interval,
    stored_evaluation,
    teacher_baseline,
)
from nas_bert.export import save_figure
from nas_bert.latency import build_student, ensure_latency_model, in_fresh_process, measure_callables, measure_models
from nas_bert.model import save_student
from nas_bert.pipeline import Runner, fitted_teacher_ms, shared_stages, student_stages
from nas_bert.record import Record
from nas_bert.space import FAMILIES, Architecture, families
from nas_bert.store import Database, fingerprint
from nas_bert.study import load_study
from nas_bert.supernet import (
    describe,
    pruned_architecture,
    teacher_initialised,
    truncated_architecture,
    uniform_architecture,
)

METRICS = ("fidelity", "ood_fidelity", "accuracy", "accuracy_ratio", "accuracy_ratio_low", "accuracy_ratio_high",
           "label_loyalty", "probability_loyalty")


# What this benchmark's own stages record (`Runner.stage` reads them back on a rerun).
class TeacherTime(Record):
    teacher_ms: float


class BaselineRun(Record):
    """A hand-designed student distilled (`distill_baseline`'s record) and its evaluation."""

    name: str
    arch_hash: str
    architecture: str
    params: int
    mapping: list[int]
    before: dict[str, Any] | None
    after: dict[str, Any]
    step: int
    target_steps: int
    student_path: str | None
    metrics: EvaluationResult


class Untouched(Record):
    metrics: EvaluationResult


class Model2VecRun(Record):
    ms: float
    distill_seconds: float
    dims: int
    metrics: dict[str, float | None]


def candidates(ctx: StudentContext) -> dict[str, tuple[str, Architecture]]:
    """Every hand-designed student: name -> (family, architecture); in a space made from the teacher, its points
    (first k, spread layers, pruned, spread and pruned, uniform, Minitron-style width and depth)."""
    t = ctx.teacher
    if ctx.study.space.layer_slots:
        return families(ctx.study.space, t.embeddings_spec())
    hs = t.hidden_size // int(t.config.num_attention_heads)
    out = {f"truncated-{k}": ("truncated", truncated_architecture(t, k)) for k in range(1, t.num_layers)}
    out.update({f"uniform-{w}": ("uniform", uniform_architecture(t, w)) for w in range(hs, t.hidden_size, hs)})
    full, ratios = int(t.config.intermediate_size), sorted(ctx.study.space.ffn_ratios)
    for inner in (full * r // ratios[-1] for r in ratios[:-1]):
        out.update({f"pruned-{k}-i{inner}": ("pruned", pruned_architecture(t, k, inner)) for k in range(1, t.num_layers + 1)})
    return out


def pick(names: list[str], ms: dict[str, float], target: float, tolerance: float) -> str:
    """The family's fastest member at >= (1 - tolerance) x target, else its slowest (all are faster)."""
    ok = [n for n in names if ms[n] >= (1 - tolerance) * target]
    return min(ok, key=ms.__getitem__) if ok else max(names, key=ms.__getitem__)


def matched(ms: float, target: float, tolerance: float) -> bool:
    """Within `tolerance` of the NAS student's measured latency: a member the targets compare it with."""
    return abs(ms / target - 1) <= tolerance


def evaluate(study: Any, db: Database, folder: str) -> EvaluationResult:
    cfg = study.cfg.evaluate
    subject = str(Path(folder).resolve())
    stored = stored_evaluation(db, study.name, subject, "wordnet", cfg)
    return EvaluationResult(**stored) if stored else evaluate_path(study, folder, False, "wordnet", cfg)


def compact(arch: Architecture) -> str:
    """[width] then A (attention), F (feed-forward), C<k> (separable convolution) per sublayer; - an empty block."""
    code = {"mha": "A", "ffn": "F", "sepconv": "C"}
    return " | ".join(f"[{b.hidden}] " + (" ".join(code[o.kind] + (str(o.kernel) if o.kind == "sepconv" else "")
                                                  for o in b.ops if o.kind != "identity") or "-") for b in arch.blocks)


def _f(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _accuracy(row: dict[str, Any]) -> str:
    """accuracy (its ratio to the teacher's, with the paired 90% interval where the evaluation gave one)."""
    low, high = row.get("accuracy_ratio_low"), row.get("accuracy_ratio_high")
    interval = "" if low is None or high is None else f", {low:.2f}-{high:.2f}"
    return f"{_f(row['accuracy'], 3)} ({_f(row['accuracy_ratio'], 2)}{interval})"


def plot(rows: list[dict[str, Any]], teacher: dict[str, float], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"NAS": ("o", "C0"), "truncated": ("s", "C1"), "truncated (untouched)": ("s", "C4"),
               "uniform (importance)": ("^", "C2"), "uniform (leading)": ("v", "C3"), "pruned": ("P", "C6"),
               "spread": ("X", "C8"), "spread-pruned": ("p", "C7"), "minitron": ("h", "C9"),
               "Model2Vec": ("D", "C5")}
    for i, family in enumerate(sorted({r["family"] for r in rows} - set(markers))):  # any family the table has
        markers[family] = ("*", f"C{i % 10}")
    for ax, metric, label_y in ((axes[0], "accuracy", "downstream accuracy (fine-tuned)"),
                                (axes[1], "ood_fidelity", "fidelity out of domain (manpages)")):
        for label, (marker, colour) in markers.items():
            pts = sorted({(r["measured_ms"], r[metric]) for r in rows if r["family"] == label and r[metric] is not None})
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, color=colour,
                        linestyle="-" if label == "NAS" else ":", label=label)
        if metric == "accuracy":
            ax.scatter([teacher["ms"]], [teacher["accuracy"]], marker="*", s=150, color="k", label="teacher")
        ax.set_xscale("log")
        ax.set_xlabel("measured latency (ms, log scale)")
        ax.set_ylabel(label_y)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("students at equal latency")
    return save_figure(fig, path)


class StaticEncoder(torch.nn.Module):
    """A Model2Vec static model as an encoder the evaluation can fine-tune: token vectors are table rows."""

    def __init__(self, table: Any) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.table = torch.nn.Embedding.from_pretrained(torch.tensor(table, dtype=torch.float32), freeze=False)
        self.config = SimpleNamespace(hidden_size=self.table.embedding_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=self.table(input_ids))


def model2vec_row(study: Any, r: Runner, ctx: StudentContext, run_teacher_ms: float,
                  stage: Any) -> dict[str, Any] | None:
    """Distil Model2Vec from the teacher folder, time `encode` of one sequence and evaluate it like the students."""
    try:
        from model2vec.distill import distill
    except ImportError:
        print("Model2Vec is not installed (pip install -e \".[bench]\"): its row is left out")
        return None
    from transformers import PreTrainedTokenizerFast

    def run() -> Model2VecRun:
        t0 = time.perf_counter()
        m2v = distill(model_name=ctx.teacher.source, pca_dims=256, device="cpu")
        seconds = time.perf_counter() - t0
        text = " ".join(["word"] * (study.cfg.latency.seq_len - 2))
        torch.set_num_threads(study.cfg.latency.threads)
        ms, teacher_ms = measure_callables([lambda: m2v.encode([text]), _teacher_call(ctx, study)], study.cfg.latency)
        tok = PreTrainedTokenizerFast(tokenizer_object=m2v.tokenizer)
        tok.pad_token = tok.pad_token or "[PAD]"
        cfg = study.cfg.evaluate
        base = teacher_baseline(r.db, study.name, ctx.teacher, cfg, "wordnet", study.device())
        metrics = evaluate_encoder(StaticEncoder(m2v.embedding), tok, ctx.teacher, cfg, "wordnet", study.device(), base)
        return Model2VecRun(ms=ms * run_teacher_ms / teacher_ms, distill_seconds=seconds, dims=int(m2v.dim),
                            metrics={m: metrics.get(m) for m in METRICS})

    res = stage("baseline-model2vec", "", ("evaluate",), run, Model2VecRun)
    if res is None:
        return None
    return {"family": "Model2Vec", "student": f"static, {res.dims} dims ({res.distill_seconds:.0f} s to distil)",
            "measured_ms": res.ms, "params": None, **res.metrics}


def _teacher_call(ctx: StudentContext, study: Any) -> Any:
    """The teacher on one sequence, to scale a separate timing run to the students' run."""
    teacher = copy.deepcopy(ctx.teacher.encoder).cpu().eval()
    ids = torch.randint(0, int(ctx.teacher.config.vocab_size), (study.cfg.latency.batch_size, study.cfg.latency.seq_len))

    def call() -> Any:
        with torch.inference_mode():
            return teacher(input_ids=ids, attention_mask=torch.ones_like(ids))

    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="studies/demo.yaml")
    ap.add_argument("--fractions", default="0.5,0.25,0.125", help="budgets as fractions of the teacher's latency")
    ap.add_argument("--round", type=float, default=0.5, help="round budgets to this many ms")
    ap.add_argument("--budgets-from-study", action="store_true",
                    help="use the study file's budgets (search.budgets_ms, and search.budgets_x of the teacher's latency "
                         "at the fit: the stages `nas-bert run` finished are reused)")
    ap.add_argument("--only", default="", help="with --budgets-from-study: these of the study's budgets (ms, comma-separated)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--matched-only", action="store_true",
                    help="distil only the family members within --tolerance of the NAS student's measured latency (the "
                         "ones the targets compare it with); a family with none there is left out of the table")
    ap.add_argument("--orders", default="importance,leading", help="ETD unit orders for the uniform family")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help=f"the hand-designed families to distil beside the NAS student (of {', '.join(FAMILIES)})")
    ap.add_argument("--recorded", action="store_true",
                    help="run none of this benchmark's stages: the table of the students it has finished so far (while it "
                         "runs elsewhere, or after it was stopped; the study's own stages are read as `nas-bert run` "
                         "recorded them)")
    args = ap.parse_args()
    wanted = [f for f in args.families.split(",") if f]
    if unknown := sorted(set(wanted) - set(FAMILIES)):
        sys.exit(f"--families {args.families}: unknown {', '.join(unknown)}; pick from {', '.join(FAMILIES)}")
    t0 = time.time()
    study = load_study(args.config)
    orders = [o for o in args.orders.split(",") if o]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    r = Runner(study)
    shared_stages(r, study)
    ctx = StudentContext.open(study)
    cands = {n: (f, a) for n, (f, a) in candidates(ctx).items() if f in wanted}
    vocab = int(ctx.teacher.config.vocab_size)

    def time_teacher() -> TeacherTime:
        ms = measure_models([copy.deepcopy(ctx.teacher.encoder).cpu()], study.cfg.latency, vocab)[0]
        return TeacherTime(teacher_ms=ms)

    def stage(name: str, key: str, sections: tuple[str, ...], fn: Any, kind: Any,
              after: tuple[tuple[str, str], ...] = ()) -> Any:
        """The benchmark's stage: run (or read back) as the study's stages are, redone when a stage in `after` was;
        with --recorded, only read back what finished from these inputs (None for the rest)."""
        if not args.recorded:
            return r.stage(name, key, sections, fn, kind, after)
        current = r.recorded(name, key)[0] == fingerprint(r.inputs(name, key, sections, after))
        return r.result(name, key, kind) if current else None

    timed = stage("baseline-teacher-latency", "", ("latency",), time_teacher, TeacherTime)
    if timed is None:
        sys.exit("--recorded: nothing of this benchmark is recorded yet; run it without --recorded")
    teacher_ms = timed.teacher_ms

    fractions = [float(f) for f in args.fractions.split(",")]
    budgets = [round(max(args.round, round(f * teacher_ms / args.round) * args.round), 6) for f in fractions]
    if args.budgets_from_study:  # as `nas-bert run` resolves them: its finished stages are these budgets' stages
        budgets = study_budgets(study, r.db, args.only)
        if study.cfg.search.budgets_x:  # fractions of the teacher timed at the study's fit, not of this run's time
            teacher_ms = fitted_teacher_ms(study, r.db)
        fractions = [b / teacher_ms for b in budgets]
    # A budget below the space's fastest student would leave nothing to search: lift it to the next step above.
    fastest = ensure_latency_model(r.db, study.space, ctx.teacher.embeddings_spec(), study.cfg.latency,
                                   progress=False).fastest_possible(study.space, ctx.teacher.embeddings_spec())
    for i, b in enumerate(budgets):
        if b <= fastest:
            budgets[i] = round(math.floor(fastest / args.round + 1) * args.round, 6)
            print(f"budget {b:g} ms ({fractions[i]:g} of the teacher) is not above the space's fastest student "
                  f"({fastest:.2f} ms predicted): using {budgets[i]:g} ms")
    budgets = sorted(set(budgets), reverse=True)
    nas = {b: student_stages(r, study, b) for b in budgets}
    nas_arch = {b: Architecture.from_json(s.chosen.arch_json) for b, s in nas.items()}

    def time_all() -> Timings:
        archs = {**{f"nas-{b:g}ms": a for b, a in nas_arch.items()}, **{n: a for n, (_, a) in cands.items()}}
        # a student reorders its output into the teacher's dimensions only after a narrower block (`reorders`)
        models = [build_student(a) for a in archs.values()] + [copy.deepcopy(ctx.teacher.encoder).cpu()]
        # the teacher again, in the same run; each student relative to it timed beside it (the host's speed moves).
        # Timed as the finalists are: latency.finalist_runs runs, each in a new process (the process that trained
        # times some models 5-12% off against the others), each model's median of them: one run in the trained
        # process put a member 2% under an export the finalists' three runs had put 5% over it
        runs = [in_fresh_process(measure_models, models, study.cfg.latency, vocab, None, len(models) - 1)
                for _ in range(study.cfg.latency.finalist_runs)]
        names = [*archs, "teacher"]
        if len(runs) > 1:  # how far the runs moved each model against the first NAS student: the match's noise
            worst = max(max(run[i] / run[0] for run in runs) / min(run[i] / run[0] for run in runs) - 1
                        for i in range(1, len(names) - 1))
            print(f"{len(runs)} timing runs; a member's time against the first NAS student moved by up to {worst:.1%}")
        return Timings({n: float(statistics.median(v)) for n, v in zip(names, zip(*runs, strict=True), strict=True)})

    key = ",".join(f"{b:g}" for b in budgets)
    # timed again when a budget's finalists chose anew (another student, or the same one by other timing runs)
    timings = stage("baseline-latency", key, ("supernet", "latency", "search"), time_all, Timings,
                    tuple(("finalists", f"{b:g}ms") for b in budgets))
    if timings is None:
        sys.exit("--recorded: this benchmark's timing run of these budgets is not recorded yet; run it without --recorded")
    ms = timings.root
    run_teacher_ms = ms.get("teacher", teacher_ms)  # the students' ratios to the teacher come from one run
    def untouched(name: str, arch: Architecture) -> Untouched:
        if study.space.layer_slots:  # the same cut, as the one-block student of the teacher's first layers
            arch = truncated_architecture(ctx.teacher, arch.depth // 2)
        folder = save_student(teacher_initialised(arch, ctx.teacher), ctx.teacher,
                              study.workdir / "baselines" / f"{name}-untouched")
        return Untouched(metrics=evaluate(study, r.db, str(folder)))

    rows: list[dict[str, Any]] = []
    for b in sorted(budgets):  # the cheapest budget first: a stopped run has whole budgets sooner
        target = ms[f"nas-{b:g}ms"]
        e, chosen = nas[b].evaluate, nas[b].chosen
        who = compact(nas_arch[b]) if chosen.origin == "search" else f"{chosen.name} (a baseline won the finalists)"
        rows.append({"budget_ms": b, "family": "NAS", "student": who, "architecture": str(nas_arch[b]),
                     "measured_ms": target, "params": nas_arch[b].params(), **{m: getattr(e, m) for m in METRICS},
                     "test_correct": e.test_correct, "path": e.subject})
        for family in (f for f in FAMILIES if f in wanted):
            names = [n for n, (f, _) in cands.items() if f == family]
            if not names:  # no pruned family: the space has one feed-forward ratio
                continue
            name = pick(names, ms, target, args.tolerance)
            if args.matched_only and not matched(ms[name], target, args.tolerance):
                continue
            arch = cands[name][1]
            per_order = {"truncated": ["leading"], "uniform": orders}.get(family, ["importance"])
            if study.space.layer_slots:  # the space's points: its one (importance) extraction
                per_order = ["leading" if family == "truncated" else "importance"]
            for order in per_order:
                run = name if family != "uniform" else f"{name}-{order}"
                label = family if family != "uniform" else f"uniform ({order})"

                def distilled(run: str = run, arch: Architecture = arch, order: str = order,
                              family: str = family) -> BaselineRun:
                    d = distill_baseline(ctx, run, arch, ctx.importance() if order == "importance" else None,
                                         batches=ctx.unit_batches(), family=family)
                    return BaselineRun(**d, metrics=evaluate(study, r.db, d["student_path"]))

                res = stage("baseline", run, ("distill", "evaluate"), distilled, BaselineRun)
                if res is None:  # --recorded, and this student is not finished yet
                    continue
                who = f"{name}: {compact(arch)}" if study.space.layer_slots else describe(family, arch, order)
                rows.append({"budget_ms": b, "family": label, "student": who,
                             "measured_ms": ms[name], "params": arch.params(),
                             **{m: getattr(res.metrics, m) for m in METRICS},
                             "test_correct": res.metrics.test_correct, "path": res.student_path})
            if family == "truncated":
                kept = stage("baseline-untouched", name, ("evaluate",),
                             lambda name=name, arch=arch: untouched(name, arch), Untouched)
                if kept is not None:
                    rows.append({"budget_ms": b, "family": "truncated (untouched)", "student": (
                                 name if study.space.layer_slots else describe(family, arch)) + ", no training",
                                 "measured_ms": ms[name], "params": arch.params(),
                                 **{m: getattr(kept.metrics, m) for m in METRICS},
                                 "test_correct": kept.metrics.test_correct})
    static = model2vec_row(study, r, ctx, run_teacher_ms, stage)
    if static is not None:
        rows.append({"budget_ms": min(budgets), **static})
    rows.sort(key=lambda row: -row["budget_ms"])  # the table reads from the largest budget down
    resampled: dict[str, dict[str, list[float]]] = {}  # each student's fidelities on shared resamples of the texts

    def fidelity_difference(row: dict[str, Any], nas_row: dict[str, Any], key: str) -> str:
        """The member's fidelity minus the NAS student's on the same texts, its paired 90% bootstrap interval."""
        if row is nas_row or not row.get("path") or not nas_row.get("path"):
            return "-"
        for p in (row["path"], nas_row["path"]):
            if p not in resampled:
                resampled[p] = fidelity_resamples(p, ctx.teacher, study.cfg.evaluate, device=study.device())
        a, b = resampled[row["path"]].get(key), resampled[nas_row["path"]].get(key)
        if not a or not b:
            return "-"
        lo, hi = paired_interval(a, b)
        return f"{row[key] - nas_row[key]:+.3f} ({lo:+.3f}..{hi:+.3f})"

    teacher_acc = nas[budgets[0]].evaluate.teacher_accuracy
    out = study.workdir / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"teacher_ms": teacher_ms, "teacher_ms_same_run": run_teacher_ms,
                                                  "teacher_accuracy": teacher_acc,
                                                  "budgets": budgets, "rows": [
                                                      {k: v for k, v in row.items() if k not in ("test_correct", "path")}
                                                      for row in rows]}, indent=2))
    png = plot(rows, {"ms": run_teacher_ms, "accuracy": teacher_acc}, out / "baselines.png")
    lines = []
    for row in rows:
        nas_row = next(x for x in rows if x["budget_ms"] == row["budget_ms"] and x["family"] == "NAS")
        nas_ms = nas_row["measured_ms"]
        ratio = row["measured_ms"] / nas_ms
        flag = "" if row["family"] == "NAS" or matched(row["measured_ms"], nas_ms, args.tolerance) else " (not matched)"
        params = "-" if row["params"] is None else f"{row['params'] / 1e6:.2f}M"
        lines.append([f"{row['budget_ms']:g} ({row['budget_ms'] / teacher_ms:.2f}x)", row["family"], row["student"],
                      f"{row['measured_ms']:.2f} ({row['measured_ms'] / run_teacher_ms:.2f})", f"{ratio:.2f}{flag}", params,
                      _f(row["fidelity"], 3), fidelity_difference(row, nas_row, "fidelity"), _f(row["ood_fidelity"], 3),
                      fidelity_difference(row, nas_row, "ood_fidelity"),
                      _accuracy(row), "-" if row is nas_row else accuracy_difference(row.get("test_correct"), nas_row.get("test_correct")),
                      _f(row["label_loyalty"], 3), _f(row["probability_loyalty"], 3)])
    print(f"\nteacher {study.cfg.teacher}: {teacher_ms:.2f} ms when the budgets were set, {run_teacher_ms:.2f} ms in "
          f"the students' timing run; accuracy {teacher_acc:.3f}; "
          f"distillation {study.cfg.distill.steps} steps x {study.cfg.distill.batch_size} sequences for every student\n")
    print(table(["budget ms (of teacher)", "family", "student", "measured ms (/ teacher)", "ms / NAS", "params",
                 "fidelity (WordNet)", "- NAS (paired 90%)", "fidelity (manpages)", "- NAS (paired 90%)",
                 "accuracy (/ teacher, 90%)", "accuracy - NAS (paired 90%)", "label loyalty", "prob. loyalty"],
                lines))
    print("NAS students: [block width] A = attention, F = feed-forward, C<k> = separable convolution of kernel k")
    print(f"\n{png}\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
