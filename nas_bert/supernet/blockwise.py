"""Stage 1: block-wise supernet training (NAS-BERT).

One teacher forward per step gives every block boundary; block b learns, from the teacher's
state at its start boundary, to produce the teacher's state at its end boundary (MSE through its
output adapter). Each step samples one sub-architecture per block (uniform over the block's
paths), and with `sandwich` also trains the largest and the smallest. The supernet starts from the
teacher's own layers (`supernet.init: teacher`), so training teaches the smaller paths to keep up
with a largest path that already is the teacher.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select

from nas_bert.data import fixed_batches, load_corpus, make_collator
from nas_bert.errors import NasBertError
from nas_bert.evaluate import fidelity
from nas_bert.record import Record
from nas_bert.space import Block, SearchSpace
from nas_bert.space import architecture as A
from nas_bert.store import Checkpoint, Database, SupernetRun, file_sha256, safe_torch_load
from nas_bert.study import Study
from nas_bert.supernet.elastic import Supernet, fit_reconstruction, inherit_teacher
from nas_bert.teacher import Teacher, load_teacher, load_teacher_config, teacher_importance
from nas_bert.train import CheckpointDir, make_accelerator, train_loop
from nas_bert.train.loop import atomic_torch_save, rng_state

Tensor = torch.Tensor


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error over real tokens: pred/target (B, T, H), mask (B, T)."""
    per_token = (pred - target).pow(2).mean(-1)  # (B, T)
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def arch_rng(seed: int, micro_step: int) -> random.Random:
    """The sub-architecture stream is a pure function of (seed, step): resumable, equal on all ranks."""
    return random.Random(f"nas-bert:{seed}:{micro_step}")


@dataclass
class ValidationCache:
    """Fixed validation batches with the teacher's boundary states, computed once."""

    batches: list[dict[str, Tensor]]
    bounds: list[list[Tensor]]  # per batch: the blocks + 1 boundary states

    @classmethod
    def build(cls, teacher: Teacher, dataset: Any, collator: Any, n_batches: int, batch_size: int,
              blocks: int, device: torch.device, seed: int = 1234) -> ValidationCache:
        batches = [{k: v.to(device) for k, v in b.items()} for b in fixed_batches(dataset, collator, n_batches, batch_size, seed)]
        bounds = [teacher.boundaries(teacher.hidden_states(b["input_ids"], b["attention_mask"]), blocks) for b in batches]
        return cls(batches, bounds)


@torch.no_grad()
def block_val_loss(supernet: Supernet, b: int, block: Block, cache: ValidationCache) -> float:
    """Validation MSE of one block sub-architecture against the teacher (NAS-BERT's block score)."""
    total, tokens = 0.0, 0.0
    for batch, bounds in zip(cache.batches, cache.bounds, strict=True):
        mask = batch["attention_mask"]
        out = supernet.forward_block(b, bounds[b], block, mask)
        n = float(mask.sum())
        total += float(masked_mse(out, bounds[b + 1], mask)) * n
        tokens += n
    return total / max(tokens, 1.0)


class BlockwiseObjective:
    """The supernet's loss: the sum over blocks (and sandwich members) of the boundary MSE."""

    def __init__(self, teacher: Teacher, space: SearchSpace, sampling: str, seed: int,
                 val: ValidationCache, val_random_archs: int, sandwich_every: int = 1) -> None:
        self.teacher, self.space, self.sampling, self.seed = teacher, space, sampling, seed
        self.sandwich_every = sandwich_every
        self.val = val
        self.val_archs: dict[str, list[Block]] = {
            "largest": [A.largest_block(space)] * space.blocks,
            "smallest": [A.smallest_block(space)] * space.blocks,
        }
        rng = random.Random(f"nas-bert-val:{seed}")
        for i in range(val_random_archs):
            self.val_archs[f"random_{i}"] = [A.sample_block(space, rng) for _ in range(space.blocks)]

    def jobs(self, micro_step: int) -> list[tuple[int, Block]]:
        rng = arch_rng(self.seed, micro_step)
        jobs = [(b, A.sample_block(self.space, rng)) for b in range(self.space.blocks)]
        if self.sampling == "sandwich" and micro_step % self.sandwich_every == 0:
            jobs += [(b, A.largest_block(self.space)) for b in range(self.space.blocks)]
            jobs += [(b, A.smallest_block(self.space)) for b in range(self.space.blocks)]
        return jobs

    def loss(self, model: torch.nn.Module, batch: dict[str, Tensor], micro_step: int) -> tuple[Tensor, dict[str, float]]:
        mask = batch["attention_mask"]
        bounds = self.teacher.boundaries(self.teacher.hidden_states(batch["input_ids"], mask), self.space.blocks)
        core = model.module if hasattr(model, "module") else model  # DDP wraps the supernet
        # a path made only of the teacher's frozen layers has nothing to learn: it is not run
        jobs = [(b, blk) for b, blk in self.jobs(micro_step) if core.trainable(b, blk)]
        outs = model(bounds[:-1], jobs, mask)
        losses = [masked_mse(out, bounds[b + 1], mask) for (b, _), out in zip(jobs, outs, strict=True)]
        logs = {f"b{b}": float(loss.detach()) for (b, _), loss in zip(jobs, losses, strict=True)}
        if not losses:  # every sampled path was the teacher's own: a zero step
            return sum(p.sum() for p in core.parameters() if p.requires_grad) * 0.0, logs
        return torch.stack(losses).sum(), logs

    def validate(self, model: torch.nn.Module) -> dict[str, Any]:
        assert isinstance(model, Supernet)
        return {
            name: [block_val_loss(model, b, blk, self.val) for b, blk in enumerate(blocks)]
            for name, blocks in self.val_archs.items()
        }


