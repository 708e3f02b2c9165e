"""Stages 2-4: search to a latency budget with Optuna, in the study database.

Objectives (approximate loss, predicted latency), both minimised; the budget is a constraint
(`trial.set_constraint`), so the samplers and `study.best_trials` know what is feasible. The
space is static define-by-run (`trial_space`). Heartbeats let a killed search continue: its stale
trial is failed and retried (`RetryHeartbeatStaleTrialCallback`), and a global trial count holds
across workers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import sys
import time
from datetime import datetime, timedelta

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy import text as sql_text
from sqlalchemy.exc import IntegrityError
from tqdm.auto import tqdm

from nas_bert.errors import NasBertError
from nas_bert.latency import LatencyModel
from nas_bert.search.context import SearchContext, open_context
from nas_bert.search.front import SearchResult, finish_search, recipe_hashes
from nas_bert.search.shrinking import ShrinkingSampler, describe
from nas_bert.search.storage import adopt_unkeyed, own_study_name, storage_for
from nas_bert.search.trial_space import suggest_architecture, trial_params
from nas_bert.space import FAMILIES, IDENTITY, Architecture, Block, Op, families, grown, neighbours
from nas_bert.space import architecture as A
from nas_bert.store import ArchitectureRow, TrialRow, fingerprint
from nas_bert.study import SearchConfig, Study


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
    if space.layer_slots:
        return out | family_seeds(ctx, budget_ms)
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


def latency_error(latency: LatencyModel) -> float:
    """The latency model's leave-one-out error as a fraction (its calibration's mean absolute percentage error over
    the students timed end to end); 0 when unknown."""
    mape = getattr(getattr(latency, "calibration", None), "loo_mape", float("nan"))
    return min(max(float(mape), 0.0), 50.0) / 100 if math.isfinite(mape) else 0.0


def grow_limit(latency: LatencyModel, budget_ms: float) -> float:
    """The latency a grown point may be predicted at: the budget less the latency model's leave-one-out error."""
    return budget_ms * (1 - latency_error(latency))


def fits_within(latency: LatencyModel, limit_ms: float):
    """`arch -> predicted ms`, or None when over `limit_ms` (what `families.grown` and `neighbours` take)."""
    def fits(arch: Architecture) -> float | None:
        ms = latency.predict(arch)
        return ms if ms <= limit_ms else None

    return fits


def family_seeds(ctx: SearchContext, budget_ms: float, keep: int = 3) -> dict[str, Architecture]:
    """In a space made from the teacher, the hand-designed students are points: of each family the `keep`
    slowest the latency model predicts within the budget go first, so the search starts from every recipe a
    user would try and can at worst tie with them. Then its first step away from them: of each family, per
    size its members' layers share (the feed-forward neurons of a pruned family, the width of a Minitron-style
    one), the slowest member that leaves room for it grown by one more layer in the latency it leaves under the
    budget (`families.grown`, named "spread-3-i1024+layer4"), points no recipe reaches. Per size, not only the
    family's slowest: a lighter cut grown by a layer keeps one layer more, and in the quality study at 1/2 the
    teacher's layers 0, 2, 5 at 1024 neurons grown by layer 4 scored best of every point by the proxy, above the
    student the search chose, while growing only the slowest (its layers 0, 5, whole) never reached it
    (BENCHMARKS.md). A grown point is the largest that fits, so it sits at the budget's edge: it is grown to the
    budget less the latency model's leave-one-out error (`grow_limit`), so that measured it still holds the
    budget instead of being dropped by the finalists' timing or flagged over budget at export."""
    space = ctx.study.space
    points = families(space, ctx.teacher.embeddings_spec())
    predicted = {name: ctx.latency.predict(arch) for name, (_, arch) in points.items()}
    out: dict[str, Architecture] = {}
    limit = grow_limit(ctx.latency, budget_ms)

    fits = fits_within(ctx.latency, limit)

    recipes = {a.hash() for _, a in points.values()}
    for kind in FAMILIES:
        members = sorted((ms, name) for name, ms in predicted.items() if points[name][0] == kind and ms <= budget_ms)
        out |= {name: points[name][1] for _, name in members[-keep:]}
        done: set[frozenset[tuple[int, tuple[Op, ...]]]] = set()
        for _, name in reversed(members):  # per size, the slowest member that leaves room for one layer more
            arch = points[name][1]
            size = frozenset((b.hidden, b.ops) for b in arch.blocks if b.depth)
            if size in done:
                continue
            more = {f"{name}+layer{b}": a for b, a in grown(space, arch, fits).items() if a.hash() not in recipes}
            if more:
                out |= {n: a for n, a in more.items() if n not in out}
                done.add(size)
    return out


