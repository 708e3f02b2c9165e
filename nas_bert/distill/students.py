"""Chosen students: resolve a trial to its architecture, extract it, distil it (stage 7).

`StudentContext` loads what stages 6-7 share once (teacher, trained supernet, corpus); the
layer-mapping search calls `proxy_fitness` many times on it, `distill` trains one student fully.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import optuna
import torch
from sqlalchemy import select

from nas_bert.data import fixed_batches, load_corpus, make_collator
from nas_bert.distill.mapping import MappingSearch, best_memoised, decided_mapping
from nas_bert.distill.objective import (
    DistillModule,
    DistillObjective,
    TeacherCache,
    TeacherTaps,
    check_mapping,
    distill_points,
    uniform_mapping,
)
from nas_bert.errors import NasBertError
from nas_bert.model import NasBertModel, save_student
from nas_bert.record import Record
from nas_bert.search import budgets_in_db, load_trained, optuna_study_name, storage_for
from nas_bert.space import Architecture
from nas_bert.store import ArchitectureRow, Database, DistillRun
from nas_bert.study import Study
from nas_bert.supernet import Supernet, teacher_initialised
from nas_bert.teacher import Importance, Teacher, load_teacher_config, teacher_importance
from nas_bert.train import BestKeeper, CheckpointDir, make_accelerator, train_loop


class MappingFitness(Record):
    """A layer mapping (the teacher layer each student distillation point learns from) and its proxy loss."""

    mapping: list[int]
    fitness: float  # the held-out loss after the short proxy distillation (lower is better)


class MappingResult(Record):
    """Stage 6's result: the best layer mapping found, the baseline mappings and the search's record."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"decision"})

    study: str
    arch_hash: str
    architecture: str
    points: int  # the student's distillation points
    teacher_layers: int
    mappings_possible: int  # monotone mappings of the points onto the teacher's layers
    method: str  # "enumerated" or "genetic"
    best: MappingFitness
    baselines: dict[str, MappingFitness]  # "uniform" (TinyBERT's), "last", ...
    improvement_vs_uniform: float
    hall_of_fame: list[MappingFitness]
    logbook: list[dict[str, Any]]  # per generation: gen, evals, min, avg, max (empty when enumerated)
    fitness_evaluations: int  # proxy distillations this run
    decision: dict[str, Any] | None = None  # the searched mapping confirmed against the best heuristic (`confirm`)
    trial: int | None  # None: a hand-designed student
    budget_ms: float | None
    seconds: float


class DistillResult(Record):
    """Stage 7's result: the student distilled, its mapping, the held-out metrics before and after, its folder."""

    study: str
    trial: int | None  # None: a hand-designed student
    start: str  # "search" (the supernet's slices) or the hand-designed family (the teacher's weights)
    budget_ms: float | None
    arch_hash: str
    architecture: str
    params: int
    mapping: list[int]
    mapping_origin: str  # "searched", "uniform" or "given"
    step: int
    target_steps: int
    before: dict[str, Any] | None  # held-out metrics at step 0 (None: not recorded)
    after: dict[str, Any]  # the loop's last held-out metrics, with "best": the step and value of the weights kept
    student_path: str | None  # None until the last step
    inputs: str  # the distillation's identity (`distill_key`)
    seconds: float


def mapping_summary(m: MappingResult | None, d: DistillResult) -> dict[str, Any]:
    """The layer mapping a student was distilled with and stage 6's reason for it (the searched mapping confirmed
    against the best heuristic, else the heuristic kept): what `nas-bert run`'s summary says of the mapping."""
    return {"mapping": d.mapping, "origin": d.mapping_origin, "reason": (m.decision or {}).get("reason") if m else None}


def resolve_budget(study: Study, budget: float | None) -> float:
    budgets = budgets_in_db(study)
    if budget is not None:
        if budget not in budgets:
            raise NasBertError(f"no search for budget {budget:g} ms in study '{study.name}'; searched: {budgets or 'none'}")
        return budget
    if len(budgets) != 1:
        raise NasBertError(f"study '{study.name}' has searches for budgets {budgets}; pick one with --budget"
                           if budgets else f"study '{study.name}' has no search yet; run `nas-bert search` first")
    return budgets[0]