def supernet_key(study: Study) -> str:
    """The supernet's identity: teacher, the space file's content, corpus and preprocessing, and every
    supernet setting that shapes its weights. Checkpoints live under it and its database run carries it,
    so a changed input trains a new supernet and nothing resumes from one made by other inputs."""
    from nas_bert.data import corpus_identity
    from nas_bert.store import fingerprint
    from nas_bert.teacher import teacher_identity

    return fingerprint(LAYOUT, teacher_identity(study.cfg.teacher), study.space.fingerprint(),
                       corpus_identity(study.cfg.corpus), study.cfg.supernet.weight_settings())


def supernet_dir(study: Study) -> Path:
    return study.workdir / "supernet" / supernet_key(study)


def find_run(s: Any, study: Study) -> SupernetRun | None:
    """The study's supernet run for its current inputs (None: not trained yet)."""
    return s.scalars(select(SupernetRun).where(SupernetRun.study == study.name,
                                               SupernetRun.supernet_key == supernet_key(study))).first()


def _get_run(db: Database, study: Study, steps: int) -> int:
    with db.session() as s:
        run = find_run(s, study)
        if run is None:
            run = SupernetRun(study=study.name, supernet_key=supernet_key(study), teacher=study.cfg.teacher,
                              config_json=json.dumps(study.cfg.supernet.model_dump(mode="json")), target_steps=steps)
            s.add(run)
            s.flush()
        elif run.target_steps != steps:
            run.target_steps, run.status = steps, "running"
        return run.id


def record_checkpoint(db: Database, run_id: int, step: int, path: Path, sha: str, report: dict[str, Any]) -> None:
    """Upsert the checkpoint row and mark rows whose file was pruned."""
    with db.session() as s:
        row = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step)).first()
        if row is None:
            s.add(Checkpoint(run_id=run_id, step=step, path=str(path), sha256=sha, val_losses_json=json.dumps(report)))
        else:
            row.path, row.sha256, row.val_losses_json, row.deleted = str(path), sha, json.dumps(report), 0
        for other in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.deleted == 0)):
            if other.step != step and not Path(other.path).exists():
                other.deleted = 1


LAYOUT = "resize-v2"  # supernet checkpoints of an older layout (learned adapters) are refused


def frozen_spec(study: Study, teacher: Teacher) -> dict[str, int] | None:
    """The teacher's full-width operator sizes, when its layers are kept frozen in the supernet."""
    cfg = study.cfg.supernet
    if cfg.init != "teacher" or not cfg.keep_teacher_layers:
        return None
    return {"heads": int(teacher.config.num_attention_heads), "inner": int(teacher.config.intermediate_size)}


