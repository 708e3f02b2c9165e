"""Stages 2-5: search to a latency budget with Optuna, in the study database.

Objectives (approximate loss, predicted latency), both minimised; the budget is a constraint
(`trial.set_constraint`), so the samplers and `study.best_trials` know what is feasible. The
space is static define-by-run: every trial suggests a width per block and an operator token per
sublayer; a token list is turned into a valid block by moving identities to the block's end.
Heartbeats let a killed search continue: its stale trial is failed and retried
(`RetryHeartbeatStaleTrialCallback`), and a global trial count holds across workers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy import text as sql_text
from sqlalchemy.exc import DatabaseError, IntegrityError
from tqdm.auto import tqdm

from nas_bert.data import corpus_identity, load_corpus, make_collator
from nas_bert.errors import NasBertError
from nas_bert.latency import LatencyModel, ensure_latency_model
from nas_bert.search.scoring import BlockScorer, kendall_tau, rescore
from nas_bert.space import IDENTITY, Architecture, Block, Op, SearchSpace
from nas_bert.space import architecture as A
from nas_bert.store import ArchitectureRow, Checkpoint, Database, TrialRow, database_error, fingerprint
from nas_bert.study import SearchConfig, Study
from nas_bert.supernet import Supernet, ValidationCache, load_supernet_checkpoint
from nas_bert.teacher import Teacher, load_teacher

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# -- the define-by-run space ------------------------------------------------------------------
def op_tokens(space: SearchSpace, position: int) -> list[str]:
    """Width-independent operator tokens for one sublayer position (a static Optuna space)."""
    tokens = []
    if "mha" in space.operators:
        tokens.append("mha")
    if "ffn" in space.operators:
        tokens += [f"ffn{r}" for r in space.ffn_ratios]
    if "sepconv" in space.operators:
        tokens += [f"sepconv{k}" for k in space.conv_kernels]
    if "identity" in space.operators and position >= space.min_depth:
        tokens.append("identity")  # the first min_depth sublayers always hold an operator
    return tokens


def token_op(token: str, hidden: int, space: SearchSpace) -> Op:
    if token == "mha":
        return Op("mha", heads=hidden // space.head_size)
    if token.startswith("ffn"):
        return Op("ffn", inner=int(token[3:]) * hidden)
    if token.startswith("sepconv"):
        return Op("sepconv", kernel=int(token[7:]))
    return IDENTITY


def suggest_architecture(trial: optuna.trial.BaseTrial, space: SearchSpace, teacher_emb: Any) -> Architecture:
    blocks = []
    for b in range(space.blocks):
        hidden = trial.suggest_categorical(f"b{b}_hidden", list(space.hidden_sizes))
        ops = [token_op(trial.suggest_categorical(f"b{b}_s{j}", op_tokens(space, j)), hidden, space)
               for j in range(space.sublayers_per_block)]
        # NAS-BERT's rule (identity only ends a block) as a repair: identities move to the end.
        kept = [op for op in ops if op.kind != "identity"]
        blocks.append(Block(hidden, tuple(kept) + (IDENTITY,) * (len(ops) - len(kept))))
    return Architecture.build(teacher_emb, tuple(blocks)).validate(space)


def op_token(op: Op, hidden: int) -> str:
    """The search token of an operator (the inverse of `token_op`)."""
    if op.kind == "ffn":
        return f"ffn{op.inner // hidden}"
    if op.kind == "sepconv":
        return f"sepconv{op.kernel}"
    return op.kind


def trial_params(arch: Architecture) -> dict[str, Any]:
    """The trial parameters that suggest `arch` (for `enqueue_trial`)."""
    return {k: v for b, blk in enumerate(arch.blocks) for k, v in
            ((f"b{b}_hidden", blk.hidden), *((f"b{b}_s{j}", op_token(op, blk.hidden)) for j, op in enumerate(blk.ops)))}


# -- what one search needs in memory ----------------------------------------------------------
@dataclass
class SearchContext:
    study: Study
    db: Database
    teacher: Teacher
    latency: LatencyModel
    scorer: BlockScorer
    checkpoint_sha: str
    rescore_cache: ValidationCache | None = None


def optuna_study_name(study: Study, budget_ms: float) -> str:
    return f"{study.name}-{budget_ms:g}ms"


def storage_for(study: Study) -> RDBStorage:
    cfg = study.cfg.search
    kwargs = {"connect_args": {"timeout": 60}} if study.db_url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(study.db_url, engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat_interval,
                          grace_period=cfg.grace_period,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry))
    except DatabaseError as e:  # a damaged study file reaches Optuna first in e.g. `nas-bert pareto`
        raise database_error(study.db_url, e) from None


def latest_checkpoint(db: Database, study: Study) -> Checkpoint:
    """The supernet checkpoint a search scores with, checked on disk against its sha256."""
    from nas_bert.supernet import find_run

    with db.session() as s:
        run = find_run(s, study)  # the supernet of the study's current inputs
        ckpt = Checkpoint.latest(s, run.id) if run else None
    if ckpt is None:
        raise NasBertError(f"study '{study.name}' has no supernet checkpoint; run `nas-bert train-supernet --config {study.file}` first")
    return ckpt


def load_trained(db: Database, study: Study, device: torch.device) -> tuple[Checkpoint, Teacher, Supernet]:
    """The teacher and the study's latest supernet, its file checked against the recorded sha256."""
    ckpt = latest_checkpoint(db, study)
    teacher = load_teacher(study.cfg.teacher, device)
    # the file is checked against the sha256 the database recorded before anything in it is read, and read
    # without arbitrary unpickling (`identity.safe_torch_load`): a changed, truncated or foreign file is a
    # one-line error naming it
    supernet = load_supernet_checkpoint(Path(ckpt.path), study.space, teacher.hidden_size,
                                        float(getattr(teacher.config, "layer_norm_eps", 1e-12)),
                                        sha256=ckpt.sha256).to(device)
    return ckpt, teacher, supernet