def trial_architecture(db: Database, study: Study, trial: int, budget: float) -> Architecture:
    """The architecture a completed trial of the budget's search scored."""
    st = optuna.load_study(study_name=optuna_study_name(study, budget), storage=storage_for(study))
    trials = {t.number: t for t in st.get_trials(deepcopy=False)}
    if trial not in trials or trials[trial].state != optuna.trial.TrialState.COMPLETE:
        done = sorted(n for n, t in trials.items() if t.state == optuna.trial.TrialState.COMPLETE)
        raise NasBertError(f"trial {trial} is not a completed trial of the {budget:g} ms search "
                           f"(completed: {done[0] if done else '-'}..{done[-1] if done else '-'}); see `nas-bert pareto`")
    h = trials[trial].user_attrs["arch_hash"]
    with db.session() as s:
        row = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name, ArchitectureRow.hash == h)).one()
        return Architecture.from_json(row.arch_json)


@dataclass
class StudentContext:
    study: Study
    db: Database
    teacher: Teacher
    supernet: Supernet
    corpus: Any
    collator: Any
    checkpoint_sha: str
    taps: TeacherTaps | None = None
    _unit_batches: list[dict[str, torch.Tensor]] | None = None
    _importance: Importance | None = None
    _teacher_net: Supernet | None = None
    _val: dict[tuple[int, int], tuple[list[dict[str, torch.Tensor]], dict[Any, Any]]] = field(default_factory=dict)
    _cache: TeacherCache | None = None

    @classmethod
    def open(cls, study: Study) -> StudentContext:
        db = Database(study.db_url)
        device = study.device()
        ckpt, teacher, supernet = load_trained(db, study, device)
        corpus = load_corpus(study.cfg.corpus, teacher.tokenizer)
        # masked text only when a loss reads the teacher's MLM predictions
        collator = make_collator(teacher.tokenizer, study.cfg.corpus, mlm=uses_mlm_logits(study, teacher))
        taps = TeacherTaps(teacher) if study.cfg.distill.weights.attention > 0 else None
        return cls(study, db, teacher, supernet, corpus, collator, ckpt.sha256, taps)

    def module(self, arch: Architecture, freeze_embeddings: bool = False) -> DistillModule:
        """The extracted student (supernet slices + teacher embeddings) with its projections."""
        return self.wrap(self.supernet.extract(arch, self.teacher.encoder.embeddings), arch, freeze_embeddings)

    def start(self, arch: Architecture, origin: str = "search", freeze_embeddings: bool = False) -> DistillModule:
        """A student's starting weights by where it comes from: the supernet's slices for a searched student,
        the teacher's own weights for a hand-designed one (its units ranked by importance for a narrower width)."""
        if origin == "search":
            return self.module(arch, freeze_embeddings)
        if self.study.space.layer_slots:  # a hand-designed point: the untrained supernet's copy of the teacher
            return self.wrap(self.teacher_supernet().extract(arch, self.teacher.encoder.embeddings), arch,
                             freeze_embeddings)
        batches = self.unit_batches()
        student = teacher_initialised(arch, self.teacher, self.importance() if origin in ("uniform", "pruned") else None, batches)
        return self.wrap(student, arch, freeze_embeddings)

    def teacher_supernet(self) -> Supernet:
        """The supernet as built from the teacher, before any training: its points are the teacher's most
        important units, so a hand-designed point extracted from it is that recipe's student exactly. The trained
        supernet itself where it never trained (`supernet.steps` 0)."""
        if self._teacher_net is None:
            from nas_bert.supernet import build_supernet

            trained = self.study.cfg.supernet.steps > 0
            self._teacher_net = build_supernet(self.study, self.teacher, self.study.cfg.supernet.seed, self.corpus
                                               ).eval() if trained else self.supernet
        return self._teacher_net

    def unit_batches(self) -> list[dict[str, torch.Tensor]]:
        """The corpus batches that rank the teacher's units and fit output predictions (as the supernet's)."""
        if self._unit_batches is None:
            cfg, device = self.study.cfg.supernet, self.study.device()
            batches = fixed_batches(self.corpus["train"], make_collator(self.teacher.tokenizer, self.study.cfg.corpus),
                                    cfg.init_batches, cfg.batch_size, seed=cfg.seed)
            self._unit_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        return self._unit_batches

    def importance(self) -> Importance:
        if self._importance is None:
            self._importance = teacher_importance(self.teacher, self.unit_batches())
        return self._importance

    def wrap(self, student: NasBertModel, arch: Architecture, freeze_embeddings: bool = False) -> DistillModule:
        """Any student (extracted, or copied from the teacher) with its distillation projections."""
        student.embeddings.requires_grad_(not freeze_embeddings)
        return DistillModule(student, arch, self.teacher.hidden_size)

    def objective(self, arch: Architecture, mapping: list[int], val_batches: int, batch_size: int) -> DistillObjective:
        """The distillation objective on the fixed validation batches; the batches and the teacher's outputs on
        them are made once per context (the finalists' and the mapping search's many short runs share them)."""
        cfg = self.study.cfg.distill
        key = (val_batches, batch_size)
        if key not in self._val:
            val = fixed_batches(self.corpus["validation"], self.collator, val_batches, batch_size, seed=4321)
            device = self.study.device()
            self._val[key] = ([{k: v.to(device) for k, v in b.items()} for b in val], {})
        val, teacher_out = self._val[key]
        if self._cache is None and cfg.teacher_cache_mb > 0:
            self._cache = TeacherCache(cfg.teacher_cache_mb)
        return DistillObjective(self.teacher, arch, mapping, cfg.weights.model_dump(), cfg.relation_heads,
                                cfg.temperature, val, self.taps, teacher_out, self._cache)