def build_supernet(study: Study, teacher: Teacher, seed: int, corpus: Any = None, inherit: bool = True) -> Supernet:
    """The untrained supernet: random, or started from the teacher (`supernet.init`; `inherit=False`
    skips that when a checkpoint will be loaded over it). Ranking the teacher's units by importance
    reads `supernet.init_batches` batches of `corpus["train"]`."""
    study.space.check_teacher(teacher.num_layers, teacher.hidden_size)
    cfg = study.cfg.supernet
    torch.manual_seed(seed)  # the same initial weights for every run of this study
    relative = teacher.relative_attention()
    net = Supernet(study.space, teacher.hidden_size, eps=float(getattr(teacher.config, "layer_norm_eps", 1e-12)),
                   frozen=frozen_spec(study, teacher), relative=relative.spec() if relative else None)
    device = next(teacher.encoder.parameters()).device
    # where the teacher is: the boundary predictions are fitted on its states, a finished run's checkpoint used there
    net.to(device)
    if not inherit:
        return net
    if corpus is None:
        raise NasBertError("building a supernet needs the corpus (unit ranking and the boundary predictions)")
    batches = [{k: v.to(device) for k, v in b.items()} for b in fixed_batches(
        corpus["train"], make_collator(teacher.tokenizer, study.cfg.corpus), cfg.init_batches, cfg.batch_size, seed=seed)]
    if cfg.init == "teacher":
        importance = teacher_importance(teacher, batches) if cfg.init_units == "importance" else None
        inherit_teacher(net, teacher, importance)
    states = [teacher.boundaries(teacher.hidden_states(b["input_ids"], b["attention_mask"]), study.space.blocks)
              for b in batches]
    fit_reconstruction(net, states, [b["attention_mask"] for b in batches])
    return net


class TeacherPath(Record):
    """The teacher's first `layers` layers taken from the supernet, beside the untouched cut."""

    layers: int
    architecture: str
    fidelity_supernet: float  # to the teacher's output
    fidelity_untouched: float
    max_abs_diff: float  # the largest difference of their hidden states


class SupernetResult(Record):
    """Stage 1's result: the step reached, its checkpoint and the validation error of each block."""

    study: str
    step: int
    target_steps: int
    checkpoint: str
    sha256: str | None  # None on the ranks of a distributed run that write nothing
    seconds: float
    val_losses: dict[str, Any]  # the latest validation report: "step" and a list of block errors per sampled path
    teacher_paths: list[TeacherPath]
    db: str
    world_size: int
    is_main: bool


@torch.no_grad()
def teacher_paths(net: Supernet, teacher: Teacher, cache: ValidationCache) -> list[TeacherPath]:
    """The teacher's truncated paths inside the space, taken from the supernet, beside the untouched
    truncations: fidelity of each to the teacher's output (pooled as the teacher is used) and their
    largest difference. Equal when the teacher's layers are kept as they are."""
    emb = teacher.embeddings_spec()
    full = [teacher.embed(bounds[-1], batch["attention_mask"]) for batch, bounds in zip(cache.batches, cache.bounds, strict=True)]
    rows = []
    for k in range(1, teacher.num_layers + 1):
        arch = A.truncated(net.space, emb, k)
        if arch is None:
            continue
        ours, untouched, diff = [], [], 0.0
        for batch in cache.batches:
            mask = batch["attention_mask"]
            states = teacher.hidden_states(batch["input_ids"], mask)
            out = net.forward_student(states[0], arch, mask)
            diff = max(diff, float((out - states[k])[mask.bool()].abs().max()))
            ours.append(teacher.embed(out, mask))
            untouched.append(teacher.embed(states[k], mask))
        rows.append(TeacherPath(layers=k, architecture=str(arch),
                                fidelity_supernet=fidelity(torch.cat(ours), torch.cat(full)),
                                fidelity_untouched=fidelity(torch.cat(untouched), torch.cat(full)), max_abs_diff=diff))
    return rows