def open_context(study: Study, progress: bool = True) -> SearchContext:
    device = study.device()
    db = Database(study.db_url)
    ckpt, teacher, supernet = load_trained(db, study, device)
    latency = ensure_latency_model(db, study.space, teacher.embeddings_spec(), study.cfg.latency, progress=progress)
    cfg = study.cfg.search
    corpus = load_corpus(study.cfg.corpus, teacher.tokenizer)
    collator = make_collator(teacher.tokenizer, study.cfg.corpus)
    cache = ValidationCache.build(teacher, corpus["validation"], collator, cfg.score_batches, cfg.batch_size,
                                  study.space.blocks, device)
    # block scores are memoised under the checkpoint and the protocol that scored them
    score_key = fingerprint(ckpt.sha256, cfg.score_batches, cfg.batch_size, corpus_identity(study.cfg.corpus))
    scorer = BlockScorer(supernet, cache, db, score_key)
    scorer.load_memo()
    ctx = SearchContext(study, db, teacher, latency, scorer, ckpt.sha256)
    ctx.rescore_cache = ValidationCache.build(teacher, corpus["validation"], collator, cfg.rescore_batches,
                                              cfg.batch_size, study.space.blocks, device)
    return ctx


def check_budget_value(budget_ms: float, option: str = "--latency-budget-ms") -> None:
    """A latency budget is a finite number of milliseconds above zero (NaN would pass every comparison)."""
    if not isinstance(budget_ms, (int, float)) or not math.isfinite(budget_ms) or budget_ms <= 0:
        raise NasBertError(f"{option} {budget_ms!r}: budget must be a finite number of ms > 0")


def check_budget(ctx: SearchContext, budget_ms: float) -> None:
    check_budget_value(budget_ms)
    fastest = ctx.latency.fastest_possible(ctx.study.space, ctx.teacher.embeddings_spec())
    if budget_ms < fastest:
        raise NasBertError(f"latency budget {budget_ms:g} ms is below the fastest architecture of this space "
                           f"({fastest:.2f} ms predicted on this device); use --latency-budget-ms {math.ceil(fastest * 100) / 100:g} or more")


