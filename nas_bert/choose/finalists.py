"""Stage 5: the budget's student is chosen by what predicts quality, among searched and hand-designed students.

The finalists of a budget are the searched students the proxies like best and the hand-designed students a user
gets for free at that latency (each family's slowest that the budget holds). Each is timed end to end, interleaved
with the others and the teacher, on the latency device; one measured over the budget is dropped. Each survivor gets
the same short distillation (the study's recipe, TinyBERT's uniform mapping, the best weights kept) in rounds of
successive halving (the better half trains on from its best weights) and is ranked by the held-out fidelity of its
sentence vectors to the teacher's (or a task's probe accuracy, `search.choose_by`), with an interval that says how
far the ranking can be trusted: a paired bootstrap over the held-out texts (every finalist is scored on the same
texts and resamples, so the interval is that of a difference; `ranking`). A hand-designed student may win: the
summary says so. Every finalist's result is a database row: a killed choice continues.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from nas_bert.choose.candidates import (
    ORIGINS,
    Candidate,
    baseline_family,
    family_to_time,
    grown_recipes,
    grown_reserves,
    held_below,
    search_candidates,
    shrunk_reserves,
)
from nas_bert.choose.choice import record_choice
from nas_bert.choose.ranking import (  # the records and the ranking, re-exported: `choose` returns them
    BEFORE_KEYS,
    SCORE_KEYS,
    Finalist,
    FinalistsResult,
    Margin,
    SearchReport,
    TruncatedReference,
    criterion,
    halve,
    margin,
    summarise,
)
from nas_bert.choose.rows import (
    continued,
    ranked,
    round_elsewhere,
    scored_elsewhere,
    store,
    stored,
    stored_rounds,
    update,
)
from nas_bert.choose.screen import SCREEN_SEED, rank_by_screen, screen, screened_pool
from nas_bert.choose.seeds import SEED_KEYS, seed_mean
from nas_bert.choose.timing import (
    budget_fraction,
    holds,
    host_speed,
    judged_ms,
    measured_ms,
    predict_now,
    replace_over_budget,
    replace_under_budget,
)
from nas_bert.distill import (
    StudentContext,
    distill_points,
    uniform_mapping,
)
from nas_bert.errors import NasBertError
from nas_bert.evaluate import (
    bootstrap_interval,
    fidelity_bootstrap,
    linear_probe,
    readout_fidelity,
    readout_gain,
    validation_scores,
)
from nas_bert.evaluate.evaluation import protocol_hash as protocol_of_task
from nas_bert.evaluate.evaluation import task_name
from nas_bert.evaluation_config import EvalConfig, TaskData
from nas_bert.latency import ensure_latency_model
from nas_bert.search import latency_error
from nas_bert.store import json_hash
from nas_bert.study import Study
from nas_bert.train import BestKeeper, make_accelerator, train_loop

SEED_STRIDE = 7_919  # a last round's second, third ... run draws its batches this far from the first's


# -- the short distillation -----------------------------------------------------------------------
def protocol_hash(study: Study, checkpoint_sha: str) -> str:
    """What a finalist's score depends on: the finalists' and distillation settings, data, teacher, supernet."""
    cfg = study.cfg
    blob: dict[str, Any] = {"steps": cfg.search.finalist_steps, "distill": cfg.distill.model_dump(mode="json"),
                            "corpus": cfg.corpus.model_dump(mode="json"), "teacher": cfg.teacher, "supernet": checkpoint_sha}
    if probed := _probed_tasks(study):  # choose_by a task: its probes are part of every finalist's score
        blob["probes"] = [protocol_of_task(choosing(study), t) for t in probed]
    if tuned := _finetuned_tasks(study):  # and its fine-tuning, in every round after the first
        blob["finetuned"] = [protocol_of_task(choosing(study), t) for t in tuned]
    return json_hash(blob)


def choosing(study: Study, last: bool = False) -> EvalConfig:
    """search.choose_by's protocol for probes and fine-tuning: the evaluation's, search.choose_protocol's in place
    (`last`: the last round's fine-tuning, the evaluation's own with choose_protocol.last_round: evaluate)."""
    return study.cfg.search.choose_protocol.applied_to(study.cfg.evaluate, last)


def _measured_as(study: Study, last: bool) -> str | None:
    """How a round is measured: "evaluate" (the last round with search.choose_protocol.last_round: evaluate: as the
    exported student is, distilled to distill.steps in all and fine-tuned by the evaluation's own protocol) or None
    (the choice's); a stored round measured otherwise is measured again."""
    return "evaluate" if last and study.cfg.search.choose_protocol.last_round == "evaluate" else None


def _round_steps(study: Study, steps: int, last: bool) -> int:
    """A round's steps in all: successive halving's, the distillation's own for a round measured as the export is."""
    return max(steps, study.cfg.distill.steps) if _measured_as(study, last) else steps


def _probed_tasks(study: Study, kind: str = "task") -> list[TaskData | str]:
    """The study's tasks `search.choose_by` ranks the finalists by, as `kind:NAME` (none by default); finetune:wordnet
    names the default task (WordNet supersenses)."""
    names = [k.partition(":")[2] for k in criterion(study) if k.startswith(f"{kind}:")]
    own = {t.name: t for t in study.cfg.evaluate.tasks}
    return [own.get(n, n) for n in names]  # the validator let only finetune:wordnet name no task of the study


def _finetuned_tasks(study: Study) -> list[TaskData | str]:
    return _probed_tasks(study, "finetune")


def _unscored(metrics: dict[str, Any] | None, study: Study, final: bool, last: bool = False) -> bool:
    """A stored result that the round needs again: never distilled, measured otherwise than the round is (`last`: the
    last round, `_measured_as`), or a `final` (fine-tuned) round's without its fine-tuning."""
    if metrics is None or "fidelity" not in metrics or metrics.get("measured_as") != _measured_as(study, last):
        return True
    return final and any(f"finetune:{task_name(t)}" not in (metrics.get("probe") or {}) for t in _finetuned_tasks(study))


def short_distill(ctx: StudentContext, cand: Candidate, steps: int, final: bool = True,
                  kept: dict[tuple[str, int], dict[str, Any]] | None = None, seed_offset: int = 0,
                  probes: bool = True, schedule_steps: int | None = None, last: bool = False, seed: int = 0
                  ) -> dict[str, Any]:
    """The same short distillation for every finalist; its best held-out fidelity and that value's interval (and the
    choose_by tasks' scores; fine-tuned ones in a `final` round only: every round after the first, and the first
    when no halving follows it).

    With `kept` (a choice's kept weights by finalist and steps), a later round of successive halving continues the
    finalist's best weights of its longest earlier round there for the steps between (as Hyperband does: a survivor
    trains on, on batches it has not seen, instead of again from its start), and leaves its own best weights there.
    `steps` counts every step the finalist has had. `seed_offset` draws other batches (the screen's); `probes=False`
    scores fidelity alone; `schedule_steps` (more than `steps`) trains the first `steps` of a learning-rate schedule
    that long (the screen: the first round's); `last`: the last round, fine-tuned by `choosing(study, last)`; `seed`
    (search.choose_protocol.last_round_seeds): the round's seed-th run, on other batches and fine-tuning seeds."""
    dc = ctx.study.cfg.distill
    done = max((n for name, n in kept if name == cand.name and n < steps), default=0) if kept else 0
    todo = steps - done
    span = max(todo, schedule_steps or 0)  # the schedule's length: `todo` steps of it are trained
    cfg = dc.model_copy(update={"steps": span, "warmup_steps": max(1, span // 10), "eval_every": todo, "grad_accum": 1,
                                "seed": dc.seed + done + seed_offset + SEED_STRIDE * seed})  # continued: other batches
    module = ctx.start(cand.arch, cand.origin, dc.freeze_embeddings)
    if done:
        module.load_state_dict(kept[(cand.name, done)])
    module = module.to(ctx.study.device())
    mapping = uniform_mapping(len(distill_points(cand.arch)), ctx.teacher.num_layers)
    objective = ctx.objective(cand.arch, mapping, dc.val_batches, dc.batch_size)
    keeper = BestKeeper("fidelity")
    before = {"step": 0, **objective.validate(module)}
    start_vectors = objective.last_vectors
    keeper.offer(module, before)
    # a continued round starts from trained weights: the zero-step figures are the first round's alone
    zero = {} if done else zero_step_proxies(*start_vectors, objective.embeddings_vectors())
    t0 = time.perf_counter()
    train_loop(model=module, objective=objective, dataset=ctx.corpus["train"], collator=ctx.collator, cfg=cfg,
               total_steps=span, stop_after=todo, ckpts=None, accelerator=make_accelerator(ctx.study.device()), meta={},
               desc=f"finalist {cand.name}", progress=False, keep_best=keeper)
    module.load_state_dict(keeper.best_state())
    if kept is not None:
        kept[(cand.name, steps)] = keeper.best_state()
    # validated only at the start and the end (eval_every = todo): the best's vectors are already computed
    s_vecs, t_vecs = {0: start_vectors, todo: objective.last_vectors}.get(keeper.step) or objective.vectors(module)
    boot = fidelity_bootstrap(s_vecs, t_vecs)  # the same texts and resamples for every finalist: pairs up
    lo, hi = bootstrap_interval(boot)  # fidelity_interval's, from the values in hand
    # choose_by a task: a linear probe on the kept weights' frozen sentence vectors
    ev, dev = choosing(ctx.study), ctx.study.device()
    probe = {f"task:{task_name(t)}": linear_probe(module.student, ctx.teacher.tokenizer, ctx.teacher, ev, t, dev)
             for t in (_probed_tasks(ctx.study) if probes else [])}
    tuned = _finetuned_tasks(ctx.study) if final else []
    correct: dict[str, str] = {}  # which validation examples each fine-tuning got right: paired intervals
    if tuned:  # choose_by finetune:NAME: the kept weights fine-tuned as the evaluation does, scored on validation
        tune = choosing(ctx.study, last)
        tune = tune.model_copy(update={"seed": tune.seed + seed}) if seed else tune
        for t in tuned:
            key = f"finetune:{task_name(t)}"
            probe[key], correct[key] = validation_scores(module.student, ctx.teacher.tokenizer, tune, t, dev)
    as_ = _measured_as(ctx.study, last)
    return {"fidelity_before": before["fidelity"], **zero, "fidelity": keeper.value, "fidelity_interval": [lo, hi],
            "fidelity_bootstrap": [None if math.isnan(v) else round(v, 5) for v in boot],
            "best_step": done + keeper.step, "seconds": round(time.perf_counter() - t0, 1),
            **({"continued_from": done} if done else {}), **({"probe": probe} if probe else {}),
            **({"probe_correct": correct} if correct else {}),
            **({"measured_as": as_} if as_ else {})}


def zero_step_proxies(student: torch.Tensor, teacher: torch.Tensor, embeddings: torch.Tensor) -> dict[str, float]:
    """The searches' readout proxies on a finalist's start (`search.proxy` readout and gain), so the summary can say
    how each ranks every finalist, hand-designed ones too; none on fewer than 64 held-out texts (as the search)."""
    if len(student) < 64:
        return {}
    vals = {"readout_before": readout_fidelity(student, teacher), "gain_before": readout_gain(student, embeddings, teacher)}
    return {k: round(v, 5) for k, v in vals.items() if math.isfinite(v)}


# -- the choice -------------------------------------------------------------------------------------
# what a finalist's stored row gives a later choice: its short distillation's figures and where they came from; what
# the choice measures of the student itself (timing, screen, ranks, reserve) is its own, never the row's copy
ROW_KEYS = frozenset((*SCORE_KEYS, "continued_from", "scored_at_budget_ms"))


def choose(study: Study, budget_ms: float, progress: bool = True) -> FinalistsResult:
    """Stage 5 for one budget: time, short-distil and rank the finalists; resumable.

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus, the
    study's `search` (its budgets apart) and `distill` sections, the latency device and the budget's search.
    Returns a `FinalistsResult` whose `chosen` is the budget's student."""
    cfg = study.cfg.search
    ctx = StudentContext.open(study)
    protocol = protocol_hash(study, ctx.checkpoint_sha)
    cands = search_candidates(ctx.db, study, budget_ms, cfg.screen_pool if cfg.screen_steps else 0)
    if not cands:
        raise NasBertError(f"the {budget_ms:g} ms search of study '{study.name}' has no feasible student; "
                           "raise the budget or search.trials")
    lat = ensure_latency_model(ctx.db, study.space, ctx.teacher.embeddings_spec(), study.cfg.latency, progress=False)
    family = baseline_family(ctx) if cfg.finalist_baselines else {}
    recipes = {c.arch.hash() for c in family.values()}  # no reserve is a hand-designed point, timed or not
    spare = max(latency_error(lat), 0.03)  # what a student measured past its prediction keeps to spare
    if family:
        # a searched student that is a hand-designed point (a seed, or found again): judged as that member, once
        points = {c.arch.hash(): c for c in family.values()}
        cands = [Candidate(points[c.arch.hash()].name, points[c.arch.hash()].origin, c.arch, c.trial, c.proxies)
                 if c.arch.hash() in points else c for c in cands]
        family = family_to_time(family, lat.predict, budget_ms,
                                reach=1 + 2**cfg.reserve_grows * spare if cfg.reserve_grows else 1.0)
        cands = [c for c in cands if c.name not in family]
    if cfg.screen_steps:  # the searched pool ranked by a few distillation steps: its best are the top
        cands = rank_by_screen(cands, _screen(ctx, screened_pool(cands), protocol, progress), cfg.rescore_top)
    # each of the top one, two, ... steps smaller, in reserve for one measured over the budget (a budget timed
    # before they were reserves goes on without them)
    chains = study.space.layer_slots
    reserves = shrunk_reserves(cands, study.space, lat, cfg.rescore_top, recipes | {c.arch.hash() for c in cands},
                               cfg.reserve_shrinks) if chains else []
    # and one, two steps larger, for one measured well under it (an over-predicting latency model)
    reserves += grown_reserves(cands, study.space, lat, cfg.rescore_top,
                               recipes | {c.arch.hash() for c in [*cands, *reserves]},
                               cfg.reserve_grows) if chains and cfg.reserve_grows else []
    # and each family's slowest member predicted within the budget grown alike (search.grow_recipes)
    # and, for one judged at the budget's edge, shrunk alike (`held_below`)
    near = recipes | {c.arch.hash() for c in [*cands, *reserves]}
    beside, below = [grown_recipes(family, study.space, lat, budget_ms, near, cfg.reserve_grows, up=up)
                     if chains and cfg.reserve_grows and cfg.grow_recipes else [] for up in (True, False)]
    reserves += beside + below
    # a budget given as a fraction of the teacher: that fraction of the teacher timed in this run (no calibration
    # students timed: no drift estimate enters)
    fit = lat.calibration.reference_ms
    x = budget_fraction(study, budget_ms, fit)
    ms, timing = measured_ms(ctx, [*cands, *reserves, *family.values()], budget_ms, progress,
                             optional=frozenset(c.name for c in reserves), calibrate=x is None)
    cands += [c for c in reserves if c.name in ms]
    predict_now(lat, [*cands, *family.values()], timing)
    everyone = {c.name: c for c in [*cands, *family.values()]}
    if x is not None:
        timing = {**timing, "budget_x": x, "teacher_fit_ms": fit}
    # against the teacher's architecture timed as at the fit (runs stored before it was timed: the teacher)
    teacher = (timing.get("reference_ms") or timing.get("teacher_ms"), fit) if x is not None else None
    slowest = timing.pop("slowest", {})  # several runs: each one's slowest is judged (one run: that run)
    judged = {name: judged_ms(slowest.get(name, v), timing.get("drift"), host_speed(everyone[name].proxies), teacher)
              for name, v in ms.items()}
    # a top student measured well under the budget grows into its chain, one measured over shrinks into its own
    cands = replace_over_budget(replace_under_budget(cands, judged, budget_ms, spare), judged, budget_ms,
                                cfg.rescore_top)
    for origin in ORIGINS[1:]:  # each family's slowest member that the budget holds (by the grown points' rule too)
        fits = [c for c in family.values() if c.origin == origin
                and holds(c, judged[c.name], budget_ms, spare if cfg.reserve_grows else None)]
        if fits:
            cands.append(max(fits, key=lambda c: ms[c.name]))
    # a family finalist's grown point that holds with the error to spare: a searched finalist beside it
    timed_beside = [c for c in beside if c.name in ms and c.proxies["grown_of"] in {f.name for f in cands}]
    cands += [Candidate(c.name, c.origin, c.arch, c.trial, {**c.proxies, "beside_recipe": c.proxies["grown_of"]})
              for c in replace_under_budget([*(f for f in cands if f.origin != "search"), *timed_beside], judged,
                                            budget_ms, spare) if c.proxies.get("grown_of") in family]
    cands += held_below(cands, below, judged, budget_ms, spare)
    if cfg.screen_steps:  # every finalist the budget holds screened too (the pool's are stored): the screen's tau
        held = [c for c in cands if judged[c.name] <= budget_ms]
        scores = _screen(ctx, held, protocol, progress)
        for c in held:
            c.proxies["screen_fidelity"] = scores[c.name] if math.isfinite(scores[c.name]) else None
    results: dict[str, dict[str, Any]] = {}
    kept: dict[tuple[str, int], dict[str, Any]] = {}  # each finalist's best weights of its last round, to train on
    # fine-tuning, if chosen by, is scored in every round after the first (half the finalists or fewer, so the cuts
    # after them see it) and in the first where no halving follows it
    final = cfg.finalist_rounds == 1 or sum(judged[c.name] <= budget_ms for c in cands) < 3
    bar = tqdm(cands, desc=f"finalists {budget_ms:g} ms", disable=not progress)
    for c in bar:
        bar.set_postfix(student=c.name)
        c.proxies["measured_ms"], c.proxies["judged_ms"] = ms[c.name], judged[c.name]
        if c.name in slowest:
            c.proxies["slowest_ms"] = slowest[c.name]
        over = judged[c.name] > budget_ms
        metrics = stored(ctx.db, study, budget_ms, c.name, protocol)
        if metrics is None or (not over and _unscored(metrics, study, final, final)):  # not scored, the budget holds
            elsewhere = None if over else scored_elsewhere(ctx.db, study, c, protocol,
                                                            lambda m: not _unscored(m, study, final, final))
            metrics = {"over_budget": True} if over else elsewhere or short_distill(
                ctx, c, _round_steps(study, cfg.finalist_steps, final), final,
                kept=kept if cfg.finalist_rounds > 1 else None, last=final)
            store(ctx.db, study, budget_ms, c, protocol, ms[c.name], metrics)
            metrics = stored(ctx.db, study, budget_ms, c.name, protocol) or metrics  # the first writer's stands
        if final and not over:  # no halving follows: its runs beyond the first (search.choose_protocol)
            metrics = {**metrics, "seeds": _seeds(ctx, c, metrics, _round_steps(study, cfg.finalist_steps, final),
                                                  final, None, lambda runs, name=c.name: update(
                                                      ctx.db, study, budget_ms, name, protocol, {"seeds": runs}))}
            metrics = seed_mean(metrics)
        # the row's own figures are the first round's; what this choice measured of the student (its timing, screen,
        # ranks) is this run's, not the copy the row kept when it was first stored
        first = {k: v for k, v in metrics.items() if k in ROW_KEYS}
        results[c.name] = {**c.to_dict(), **first, "judged_ms": judged[c.name], "over_budget": over}
    bar.close()
    by_name = {c.name: c for c in cands}
    alive = [n for n, r in results.items() if not r["over_budget"]]
    ties: dict[str, str] = {}  # kept past a cut's better half, within noise of the one at the cut
    for r in range(1, cfg.finalist_rounds):  # successive halving: the better half, trained on for longer
        if len(alive) < 3:  # halving two or fewer decides nothing more
            break
        runs = (stored_rounds(ctx.db, study, budget_ms, protocol, {n: results[n]["rounds"] for n in alive})
                if r > 1 and _runs_wanted(study, False) > 1 else None)  # the round's runs: its ties at the cut go on
        half = math.ceil(len(alive) / 2)
        alive = halve(alive, results, criterion(study, final=r > 1), runs)  # the first round's cut: fidelity alone
        ties |= {n: alive[half - 1] for n in alive[half:]}
        kept = {k: v for k, v in kept.items() if k[0] in alive}  # the others train no further
        last = r == cfg.finalist_rounds - 1 or len(alive) < 3  # no halving follows: its figures choose
        steps = _round_steps(study, cfg.finalist_steps * 2 ** r, last)
        for name in tqdm(alive, desc=f"finalists {budget_ms:g} ms, round {r + 1} ({steps} steps)", disable=not progress):
            results[name] = {**results[name], **_round(ctx, study, budget_ms, by_name[name], protocol, steps,
                                                       cfg.finalist_steps * 2 ** (r - 1), kept=kept, last=last)}
    result = ranked(ctx.db, study, budget_ms, protocol, list(results.values()),  # seeds, ties and all
                    {"timing": timing, **({"kept_within_noise": ties} if ties else {})}, spare)
    record_choice(ctx.db, study, budget_ms, protocol, result)  # this run's, whatever rows earlier runs left
    return result


def _screen(ctx: StudentContext, cands: list[Candidate], protocol: str, progress: bool) -> dict[str, float]:
    cfg = ctx.study.cfg.search  # the first screen_steps of the first round's schedule (its learning rates)
    return screen(ctx.db, ctx.study, cands, protocol, progress=progress, distil=lambda c: short_distill(
        ctx, c, cfg.screen_steps, final=False, seed_offset=SCREEN_SEED, probes=False, schedule_steps=cfg.finalist_steps))


def _round(ctx: StudentContext, study: Study, budget_ms: float, c: Candidate, protocol: str, steps: int, before: int,
           final: bool = True, kept: dict[tuple[str, int], dict[str, Any]] | None = None, last: bool = False
           ) -> dict[str, Any]:
    """A later round of successive halving for one finalist: its short distillation to `steps` in all, continuing
    its last round's best weights (in `kept`; made again where this process has none, e.g. after a kill), stored in
    its row's `rounds` (so a killed choice continues), and its fidelity now the finalist's (`last`: the round whose
    figures choose, `_measured_as`; `before`: the steps of the round it continues)."""
    metrics = stored(ctx.db, study, budget_ms, c.name, protocol) or {}
    rounds = list(metrics.get("rounds") or [{k: metrics[k] for k in SCORE_KEYS if k in metrics}
                                            | {"steps": study.cfg.search.finalist_steps}])
    done = {r["steps"]: r for r in rounds}
    if _unscored(done.get(steps), study, final, last) or not continued(done[steps]):
        elsewhere = round_elsewhere(ctx.db, study, c, protocol, steps, lambda m: not _unscored(m, study, final, last))
        if elsewhere is None:
            kept = {} if kept is None else kept
            _warm(ctx, c, before, kept)
            elsewhere = {**short_distill(ctx, c, steps, final, kept=kept, last=last), "steps": steps}
        done[steps] = elsewhere
        rounds = sorted(done.values(), key=lambda r: r["steps"])
        update(ctx.db, study, budget_ms, c.name, protocol, {"rounds": rounds})
    if _runs_wanted(study, last) > 1:  # its runs beyond the first, from the same start
        def save(runs: list[dict[str, Any]]) -> None:
            done[steps] = {**done[steps], "seeds": runs}
            update(ctx.db, study, budget_ms, c.name, protocol, {"rounds": sorted(done.values(), key=lambda r: r["steps"])})

        start = _start(ctx, c, before, kept) if _seeds_due(study, done[steps], last) else None
        done[steps] = {**done[steps], "seeds": _seeds(ctx, c, done[steps], steps, final, start, save, last)}
        rounds = sorted(done.values(), key=lambda r: r["steps"])
    last = seed_mean(done[steps])
    # this choice's rounds: halving's before it and this one (a row may also keep a last round measured otherwise)
    mine = [seed_mean(x) for x in rounds if x["steps"] <= before and "measured_as" not in x] + [last]
    return {**{k: last[k] for k in SCORE_KEYS if k in last}, "rounds": mine,
            **{k: mine[0][k] for k in BEFORE_KEYS if k in mine[0]}}  # the start: the first round's


def _runs_wanted(study: Study, last: bool) -> int:
    """How many runs a round that scores fine-tuning gets: search.choose_protocol.last_round_seeds in the last,
    round_seeds before it (the first round, fidelity alone where a halving follows, runs once)."""
    own = study.cfg.search.choose_protocol
    return own.last_round_seeds if last else own.round_seeds


def _seeds_due(study: Study, figures: dict[str, Any], last: bool) -> bool:
    return len(figures.get("seeds") or []) + 1 < _runs_wanted(study, last)


def _seeds(ctx: StudentContext, c: Candidate, figures: dict[str, Any], steps: int, final: bool,
           start: dict[tuple[str, int], dict[str, Any]] | None, save: Any, last: bool = True) -> list[dict[str, Any]]:
    """A round's runs beyond its first (search.choose_protocol.last_round_seeds, round_seeds; `figures`: the round
    as stored, its first run and any others), each from `start` (the earlier round's best weights; None: from the
    beginning) on other batches and another fine-tuning seed, stored by `save` as it ends: a killed choice goes on."""
    runs = list(figures.get("seeds") or [])
    for k in range(len(runs) + 1, _runs_wanted(ctx.study, last)):
        out = short_distill(ctx, c, steps, final, kept=None if start is None else dict(start), last=last, seed=k)
        runs.append({key: out[key] for key in SEED_KEYS if key in out})
        save(runs)
    return runs


def _start(ctx: StudentContext, c: Candidate, before: int, kept: dict[tuple[str, int], dict[str, Any]] | None
           ) -> dict[tuple[str, int], dict[str, Any]]:
    """The earlier round's best weights that a round's further runs start from (made again where need be)."""
    kept = {} if kept is None else kept
    _warm(ctx, c, before, kept)
    return {(c.name, before): kept[(c.name, before)]}


def _warm(ctx: StudentContext, c: Candidate, steps: int, kept: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Make the finalist's best weights after `steps` in all again where this process has none (its rounds were
    scored by a killed process or at another budget): its rounds rerun, their figures already stored."""
    first = ctx.study.cfg.search.finalist_steps
    if (c.name, steps) in kept or steps < first:
        return
    if steps > first:
        _warm(ctx, c, steps // 2, kept)
    short_distill(ctx, c, steps, final=False, kept=kept)


__all__ = ["Finalist", "FinalistsResult", "Margin", "SearchReport", "TruncatedReference", "choose",
           "halve", "margin", "protocol_hash", "short_distill", "summarise"]