def train_supernet(study: Study, steps: int | None = None, stop_after: int | None = None) -> SupernetResult:
    """Run (or continue) stage 1 to `steps` updates (`supernet.steps` by default).

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus and
    its preprocessing, and the study's `supernet` section. Returns a `SupernetResult`."""
    cfg = study.cfg.supernet
    steps = cfg.steps if steps is None else steps
    accelerator = make_accelerator(study.device())
    # Everything that can be wrong with the inputs is checked before anything is written (the space
    # against the teacher's config first: it needs neither weights nor corpus).
    tc = load_teacher_config(study.cfg.teacher)
    study.space.check_teacher(int(tc.num_hidden_layers), int(tc.hidden_size))
    teacher = load_teacher(study.cfg.teacher, accelerator.device)
    corpus = load_corpus(study.cfg.corpus, teacher.tokenizer)
    ckpts = CheckpointDir(supernet_dir(study), keep=cfg.keep_checkpoints)
    # A resumed run loads its checkpoint over these weights: rank the teacher's units only on a fresh start.
    supernet = build_supernet(study, teacher, cfg.seed, corpus, inherit=ckpts.latest() is None)
    main = accelerator.is_main_process  # only rank 0 writes to the database and to disk
    db = Database(study.db_url) if main else None
    run_id = 0
    if db is not None:
        db.upsert_study(study.name, study.snapshot())
        run_id = _get_run(db, study, steps)
    collator = make_collator(teacher.tokenizer, study.cfg.corpus)
    val = ValidationCache.build(teacher, corpus["validation"], collator, cfg.val_batches, cfg.batch_size,
                                study.space.blocks, accelerator.device)
    objective = BlockwiseObjective(teacher, study.space, cfg.sampling, cfg.seed, val, cfg.val_random_archs,
                                   cfg.sandwich_every)
    meta = {"space": study.space.fingerprint(), "teacher": study.cfg.teacher, "init": f"{cfg.init}/{cfg.init_units}",
            "layout": LAYOUT, "frozen": frozen_spec(study, teacher), "inputs": supernet_key(study)}
    if supernet.relative:  # MPNet's relative position bias: the checkpoint's supernet holds its table
        meta["relative"] = supernet.relative
    t0 = time.perf_counter()
    if steps == 0 and ckpts.latest() is None:  # the teacher's weights as they are: one checkpoint, no training
        report = {"step": 0, **objective.validate(supernet.eval())} if main else {}
        if main:
            path = ckpts.path(0)
            sha = atomic_torch_save({"model": supernet.state_dict(), "step": 0, "meta": meta, "report": report,
                                     "rng": rng_state()}, path, keep_sha=True)
            record_checkpoint(db, run_id, 0, path, sha, report)
    else:
        report = train_loop(
            model=supernet, objective=objective, dataset=corpus["train"], collator=collator, cfg=cfg,
            total_steps=steps, ckpts=ckpts, accelerator=accelerator, meta=meta, desc="supernet",
            on_checkpoint=(lambda step, path, sha, rep: record_checkpoint(db, run_id, step, path, sha, rep)) if db else None,
            stop_after=stop_after,
        )
    latest = ckpts.latest()
    if latest is None:
        raise NasBertError(f"no supernet checkpoint in {ckpts.root} after training; check disk space")
    step = int(latest.stem.split("-")[1])
    sha = None
    if db is not None:
        with db.session() as s:
            ckpt = Checkpoint.latest(s, run_id)
        if ckpt is None or ckpt.step != step:  # killed between the rename and the row: record it now
            report = report or safe_torch_load(latest, what="supernet checkpoint").get("report", {})
            record_checkpoint(db, run_id, step, latest, file_sha256(latest), report)
        with db.session() as s:
            s.get(SupernetRun, run_id).status = "finished" if step >= steps else "running"
            sha = Checkpoint.latest(s, run_id).sha256
        db.dispose()
    paths = teacher_paths(accelerator.unwrap_model(supernet).eval(), teacher, val) if main else []
    return SupernetResult(study=study.name, step=step, target_steps=steps, checkpoint=str(latest), sha256=sha,
                          seconds=round(time.perf_counter() - t0, 1), val_losses=report, teacher_paths=paths,
                          db=study.db_url, world_size=accelerator.num_processes, is_main=main)


def load_supernet_checkpoint(path: Path, space: SearchSpace, teacher_width: int, eps: float = 1e-12,
                             sha256: str | None = None) -> Supernet:
    """A trained supernet from a checkpoint file (its sha256 checked when given, no arbitrary unpickling),
    checked against the search space."""
    if not path.is_file():
        raise NasBertError(f"supernet checkpoint {path} is missing from disk; run `nas-bert train-supernet` again")
    state = safe_torch_load(path, sha256, what="supernet checkpoint")
    if state["meta"].get("space") != space.fingerprint():
        raise NasBertError(f"checkpoint {path} belongs to another search space; train a supernet for '{space.name}'")
    if state["meta"].get("layout") != LAYOUT:
        raise NasBertError(f"checkpoint {path} was made by an older nas-bert (supernet layout "
                           f"{state['meta'].get('layout') or 'adapters'}); move {path.parent} away and train again")
    net = Supernet(space, teacher_width, eps, frozen=state["meta"].get("frozen"), relative=state["meta"].get("relative"))
    net.load_state_dict(state["model"])
    return net.eval()