def record_architecture(ctx: SearchContext, arch: Architecture, predicted_ms: float, approx: float) -> None:
    try:
        with ctx.db.session() as s:
            exists = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == ctx.study.name,
                                                             ArchitectureRow.hash == arch.hash())).first()
            if exists is None:
                s.add(ArchitectureRow(study=ctx.study.name, hash=arch.hash(), arch_json=arch.canonical_json(),
                                      params=arch.params(), flops=arch.flops(), checkpoint_sha=ctx.checkpoint_sha,
                                      predicted_ms=predicted_ms, approx_loss=approx))
            else:  # scored again (a newer supernet, another protocol) or predicted by another latency model
                if exists.checkpoint_sha != ctx.checkpoint_sha:
                    exists.checkpoint_sha, exists.rescored_loss = ctx.checkpoint_sha, None
                exists.approx_loss, exists.predicted_ms = approx, predicted_ms
    except IntegrityError:  # another worker recorded it at the same moment
        pass


def seed_architectures(ctx: SearchContext, budget_ms: float) -> dict[str, Architecture]:
    """Hand-designed students inside the space, evaluated before the sampler's own: the space's fastest
    student (so a budget that any student meets yields one), and for k = 1, 2, ... the teacher's first
    k layers: exactly them where a block may be empty (`architecture.truncated`), else k (attention,
    feed-forward) pairs at full width followed by the fastest blocks. The supernet holds the teacher's
    layers at full width, so these are the truncated teacher. And for each narrower width, the most of
    the teacher's first layers that fit the budget sliced to that width (ETD's extraction of the most
    important heads, neurons and dimensions): where no full-width layer fits, a narrow teacher layer
    still may. And at full width with the feed-forward pruned to each smaller ratio of the space (its
    most important neurons; attention and width stay the teacher's), the most layers that fit, when that
    is more than any larger ratio gives. Those predicted over the budget are left out."""
    space, emb = ctx.study.space, ctx.teacher.embeddings_spec()
    fastest = ctx.latency.fastest_architecture(space, emb)
    out = {"fastest": fastest}
    pair, pairs = A.teacher_pair(space), space.sublayers_per_block // 2
    for k in range(1, space.blocks * pairs + 1) if pair is not None and "identity" in space.operators else ():
        arch = A.truncated(space, emb, k)
        if arch is None:
            fill = [min(pairs, max(0, k - b * pairs)) for b in range(space.blocks)]
            blocks = tuple(Block(space.max_hidden, pair * n + (IDENTITY,) * (space.sublayers_per_block - 2 * n))
                           if n > 0 else fastest.blocks[b] for b, n in enumerate(fill))
            arch = Architecture.build(emb, blocks)
        out[f"teacher-layers-{k}"] = arch

    def fits(arch: Architecture) -> bool:
        try:
            return ctx.latency.predict(arch.validate(space)) <= budget_ms
        except NasBertError:  # e.g. a space whose depths do not allow a pair
            return False

    out = {n: a for n, a in out.items() if fits(a)}
    depths = range(1, space.blocks * pairs + 1)
    for w in (w for w in space.hidden_sizes if w < space.max_hidden):
        narrow = [(k, a) for k in depths if (a := A.truncated(space, emb, k, w)) is not None and fits(a)]
        if narrow:
            k, arch = narrow[-1]
            out[f"teacher-layers-{k}-w{w}"] = arch
    # At full width with the feed-forward pruned to each smaller ratio (its most important neurons): kept when
    # deeper than every cut of a larger ratio that fits, since a pruned layer costs less than a whole one.
    deepest = max([int(n.split("-")[2]) for n in out if re.fullmatch(r"teacher-layers-\d+", n)], default=0)
    for r in sorted(space.ffn_ratios, reverse=True)[1:]:
        cuts = [(k, a) for k in depths if (a := A.truncated(space, emb, k, None, r)) is not None and fits(a)]
        if cuts and cuts[-1][0] > deepest:
            deepest, arch = cuts[-1]
            out[f"teacher-layers-{deepest}-f{r}"] = arch
    return out