def carried_points(ctx: SearchContext, budget_ms: float, keep: int) -> list[Architecture]:
    """The `keep` best points the study has scored with this supernet (other budgets' searches: `nas-bert run`
    searches the largest budget first) that the latency model predicts within this budget, hand-designed points
    apart (they are seeds already). A larger budget's search explores small points too; at a small budget
    they start the search where its own sampler may take hundreds of trials to get, and they compete with
    its own trials by the proxy (each is scored again as a trial of this search)."""
    space, recipes = ctx.study.space, recipe_hashes(ctx.study, ctx.teacher.embeddings_spec())
    with ctx.db.session() as s:
        rows = s.execute(select(ArchitectureRow.hash, ArchitectureRow.arch_json).where(
            ArchitectureRow.study == ctx.study.name, ArchitectureRow.checkpoint_sha == ctx.checkpoint_sha
        ).order_by(ArchitectureRow.approx_loss, ArchitectureRow.hash)).all()
    out: list[Architecture] = []
    for h, arch_json in rows:
        if len(out) >= keep:
            break
        if h in recipes:
            continue
        try:
            arch = Architecture.from_json(arch_json).validate(space)
            if ctx.latency.predict(arch) <= budget_ms:
                out.append(arch)
        except NasBertError:  # a point of an earlier space file
            continue
    return out


def local_search(ctx: SearchContext, budget_ms: float):
    """An Optuna callback: whenever no queued trial is left, the best feasible trial by the proxy, if its
    neighbours were not queued yet, has every point one step from it that fits (`space.families.neighbours`, to
    the budget less the latency model's error as the grown seeds) queued, each named by its move. A climb from
    the seed points that goes on while a step improves the best; the sampler proposes the rest."""
    space, emb = ctx.study.space, ctx.teacher.embeddings_spec()
    limit = grow_limit(ctx.latency, budget_ms)

    fits = fits_within(ctx.latency, limit)

    def step(st: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        trials = st.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        feasible = [t for t in trials if t.state == TrialState.COMPLETE and t.values
                    and all(c <= 0 for c in t.constraints.values())]
        if not feasible:
            return
        best = min(feasible, key=lambda t: (t.values[0], t.number))
        expanded = set(st.user_attrs.get("expanded", []))
        if best.number in expanded:
            return
        st.set_user_attr("expanded", sorted(expanded | {best.number}))
        arch = suggest_architecture(optuna.trial.FixedTrial(best.params), space, emb)
        seen = {t.user_attrs.get("arch_hash") for t in trials}
        for move, point in neighbours(space, arch, fits).items():
            if point.hash() not in seen:
                st.enqueue_trial(trial_params(point, space), user_attrs={"move": f"{move} of #{best.number}"},
                                 skip_if_exists=True)

    return step


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
        approx = ctx.score(arch)
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
        base: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                                                       n_startup_trials=min(20, cfg.trials))
    else:
        base = optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size)
    return ShrinkingSampler(base, cfg.shrink_every, cfg.shrink_min_uses, seed) if cfg.shrink_every else base


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
                       ctx.latency.calibration, {k: getattr(cfg, k) for k in ("sampler", "population_size", "seed")},
                       *([{"shrink": (cfg.shrink_every, cfg.shrink_min_uses)}] if cfg.shrink_every else []),
                       *(["local_moves"] if cfg.local_moves else []),
                       *([ctx.proxy] if ctx.proxy != "blocks" else []))