def uses_mlm_logits(study: Study, teacher: Teacher) -> bool:
    """Whether distillation reads the teacher's MLM predictions (then, and only then, text is masked)."""
    return teacher.mlm is not None and study.cfg.distill.weights.logits > 0


def proxy_fitness(ctx: StudentContext, arch: Architecture, mapping: list[int], origin: str = "search",
                  seed: int | None = None, steps: int | None = None) -> float:
    """Jiao et al.'s cheap fitness: a short distillation on a corpus sample, then the held-out
    primary loss (what the teacher is used for; comparable across mappings). `seed` and `steps` default to the
    mapping settings' (a confirmation run gives its own)."""
    mc, dc = ctx.study.cfg.mapping, ctx.study.cfg.distill
    steps = steps or mc.proxy_steps
    cfg = dc.model_copy(update={"steps": steps, "batch_size": mc.proxy_batch_size, "grad_accum": 1,
                                "warmup_steps": max(1, steps // 10), "eval_every": steps,
                                "seed": mc.seed if seed is None else seed})
    sample = ctx.corpus["train"].select(range(min(mc.proxy_examples, len(ctx.corpus["train"]))))
    objective = ctx.objective(arch, mapping, mc.proxy_val_batches, mc.proxy_batch_size)
    # the embedding tables are most of a small student's parameters and the mapping is about
    # the layers, so the proxy keeps them fixed (a third of the proxy's time was their AdamW step)
    student = ctx.start(arch, origin, freeze_embeddings=True).to(ctx.study.device())  # where its batches are
    report = train_loop(model=student, objective=objective, dataset=sample,
                        collator=ctx.collator,
                        cfg=cfg, total_steps=cfg.steps, ckpts=None, accelerator=make_accelerator(ctx.study.device()),
                        meta={}, desc="proxy", progress=False)
    return float(report["primary"])


def mapping_origin(ctx: StudentContext, start: str) -> str:
    """Where a student's weights start, for the mapping search's protocol: the supernet checkpoint it is
    sliced from (a retrained supernet makes old fitness values stale), else the hand-designed start."""
    return ctx.checkpoint_sha if start == "search" else start


def best_mapping(db: Database, study: Study, arch: Architecture, origin: str | None = None) -> tuple[list[int], str]:
    """The layer-mapping search's best mapping for this student under the current proxy protocol, else
    TinyBERT's uniform one."""
    decided = decided_mapping(db, study, arch, origin)
    if decided is not None:  # the searched mapping confirmed against the heuristics, or the heuristic that held
        return decided
    best = best_memoised(db, study, arch, origin)
    if best is not None:
        return best[0], "searched"
    n = int(load_teacher_config(study.cfg.teacher).num_hidden_layers)
    return uniform_mapping(len(distill_points(arch)), n), "uniform"


def distill(study: Study, trial: int, budget: float | None = None, steps: int | None = None,
            mapping: list[int] | None = None, stop_after: int | None = None) -> DistillResult:
    """Stage 7 for one searched student (a trial of the budget's search); see `distill_student` (and
    `choose.distill_chosen` for the budget's chosen student, searched or hand-designed)."""
    budget = resolve_budget(study, budget)
    arch = trial_architecture(Database(study.db_url), study, trial, budget)
    return distill_student(study, arch, "search", budget, trial, steps, mapping, stop_after)


def distill_student(study: Study, arch: Architecture, start: str, budget: float | None, trial: int | None = None,
                    steps: int | None = None, mapping: list[int] | None = None,
                    stop_after: int | None = None) -> DistillResult:
    """Stage 7 for one student, searched (`start` "search": the supernet's slices) or hand-designed
    ("truncated", "uniform": the teacher's weights): resumable, recorded, saved as a Hugging Face folder.

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus, the
    study's `distill` section and the budget's layer mapping stage. Returns a `DistillResult`."""
    cfg = study.cfg.distill
    steps = steps or cfg.steps
    db = Database(study.db_url)
    origin = "given"
    ctx = StudentContext.open(study)
    if mapping is None:
        mapping, origin = best_mapping(db, study, arch, mapping_origin(ctx, start))
    mapping = check_mapping(mapping, arch, ctx.teacher.num_layers)
    key = distill_key(ctx, arch, start, mapping)
    root = study.workdir / "distill" / arch.hash() / key
    with db.session() as s:
        run = s.scalars(select(DistillRun).where(DistillRun.study == study.name, DistillRun.arch_hash == arch.hash())).first()
        if run is None:
            run = DistillRun(study=study.name, arch_hash=arch.hash(), trial_number=trial, budget_ms=budget,
                             mapping_json=json.dumps(mapping), target_steps=steps)
            s.add(run)
        elif json.loads(run.report_json or "{}").get("inputs") != key:  # made from other inputs: start afresh
            run.status, run.student_path, run.report_json = "running", None, json.dumps({"inputs": key})
        run.mapping_json, run.target_steps, run.trial_number, run.budget_ms = json.dumps(mapping), steps, trial, budget
    t0 = time.perf_counter()
    module = ctx.start(arch, start, cfg.freeze_embeddings)
    before, report, step, student_path = train_student(ctx, arch, module, mapping, root, steps, stop_after)
    with db.session() as s:
        run = s.scalars(select(DistillRun).where(DistillRun.study == study.name, DistillRun.arch_hash == arch.hash())).one()
        prev = json.loads(run.report_json)
        run.status = "finished" if student_path else "running"
        run.student_path = str(student_path) if student_path else None
        run.report_json = json.dumps({"before": before or prev.get("before"), "after": report, "step": step,
                                      "start": start, "inputs": key})
        before = before or prev.get("before")
    return DistillResult(study=study.name, trial=trial, start=start, budget_ms=budget, arch_hash=arch.hash(),
                         architecture=str(arch), params=arch.params(), mapping=mapping, mapping_origin=origin,
                         step=step, target_steps=steps, before=before, after=report,
                         student_path=str(student_path) if student_path else None, inputs=key,
                         seconds=round(time.perf_counter() - t0, 1))


def distill_key(ctx: StudentContext, arch: Architecture, start: str, mapping: list[int]) -> str:
    """A distilled student's identity: its architecture, start (for a searched student the supernet
    checkpoint it is sliced from), mapping, teacher, corpus and every distillation setting that shapes its
    weights. Its checkpoints live under it, so nothing resumes from a student made by other inputs."""
    return distill_identity(ctx.study, ctx.checkpoint_sha, arch, start, mapping)


def distill_identity(study: Study, checkpoint_sha: str, arch: Architecture, start: str, mapping: list[int]) -> str:
    """`distill_key` from the study and the supernet checkpoint's sha256 alone (what export checks a distilled
    student against, without loading the corpus)."""
    from nas_bert.data import corpus_identity
    from nas_bert.store import fingerprint
    from nas_bert.teacher import teacher_identity

    origin = checkpoint_sha if start == "search" else start
    return fingerprint(arch.hash(), origin, mapping, teacher_identity(study.cfg.teacher),
                       corpus_identity(study.cfg.corpus), study.cfg.distill.weight_settings())


def train_student(ctx: StudentContext, arch: Architecture, module: DistillModule, mapping: list[int], root: Path,
                  steps: int, stop_after: int | None = None, label: str | None = None
                  ) -> tuple[dict[str, Any] | None, dict[str, Any], int, Path | None]:
    """Distil `module` (any start: supernet slices or teacher copies) for `steps`, resumably under
    root/checkpoints; when done, save it as a model folder root/student.
    Returns (held-out losses before training, or None on a resume; the loop's report; step; folder)."""
    cfg, device = ctx.study.cfg.distill, ctx.study.device()
    objective = ctx.objective(arch, mapping, cfg.val_batches, cfg.batch_size)
    module = module.to(device)
    ckpts = CheckpointDir(root / "checkpoints", cfg.keep_checkpoints)
    # the best held-out fidelity is what ships: never worse than the extracted start (step 0)
    keeper = BestKeeper("fidelity", ckpts.best_path())
    before = None
    if ckpts.latest() is None:
        before = {"step": 0, **objective.validate(module)}
        keeper.offer(module, before)
    report = train_loop(model=module, objective=objective, dataset=ctx.corpus["train"], collator=ctx.collator,
                        cfg=cfg, total_steps=steps, ckpts=ckpts, accelerator=make_accelerator(device),
                        meta={"arch": arch.hash(), "mapping": mapping}, desc=f"distill {label or arch.hash()[:8]}",
                        stop_after=stop_after, keep_best=keeper)
    latest = ckpts.latest()
    step = int(latest.stem.split("-")[1]) if latest else 0
    student_path = None
    if step >= steps:
        module.load_state_dict(keeper.best_state())
        student_path = save_student(module.student, ctx.teacher, root / "student")
    return before, report, step, student_path


def map_layers(study: Study, trial: int, budget: float | None = None, progress: bool = True) -> MappingResult:
    """Stage 6 for one searched student (a trial of the budget's search); see `map_student_layers`."""
    budget = resolve_budget(study, budget)
    arch = trial_architecture(Database(study.db_url), study, trial, budget)
    return map_student_layers(study, arch, "search", budget, trial, progress)


def map_student_layers(study: Study, arch: Architecture, start: str, budget: float | None, trial: int | None = None,
                       progress: bool = True) -> MappingResult:
    """Stage 6 for one student (searched or hand-designed, see `distill_student`): the DEAP search (or
    enumeration) of its layer mapping; resumable.

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus, the
    study's `mapping` and `distill` sections and the budget's finalists stage. Returns a `MappingResult`."""
    db = Database(study.db_url)
    ctx = StudentContext.open(study)
    t0 = time.perf_counter()
    search = MappingSearch(study, db, arch, ctx.teacher.num_layers,
                           lambda m, **kw: proxy_fitness(ctx, arch, m, start, **kw),
                           study.workdir / "mapping" / arch.hash(), origin=mapping_origin(ctx, start))
    return MappingResult(**search.run(progress=progress), trial=trial, budget_ms=budget,
                         seconds=round(time.perf_counter() - t0, 1))


def distill_baseline(ctx: StudentContext, name: str, arch: Architecture, importance: Importance | None = None,
                     steps: int | None = None, stop_after: int | None = None,
                     batches: list[dict[str, torch.Tensor]] | None = None, family: str = "truncated") -> dict[str, Any]:
    """Distil a teacher-initialised student exactly as searched students are (the study's distill
    settings, data and losses), with TinyBERT's uniform layer mapping; resumable under
    <study workdir>/baselines/<name>/<its inputs' fingerprint>."""
    cfg = ctx.study.cfg.distill
    steps = steps or cfg.steps
    if ctx.study.space.layer_slots and len(arch.blocks) > 1:  # a point of the space made from the teacher
        module = ctx.start(arch, family, cfg.freeze_embeddings)
    else:
        module = ctx.wrap(teacher_initialised(arch, ctx.teacher, importance, batches), arch, cfg.freeze_embeddings)
    mapping = uniform_mapping(len(distill_points(arch)), ctx.teacher.num_layers)
    root = ctx.study.workdir / "baselines" / name / distill_key(ctx, arch, f"baseline:{name}", mapping)
    before, report, step, path = train_student(ctx, arch, module, mapping, root, steps, stop_after, label=name)
    return {"name": name, "arch_hash": arch.hash(), "architecture": str(arch), "params": arch.params(),
            "mapping": mapping, "before": before, "after": report, "step": step, "target_steps": steps,
            "student_path": str(path) if path else None}