def make_objective(ctx: SearchContext, budget_ms: float, n_trials: int, name: str):
    emb = ctx.teacher.embeddings_spec()
    started = datetime.now()  # Optuna stores naive local times

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        # A global count across workers: trials numbered after the first n_trials live ones stand down.
        # A trial left RUNNING by a process killed before its first heartbeat is never failed as stale,
        # so running trials that began before this worker count only once complete: at worst a live
        # one elsewhere makes us run one trial too many, never one too few.
        live = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        live = [t for t in live if t.state == TrialState.COMPLETE or (t.datetime_start or started) >= started]
        if sum(t.number < trial.number for t in live) >= n_trials:
            trial.study.stop()
            raise optuna.TrialPruned("the requested number of trials is reached")
        arch = suggest_architecture(trial, ctx.study.space, emb)
        predicted = ctx.latency.predict(arch)
        trial.set_constraint("latency", predicted - budget_ms)
        trial.set_user_attr("arch_hash", arch.hash())
        approx = ctx.scorer.approx_loss(arch)
        record_architecture(ctx, arch, predicted, approx)
        try:
            with ctx.db.session() as s:
                s.add(TrialRow(optuna_study=name, trial_number=trial.number, arch_hash=arch.hash(), budget_ms=budget_ms))
        except IntegrityError:
            pass
        return approx, predicted

    return objective


def make_sampler(cfg: SearchConfig, worker: int) -> optuna.samplers.BaseSampler:
    seed = cfg.seed + 1000 * worker  # each worker its own stream, all reproducible
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(20, cfg.trials))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size)


def fail_orphans(study_: optuna.Study, storage: RDBStorage, cfg: SearchConfig) -> None:
    """Fail (and retry) RUNNING trials that never recorded a heartbeat although older than the grace
    period: their process died before its first heartbeat, so Optuna's stale check never sees them.
    A live worker records a trial's first heartbeat as soon as the trial starts."""
    cutoff = datetime.now() - timedelta(seconds=cfg.grace_period)
    old = [t for t in study_.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and t.datetime_start < cutoff]
    if not old:
        return
    with storage.engine.connect() as con:  # Optuna's own heartbeat table
        beating = {row[0] for row in con.execute(sql_text("SELECT trial_id FROM trial_heartbeats"))}
    retry = RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry)
    for t in old:
        if t._trial_id not in beating and storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            retry(study_, storage.get_trial(t._trial_id))


def wait_for_stale(study_: optuna.Study, storage: RDBStorage, cfg: SearchConfig) -> None:
    """A trial left RUNNING by a killed process is failed (and retried) once its heartbeat is stale."""
    deadline = time.time() + cfg.grace_period + cfg.heartbeat_interval
    while study_.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and time.time() < deadline:
        optuna.storages.fail_stale_trials(study_)
        fail_orphans(study_, storage, cfg)
        time.sleep(1.0)


def search_inputs(ctx: SearchContext) -> str:
    """The identity of a budget's search: the supernet checkpoint, the block-score protocol, the latency
    model (device and calibration) and the sampler's settings."""
    cfg = ctx.study.cfg.search
    return fingerprint(ctx.checkpoint_sha, ctx.scorer.checkpoint_sha, ctx.latency.fingerprint,
                       ctx.latency.calibration, {k: getattr(cfg, k) for k in ("sampler", "population_size", "seed")})


def prepare_search(ctx: SearchContext, budget_ms: float) -> None:
    """Before any worker starts: a budget's losses and latencies come from one supernet checkpoint, one
    scoring protocol and one latency model; a search made from other inputs would compare apples and
    pears, so it is deleted and starts afresh."""
    name, storage = optuna_study_name(ctx.study, budget_ms), storage_for(ctx.study)
    inputs = search_inputs(ctx)
    try:
        old = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    made_with = old.user_attrs.get("inputs")
    if made_with == inputs or made_with is None and not old.get_trials(deepcopy=False):
        return
    optuna.storages.fail_stale_trials(old)  # a dead worker's trials do not count as live
    if old.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        raise NasBertError(f"the {budget_ms:g} ms search of study '{ctx.study.name}' is running elsewhere from other "
                           f"inputs (supernet, scoring, latency model or sampler); stop it, or run this one with "
                           f"the same study file")
    tqdm.write(f"the {budget_ms:g} ms search of study '{ctx.study.name}' was made from other inputs (supernet, "
               f"scoring, latency model or sampler); searching afresh", file=sys.stderr)
    optuna.delete_study(study_name=name, storage=storage)