def prepare_search(ctx: SearchContext, budget_ms: float) -> None:
    """Before any worker starts: a budget's losses and latencies come from one supernet checkpoint, one
    scoring protocol and one latency model; a search made from other inputs would compare apples and
    pears, so it is deleted and starts afresh."""
    name, storage = own_study_name(ctx.study, budget_ms), storage_for(ctx.study)
    inputs = search_inputs(ctx)
    adopt_unkeyed(ctx.study, budget_ms, inputs)  # a search named before names held the latency model
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
    name = own_study_name(study, budget_ms)  # this machine's latency model's search
    storage = storage_for(study)
    study_ = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"],
                                 sampler=make_sampler(cfg, worker), load_if_exists=True)
    study_.set_metric_names(["approx_loss" if ctx.proxy == "blocks" else "proxy_loss", "predicted_ms"])
    if study_.user_attrs.get("inputs") is None:
        study_.set_user_attr("inputs", search_inputs(ctx))
        study_.set_user_attr("checkpoint_sha", ctx.checkpoint_sha)
    if not study_.get_trials(deepcopy=False):  # a new search: the seed students go first
        for seed, arch in seed_architectures(ctx, budget_ms).items():
            study_.enqueue_trial(trial_params(arch, study.space), user_attrs={"seed": seed}, skip_if_exists=True)
        for arch in carried_points(ctx, budget_ms, 2 * cfg.rescore_top):
            study_.enqueue_trial(trial_params(arch, study.space), user_attrs={"carried": True}, skip_if_exists=True)
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

    moves = [local_search(ctx, budget_ms)] if cfg.local_moves and study.space.layer_slots else []
    study_.optimize(make_objective(ctx, budget_ms, n_trials, name), n_trials=None,
                    callbacks=[*moves, optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,)), tick],
                    gc_after_trial=False)
    bar.close()
    if isinstance(study_.sampler, ShrinkingSampler) and (dropped := study_.sampler.dropped(study_)):
        study_.set_user_attr("dropped_options", {k: sorted(map(str, v)) for k, v in dropped.items()})
        if progress:
            tqdm.write(f"progressive shrinking: {sum(map(len, dropped.values()))} dominated options no longer drawn "
                       f"({describe(dropped)})", file=sys.stderr)


def _spawned_worker(study_file: str, db_url: str, budget_ms: float, n_trials: int, worker: int, threads: int,
                    parent: int | None = None) -> None:
    from nas_bert.lifetime import die_with_parent
    from nas_bert.study import load_study

    die_with_parent(parent)  # a search killed outright (kill -9) leaves no worker writing trials behind
    torch.set_num_threads(threads)
    run_worker(load_study(study_file, db_url), budget_ms, n_trials, worker, progress=False)


def search(study: Study, budget_ms: float, trials: int | None = None, workers: int = 1) -> SearchResult:
    """Stages 2-4 for one budget (`trials` complete trials, `search.trials` by default; `workers` processes);
    resumable.

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus, the
    study's `search` section (its budgets apart) and the supernet and latency stages it reads. Returns a
    `SearchResult`: the trials' counts, the feasible front and the student the budget yields."""
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
            p = spawn.Process(target=_spawned_worker,
                              args=(str(study.file), study.db_url, budget_ms, n_trials, w, threads, os.getpid()))
            p.start()
            procs.append(p)
        torch.set_num_threads(threads)
    run_worker(study, budget_ms, n_trials, 0, ctx)
    for p in procs:
        p.join()
    return finish_search(ctx, budget_ms, time.perf_counter() - t0)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # spawned workers each tokenise