def run_worker(study: Study, budget_ms: float, n_trials: int, worker: int = 0, ctx: SearchContext | None = None,
               progress: bool = True) -> None:
    """One search process: optimise until the study holds n_trials complete trials."""
    ctx = ctx or open_context(study, progress=False)
    cfg = study.cfg.search
    name = optuna_study_name(study, budget_ms)
    storage = storage_for(study)
    study_ = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"],
                                 sampler=make_sampler(cfg, worker), load_if_exists=True)
    study_.set_metric_names(["approx_loss", "predicted_ms"])
    if study_.user_attrs.get("inputs") is None:
        study_.set_user_attr("inputs", search_inputs(ctx))
        study_.set_user_attr("checkpoint_sha", ctx.checkpoint_sha)
    if not study_.get_trials(deepcopy=False):  # a new search: the seed students go first
        for seed, arch in seed_architectures(ctx, budget_ms).items():
            study_.enqueue_trial(trial_params(arch), user_attrs={"seed": seed}, skip_if_exists=True)
    wait_for_stale(study_, storage, cfg)
    done = len(study_.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if done >= n_trials:
        return
    bar = tqdm(total=n_trials, initial=done, desc=f"search {budget_ms:g} ms", disable=not progress)

    def tick(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.n = len(st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        feasible = [t for t in st.best_trials] if bar.n else []
        bar.set_postfix(front=len(feasible), computed=ctx.scorer.computed)
        bar.refresh()

    study_.optimize(make_objective(ctx, budget_ms, n_trials, name), n_trials=None,
                    callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,)), tick],
                    gc_after_trial=False)
    bar.close()


def _spawned_worker(study_file: str, db_url: str, budget_ms: float, n_trials: int, worker: int, threads: int) -> None:
    from nas_bert.study import load_study

    torch.set_num_threads(threads)
    run_worker(load_study(study_file, db_url), budget_ms, n_trials, worker, progress=False)


def search(study: Study, budget_ms: float, trials: int | None = None, workers: int = 1) -> dict[str, Any]:
    """Stages 2-5 for one budget; resumable; returns a summary."""
    cfg = study.cfg.search
    check_budget_value(budget_ms)
    n_trials = cfg.trials if trials is None else trials  # 0 is an error, not "the default"
    if n_trials < 1:
        raise NasBertError(f"trials must be at least 1 (got {n_trials}); leave --trials out for the study's {cfg.trials}")
    if workers < 1:
        raise NasBertError(f"--workers must be at least 1 (got {workers})")
    ctx = open_context(study)
    check_budget(ctx, budget_ms)
    prepare_search(ctx, budget_ms)
    t0 = time.perf_counter()
    threads = max(1, torch.get_num_threads() // workers)
    procs = []
    if workers > 1:
        spawn = mp.get_context("spawn")
        for w in range(1, workers):
            p = spawn.Process(target=_spawned_worker, args=(str(study.file), study.db_url, budget_ms, n_trials, w, threads))
            p.start()
            procs.append(p)
        torch.set_num_threads(threads)
    run_worker(study, budget_ms, n_trials, 0, ctx)
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    summary = finish_search(ctx, budget_ms)
    summary["seconds"] = round(seconds, 1)
    return summary


def finish_search(ctx: SearchContext, budget_ms: float) -> dict[str, Any]:
    """Stage 5: rescore the best feasible candidates end to end; summarise the study."""
    study, cfg = ctx.study, ctx.study.cfg.search
    name = optuna_study_name(study, budget_ms)
    study_ = optuna.load_study(study_name=name, storage=storage_for(study))
    trials = study_.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if t.values[1] <= budget_ms]
    # the best T distinct feasible architectures by approximate loss, and every member of the front
    best: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(feasible, key=lambda t: t.values[0]):
        if len(best) == cfg.rescore_top:
            break
        best.setdefault(t.user_attrs["arch_hash"], t)
    for t in [*study_.best_trials, *(t for t in feasible if "seed" in t.user_attrs)]:
        if t.values[1] <= budget_ms:
            best.setdefault(t.user_attrs["arch_hash"], t)
    approx, rescored = [], []
    for h in tqdm(best, desc="rescore", leave=False):
        with ctx.db.session() as s:
            row = s.scalars(select(ArchitectureRow).where(ArchitectureRow.study == study.name, ArchitectureRow.hash == h)).one()
            if row.rescored_loss is None:
                assert ctx.rescore_cache is not None
                row.rescored_loss = rescore(ctx.scorer.supernet, Architecture.from_json(row.arch_json), ctx.rescore_cache)
            approx.append(row.approx_loss)
            rescored.append(row.rescored_loss)
    front = pareto_rows(ctx.db, study, budget_ms)
    chosen = chosen_row(ctx.db, study, budget_ms)
    return {
        "study": study.name, "optuna_study": name, "budget_ms": budget_ms,
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "feasible": len(feasible), "front": front, "chosen": chosen,
        "kendall_tau": kendall_tau(approx, rescored), "rescored": len(rescored),
        "block_scores_computed": ctx.scorer.computed,
    }


def _load(study: Study, budget_ms: float) -> optuna.Study:
    try:
        return optuna.load_study(study_name=optuna_study_name(study, budget_ms), storage=storage_for(study))
    except KeyError:
        raise NasBertError(f"no search for budget {budget_ms:g} ms in study '{study.name}'; run `nas-bert search "
                           f"--config {study.file} --latency-budget-ms {budget_ms:g}`") from None


def _arch_rows(db: Database, study: Study, trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    """One row per distinct architecture, in the trials' order (its first trial names it)."""
    with db.session() as s:
        rows = {r.hash: r for r in s.scalars(select(ArchitectureRow).where(
            ArchitectureRow.study == study.name, ArchitectureRow.hash.in_({t.user_attrs["arch_hash"] for t in trials})))}
        seen: dict[str, dict[str, Any]] = {}
        for t in trials:
            h = t.user_attrs["arch_hash"]
            if h not in seen:
                row = rows[h]
                seen[h] = {"trial": t.number, "hash": h, "params": row.params, "flops": row.flops,
                           "predicted_ms": row.predicted_ms, "approx_loss": row.approx_loss,
                           "rescored_loss": row.rescored_loss, "measured_ms": row.measured_ms,
                           "architecture": str(Architecture.from_json(row.arch_json)),
                           **({"seed": t.user_attrs["seed"]} if "seed" in t.user_attrs else {})}
    return list(seen.values())


def pareto_rows(db: Database, study: Study, budget_ms: float) -> list[dict[str, Any]]:
    """The feasible Pareto front (approximate loss vs predicted latency), one row per architecture."""
    front = sorted(_load(study, budget_ms).best_trials, key=lambda t: t.values[1])
    return _arch_rows(db, study, [t for t in front if t.values[1] <= budget_ms])


def chosen_row(db: Database, study: Study, budget_ms: float) -> dict[str, Any] | None:
    """The student a budget yields: the lowest rescored loss among the feasible candidates rescoring saw
    (the best by approximate loss, the front, the seed students); before rescoring, the front's best."""
    done = _load(study, budget_ms).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rescored = [r for r in _arch_rows(db, study, [t for t in done if t.values[1] <= budget_ms])
                if r["rescored_loss"] is not None]
    return min(rescored or pareto_rows(db, study, budget_ms), default=None, key=lambda r: (
        r["rescored_loss"] if r["rescored_loss"] is not None else math.inf, r["approx_loss"]))


def budgets_in_db(study: Study) -> list[float]:
    """Budgets searched so far in this study (from Optuna's study names)."""
    prefix = f"{study.name}-"
    out = []
    for s in optuna.get_all_study_summaries(storage_for(study)):
        if s.study_name.startswith(prefix) and s.study_name.endswith("ms"):
            try:
                out.append(float(s.study_name[len(prefix):-2]))
            except ValueError:
                continue
    return sorted(out)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # spawned workers each tokenise
