"""Stage 5: the budget's student is chosen by what predicts quality, among searched and hand-designed students.

The finalists of a budget are the searched students the cheap proxies like best (the top by NAS-BERT's
approximate loss and by the end-to-end rescored loss, and the seed students) and the hand-designed
students a user gets for free at that latency (the teacher's first layers; the teacher at a uniform
smaller width, its units ranked by importance). Each is timed end to end, interleaved with the others
and the teacher, on the latency device; one measured over the budget is dropped. Each survivor gets
the same short distillation (the study's distillation recipe, TinyBERT's uniform mapping, the best
weights kept) and is ranked by the held-out fidelity of its sentence vectors to the teacher's, with a
subsampling interval that says how far the ranking can be trusted. A hand-designed student may win:
the summary then says so, and the later stages distil, evaluate and export it like any other.
Every finalist's result is a database row, so a killed choice continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tqdm.auto import tqdm

from nas_bert.data import load_task
from nas_bert.distill import StudentContext, distill_points, uniform_mapping
from nas_bert.errors import NasBertError
from nas_bert.evaluate import agreement, fidelity_interval
from nas_bert.latency import (
    MODEL_ROUNDS,
    Calibration,
    LatencyModel,
    build_student,
    calibration_architectures,
    calibration_students,
    device_fingerprint,
    ensure_latency_model,
    in_fresh_process,
    in_run,
    measure_models,
)
from nas_bert.search import kendall_tau, optuna_study_name, storage_for
from nas_bert.space import Architecture, Embeddings, SearchSpace
from nas_bert.store import ArchitectureRow, Database, FinalistRow, LatencyRow, json_hash, sha256_hex
from nas_bert.study import Study
from nas_bert.supernet import (
    pruned_architecture,
    teacher_initialised,
    truncated_architecture,
    uniform_architecture,
)
from nas_bert.teacher import load_teacher
from nas_bert.train import BestKeeper, make_accelerator, train_loop

ORIGINS = ("search", "truncated", "uniform", "pruned")


@dataclass
class Candidate:
    """A student that may become the budget's: where it comes from, and what the cheap proxies said."""

    name: str
    origin: str  # search | truncated | uniform
    arch: Architecture
    trial: int | None = None
    proxies: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "trial": self.trial, "hash": self.arch.hash(),
                "architecture": str(self.arch), "arch_json": self.arch.canonical_json(), "params": self.arch.params(),
                **self.proxies}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        keep = {"name", "origin", "trial", "hash", "architecture", "arch_json", "params"}
        return cls(d["name"], d["origin"], Architecture.from_json(d["arch_json"]), d.get("trial"),
                   {k: v for k, v in d.items() if k not in keep})


# -- who is a finalist -----------------------------------------------------------------------------
def search_candidates(db: Database, study: Study, budget_ms: float) -> list[Candidate]:
    """The searched students the proxies like best: the top `rescore_top` distinct feasible ones by approximate
    loss, the same by rescored loss, and the seed students (the fastest, the teacher's first layers); and as
    many again by approximate loss in reserve (proxy "reserve"), timed with them, each to take the place of
    one of the top that is measured over the budget (the ones the latency model under-predicted)."""
    st = optuna.load_study(study_name=optuna_study_name(study, budget_ms), storage=storage_for(study))
    feasible = [t for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values[1] <= budget_ms]
    first: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(feasible, key=lambda t: t.number):
        first.setdefault(t.user_attrs["arch_hash"], t)
    with db.session() as s:
        rows = {r.hash: r for r in s.scalars(select(ArchitectureRow).where(
            ArchitectureRow.study == study.name, ArchitectureRow.hash.in_(list(first))))}
    top = study.cfg.search.rescore_top
    by_approx = sorted(first, key=lambda h: rows[h].approx_loss)[:2 * top]
    rescored = [h for h in first if rows[h].rescored_loss is not None]
    by_rescored = sorted(rescored, key=lambda h: rows[h].rescored_loss)[:top]
    seeds = [h for h, t in first.items() if "seed" in t.user_attrs]
    core = {*seeds, *by_approx[:top], *by_rescored}
    out = []
    for h in dict.fromkeys([*seeds, *by_approx, *by_rescored]):
        t, r = first[h], rows[h]
        name = t.user_attrs.get("seed") or f"trial-{t.number}"
        proxies = {"predicted_ms": r.predicted_ms, "approx_loss": r.approx_loss, "rescored_loss": r.rescored_loss}
        if h in by_approx:
            proxies["approx_rank"] = by_approx.index(h)
        if h not in core:
            proxies["reserve"] = True
        out.append(Candidate(name, "search", Architecture.from_json(r.arch_json), t.number, proxies))
    return out


def replace_over_budget(cands: list[Candidate], judged: dict[str, float], budget_ms: float,
                        top: int) -> list[Candidate]:
    """The finalists without their reserve, but for one reserve student (the next by approximate loss that the
    budget holds) in the place of each of the top `top` by approximate loss measured over the budget."""
    dropped = sum(1 for c in cands if c.proxies.get("approx_rank", top) < top and judged[c.name] > budget_ms)
    spare = sorted((c for c in cands if c.proxies.get("reserve") and judged[c.name] <= budget_ms),
                   key=lambda c: c.proxies["approx_rank"])
    return [c for c in cands if not c.proxies.get("reserve")] + spare[:dropped]


def baseline_family(ctx: StudentContext) -> dict[str, Candidate]:
    """The hand-designed students: the teacher's first k layers; the teacher's depth at smaller widths
    (every `finalist_width_step` heads), its units ranked by importance; and the teacher's first k layers
    with their feed-forward pruned to each smaller ratio of the search space (its most important neurons)."""
    t = ctx.teacher
    hs = t.hidden_size // int(t.config.num_attention_heads)
    step = hs * ctx.study.cfg.search.finalist_width_step
    out = {f"truncated-{k}": Candidate(f"truncated-{k}", "truncated", truncated_architecture(t, k))
           for k in range(1, t.num_layers)}
    out |= {f"uniform-{w}": Candidate(f"uniform-{w}", "uniform", uniform_architecture(t, w))
            for w in range(step, t.hidden_size, step)}
    full = int(t.config.intermediate_size)
    ratios = sorted(ctx.study.space.ffn_ratios)
    for inner in (full * r // ratios[-1] for r in ratios[:-1]):
        out |= {f"pruned-{k}-i{inner}": Candidate(f"pruned-{k}-i{inner}", "pruned", pruned_architecture(t, k, inner))
                for k in range(1, t.num_layers + 1)}
    return out


def family_to_time(family: dict[str, Candidate], predict: Any, budget_ms: float, keep: int = 3,
                   margin: float = 1.25) -> dict[str, Candidate]:
    """The hand-designed students worth timing for a budget: every truncated teacher (the untouched reference
    beside the budget's student is the one of the nearest measured latency), and of each other family the
    `keep` slowest that the latency model predicts within `margin` x the budget (a member it cannot predict,
    made of modules outside the space's table, is timed anyway). Only each family's slowest member that the
    budget holds becomes a finalist, and the model errs by a few percent, so the rest need no timing run."""
    out: dict[str, Candidate] = {}
    for origin in dict.fromkeys(c.origin for c in family.values()):
        members = {n: c for n, c in family.items() if c.origin == origin}
        for c in members.values():  # kept in its finalist row: export sets it beside the measured time
            try:
                c.proxies["predicted_ms"] = predict(c.arch)
            except NasBertError:
                c.proxies["predicted_ms"] = None
        pred = {n: c.proxies["predicted_ms"] for n, c in members.items()}
        if origin == "truncated":
            out |= members
            continue
        near = sorted((n for n, v in pred.items() if v is not None and v <= margin * budget_ms), key=lambda n: pred[n])
        keepers = {n for n, v in pred.items() if v is None} | set(near[-keep:] if keep else [])
        out |= {n: c for n, c in members.items() if n in keepers}
    return out


# -- measured latency -------------------------------------------------------------------------------
def reorders(origin: str) -> bool:
    """Whether a student of this origin reorders a full-width output into the teacher's dimensions: a searched
    one does; the teacher's own layers, cut or pruned, keep its order."""
    return origin == "search"


def _model(arch: Architecture, origin: str) -> torch.nn.Module:
    return build_student(arch, reorder=reorders(origin))


def measured_ms(ctx: StudentContext, cands: list[Candidate], budget_ms: float,
                progress: bool = True) -> tuple[dict[str, float], dict[str, Any]]:
    """End-to-end latency of each candidate on the study's latency device (name -> ms): all of one budget's
    candidates, the teacher and the latency model's calibration students timed in one interleaved run.

    A shared host drifts (the same model can take 15% longer than ten minutes ago), so the candidates are
    compared with each other only within one run; the reference student (the largest), timed when the latency
    model was fitted and again in this run, gives the drift, and the budget judges times at the fitted speed
    as far as the drift and each student's own factor agree (`judged_ms`). The
    calibration refitted on its students' times in this run predicts the candidates at the host's speed now
    (`predicted_now_ms`, beside the search's `predicted_ms`). The raw figures are kept. Stored per budget
    (rows "model:<budget>:<origin>:<hash>"), so a resumed choice measures nothing again. Returns the times
    and the run's record: the drift, the teacher's time and the refitted calibration (refit_a, refit_c, refit_w,
    refit_b); each calibration student's time stays in the rows "calibration:<budget>:<teacher>:<index>".
    """
    cfg = ctx.study.cfg.latency
    fp = device_fingerprint(cfg)
    keys = {c.name: f"model:{budget_ms:g}:{c.origin}:{c.arch.hash()}" for c in cands}
    tag = f"{budget_ms:g}:{sha256_hex(ctx.study.cfg.teacher, 12)}"
    extra = {k: f"{k.removesuffix('_ms')}:{tag}"
             for k in ("drift", "teacher_ms", "refit_a", "refit_c", "refit_w", "refit_b")}
    with ctx.db.session() as s:
        known = {r.key: r.ms for r in s.scalars(select(LatencyRow).where(
            LatencyRow.fingerprint == fp, LatencyRow.key.in_([*keys.values(), *extra.values()])))}
    if any(k not in known for k in keys.values()):
        emb = ctx.teacher.embeddings_spec()
        lat = ensure_latency_model(ctx.db, ctx.study.space, emb, cfg, progress=False)
        recal = calibration_architectures(ctx.study.space, emb, cfg, lat)
        job = (lat, ctx.study.space, emb, [(c.arch.to_dict(), c.origin) for c in cands], ctx.study.cfg.teacher,
               progress)
        raw = in_fresh_process(time_finalists, *job) if cfg.fresh_process else time_finalists(*job)
        drift, now = in_run(lat, ctx.study.space, emb, recal, raw[len(cands):-1])
        values = {**{keys[c.name]: ms for c, ms in zip(cands, raw, strict=False)}, extra["drift"]: drift,
                  extra["teacher_ms"]: raw[-1], extra["refit_a"]: now.a, extra["refit_c"]: now.c,
                  extra["refit_w"]: now.w, extra["refit_b"]: now.b,
                  # each calibration student's time in this run, beside the candidates (rows only)
                  **{f"calibration:{tag}:{i}": v for i, v in enumerate(raw[len(cands):-1])}}
        try:
            with ctx.db.session() as s:
                for key, value in values.items():
                    s.merge(_latency_row(s, fp, key, value))
        except IntegrityError:  # another process (a second machine) timed them at the same moment: its figures stand
            pass
        with ctx.db.session() as s:  # every process decides on the same stored figures
            known.update({r.key: r.ms for r in s.scalars(select(LatencyRow).where(
                LatencyRow.fingerprint == fp, LatencyRow.key.in_([*keys.values(), *extra.values()])))})
    return {name: known[key] for name, key in keys.items()}, {k: known.get(key) for k, key in extra.items()}


def time_finalists(lat: LatencyModel, space: SearchSpace, emb: Embeddings, cands: list[tuple[dict[str, Any], str]],
                   teacher_name: str, progress: bool = True) -> list[float]:
    """One budget's timing run (in a fresh process unless `latency.fresh_process` is off): the candidates
    (architecture dicts with their origin), the latency model's calibration students and the teacher, timed
    in one interleaved run; their milliseconds in that order."""
    cfg = lat.config
    _, recal_models = calibration_students(lat, space, emb)
    models = [_model(Architecture.from_dict(a), origin) for a, origin in cands] + recal_models
    teacher = load_teacher(teacher_name)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with tqdm(total=(len(models) + 1) * MODEL_ROUNDS, desc="time finalists", leave=False,
                  disable=not progress) as bar:
            return measure_models([*models, teacher.encoder.cpu()], cfg, int(teacher.config.vocab_size), bar)
    finally:
        torch.set_num_threads(threads)


def predict_now(lat: LatencyModel, cands: list[Candidate], timing: dict[str, Any]) -> None:
    """Each candidate's `predicted_now_ms`: the calibration refitted in its timing run (None where that run
    predates it, or the table cannot predict the student)."""
    a, c, w, b = (timing.get(f"refit_{k}") for k in "acwb")
    # a run before the per-resize term was fitted with none (w = 0): its coefficients stand as they were
    now = None if None in (a, c, b) else Calibration(a=a, c=c, w=w or 0.0, b=b)
    for cand in cands:
        try:
            cand.proxies["predicted_now_ms"] = (None if now is None else
                                                lat.predict(cand.arch, now, reorder=reorders(cand.origin)))
        except NasBertError:  # a hand-designed student the table has no timing for
            cand.proxies["predicted_now_ms"] = None


def _latency_row(s: Any, fp: str, key: str, ms: float) -> LatencyRow:
    row = s.scalars(select(LatencyRow).where(LatencyRow.fingerprint == fp, LatencyRow.key == key)).first()
    if row is None:
        return LatencyRow(fingerprint=fp, key=key, ms=ms)
    row.ms = ms
    return row


# -- the short distillation -----------------------------------------------------------------------
def protocol_hash(study: Study, checkpoint_sha: str) -> str:
    """What a finalist's score depends on: the finalists' and distillation settings, data, teacher, supernet."""
    cfg = study.cfg
    blob = {"steps": cfg.search.finalist_steps, "distill": cfg.distill.model_dump(mode="json"),
            "corpus": cfg.corpus.model_dump(mode="json"), "teacher": cfg.teacher, "supernet": checkpoint_sha}
    return json_hash(blob)


def short_distill(ctx: StudentContext, cand: Candidate, steps: int) -> dict[str, Any]:
    """The same short distillation for every finalist; its best held-out fidelity and that value's interval."""
    dc = ctx.study.cfg.distill
    cfg = dc.model_copy(update={"steps": steps, "warmup_steps": max(1, steps // 10), "eval_every": steps, "grad_accum": 1})
    module = ctx.start(cand.arch, cand.origin, dc.freeze_embeddings).to(ctx.study.device())
    mapping = uniform_mapping(len(distill_points(cand.arch)), ctx.teacher.num_layers)
    objective = ctx.objective(cand.arch, mapping, dc.val_batches, dc.batch_size)
    keeper = BestKeeper("fidelity")
    before = {"step": 0, **objective.validate(module)}
    start_vectors = objective.last_vectors
    keeper.offer(module, before)
    t0 = time.perf_counter()
    train_loop(model=module, objective=objective, dataset=ctx.corpus["train"], collator=ctx.collator, cfg=cfg,
               total_steps=steps, ckpts=None, accelerator=make_accelerator(ctx.study.device()), meta={},
               desc=f"finalist {cand.name}", progress=False, keep_best=keeper)
    module.load_state_dict(keeper.best_state())
    # validated only at the start and the end (eval_every = steps): the best's vectors are already computed
    s_vecs, t_vecs = {0: start_vectors, steps: objective.last_vectors}.get(keeper.step) or objective.vectors(module)
    lo, hi = fidelity_interval(s_vecs, t_vecs)
    return {"fidelity_before": before["fidelity"], "fidelity": keeper.value, "fidelity_interval": [lo, hi],
            "best_step": keeper.step, "seconds": round(time.perf_counter() - t0, 1)}


# -- the choice -------------------------------------------------------------------------------------
def choose(study: Study, budget_ms: float, progress: bool = True) -> dict[str, Any]:
    """Stage 5 for one budget: time, short-distil and rank the finalists; resumable. Returns a summary
    whose "chosen" is the budget's student (a `Candidate` as a dict)."""
    cfg = study.cfg.search
    ctx = StudentContext.open(study)
    protocol = protocol_hash(study, ctx.checkpoint_sha)
    cands = search_candidates(ctx.db, study, budget_ms)
    if not cands:
        raise NasBertError(f"the {budget_ms:g} ms search of study '{study.name}' has no feasible student; "
                           "raise the budget or search.trials")
    lat = ensure_latency_model(ctx.db, study.space, ctx.teacher.embeddings_spec(), study.cfg.latency, progress=False)
    family = baseline_family(ctx) if cfg.finalist_baselines else {}
    if family:
        family = family_to_time(family, lambda a: lat.predict(a, reorder=False), budget_ms)  # none reorders
    ms, timing = measured_ms(ctx, [*cands, *family.values()], budget_ms, progress)
    predict_now(lat, [*cands, *family.values()], timing)
    everyone = {c.name: c for c in [*cands, *family.values()]}
    judged = {name: judged_ms(v, timing.get("drift"), host_speed(everyone[name].proxies)) for name, v in ms.items()}
    cands = replace_over_budget(cands, judged, budget_ms, cfg.rescore_top)
    for origin in ORIGINS[1:]:  # each family's slowest member that the budget holds
        fits = [c for c in family.values() if c.origin == origin and holds(c, judged[c.name], budget_ms)]
        if fits:
            cands.append(max(fits, key=lambda c: ms[c.name]))
    rows = []
    bar = tqdm(cands, desc=f"finalists {budget_ms:g} ms", disable=not progress)
    for c in bar:
        bar.set_postfix(student=c.name)
        c.proxies["measured_ms"], c.proxies["judged_ms"] = ms[c.name], judged[c.name]
        over = judged[c.name] > budget_ms
        metrics = _stored(ctx.db, study, budget_ms, c.name, protocol)
        if metrics is None or ("fidelity" not in metrics and not over):  # never distilled, and the budget holds
            metrics = {"over_budget": True} if over else (
                _scored_elsewhere(ctx.db, study, c, protocol) or short_distill(ctx, c, cfg.finalist_steps))
            _store(ctx.db, study, budget_ms, c, protocol, ms[c.name], metrics)
            metrics = _stored(ctx.db, study, budget_ms, c.name, protocol) or metrics  # the first writer's stands
        rows.append({**c.to_dict(), **metrics, "judged_ms": judged[c.name], "over_budget": over})
    bar.close()
    return {**summarise(study, budget_ms, rows), "timing": timing}


def holds(cand: Candidate, judged: float, budget_ms: float) -> bool:
    """Whether a hand-designed student may stand for a budget: judged within it, and predicted within it by the
    latency model that constrained the search (where the model can predict it), the rule every searched
    student already met. A judged time is one run's and moves a few per cent between runs on a shared host:
    the demo's truncated-2, predicted 5.04 ms, was judged 4.74 ms in the finalists' run and 5.02 ms in the
    export's, over its 5 ms budget (BENCHMARKS.md). Both estimates within the budget, or neither stands."""
    predicted = cand.proxies.get("predicted_ms")
    return judged <= budget_ms and (predicted is None or predicted <= budget_ms)


def judged_ms(ms: float, drift: float | None, speed: float | None = None) -> float:
    """The time a budget judges: the time taken now at the host's speed when the latency model was fitted, as
    far as two signals agree: `ms / min(drift, speed)`.

    A shared machine runs 5-25% slower or faster from one quarter hour to the next. `drift` is the reference
    student (the space's largest) now against the fit; `speed` is this student's own factor, the calibration
    refitted on the calibration students timed in the same run against the stored one (predicted now /
    predicted at the fit). A host faster now (either below 1) tightens the verdict by the stronger signal:
    a fast spell never passes a student that is over the budget at the host's usual speed. A host slower
    now loosens it only where both say so, and by the lesser: the drift alone is one large model, and a
    contended host slows models unequally (the demo once measured drift 1.25 while students of 3-4 ms ran at
    their predicted speed; dividing by it let a 5.8 ms student into a 5 ms budget), which the refit on all
    calibration students follows. Without a student's own factor (a run that predates it, or a student the
    table cannot predict) the drift only tightens; a missing or non-positive drift leaves the time as it is."""
    if drift is None or not math.isfinite(drift) or drift <= 0:
        return ms
    own = speed if speed is not None and math.isfinite(speed) and speed > 0 else 1.0
    return ms / min(drift, own)


def host_speed(proxies: dict[str, Any]) -> float | None:
    """A student's own host factor from its proxies: predicted now / predicted at the fit (None without both)."""
    now, fit = proxies.get("predicted_now_ms"), proxies.get("predicted_ms")
    return now / fit if now and fit else None


def _stored(db: Database, study: Study, budget_ms: float, name: str, protocol: str) -> dict[str, Any] | None:
    with db.session() as s:
        row = s.scalars(select(FinalistRow).where(FinalistRow.study == study.name, FinalistRow.budget_ms == budget_ms,
                                                  FinalistRow.name == name, FinalistRow.protocol_hash == protocol)).first()
        return json.loads(row.metrics_json) if row is not None else None


SCORE_KEYS = ("fidelity_before", "fidelity", "fidelity_interval", "best_step", "seconds")


def _scored_elsewhere(db: Database, study: Study, c: Candidate, protocol: str) -> dict[str, Any] | None:
    """The short distillation's result for the same student (architecture and starting weights) under the
    same protocol at another budget of the study: the same computation, so it is not run twice."""
    with db.session() as s:
        rows = s.scalars(select(FinalistRow).where(
            FinalistRow.study == study.name, FinalistRow.arch_hash == c.arch.hash(), FinalistRow.origin == c.origin,
            FinalistRow.protocol_hash == protocol).order_by(FinalistRow.id)).all()
        for row in rows:
            m = json.loads(row.metrics_json)
            if "fidelity" in m:
                return {**{k: m[k] for k in SCORE_KEYS if k in m}, "scored_at_budget_ms": row.budget_ms}
    return None


def _store(db: Database, study: Study, budget_ms: float, c: Candidate, protocol: str, ms: float,
           metrics: dict[str, Any]) -> None:
    blob = json.dumps({**c.proxies, **metrics})
    try:
        with db.session() as s:
            row = s.scalars(select(FinalistRow).where(
                FinalistRow.study == study.name, FinalistRow.budget_ms == budget_ms, FinalistRow.name == c.name,
                FinalistRow.protocol_hash == protocol)).first()
            if row is None:
                s.add(FinalistRow(study=study.name, budget_ms=budget_ms, name=c.name, origin=c.origin,
                                  arch_hash=c.arch.hash(), arch_json=c.arch.canonical_json(), trial_number=c.trial,
                                  protocol_hash=protocol, measured_ms=ms, metrics_json=blob))
            elif "fidelity" not in json.loads(row.metrics_json) and "fidelity" in metrics:
                row.metrics_json = blob  # a finalist once dropped over budget, which the budget now holds
    except IntegrityError:  # another process stored this finalist first (two searches sharing one database)
        pass


def summarise(study: Study, budget_ms: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranking, the choice, the noise of the ranking and the proxies' agreement with it."""
    def score(r: dict[str, Any]) -> float:  # a NaN fidelity (too few held-out texts) ranks last
        f = r.get("fidelity")
        return f if f is not None and not math.isnan(f) else float("-inf")

    ok = sorted((r for r in rows if not r["over_budget"]), key=lambda r: -score(r))
    if ok:
        chosen = ok[0]
    else:  # nothing the budget holds when measured: the fastest searched student, flagged
        chosen = min(rows, key=lambda r: r["measured_ms"])
    searched = [r for r in ok if r["origin"] == "search"]
    taus = {}
    for proxy in ("approx_loss", "rescored_loss"):
        pts = [(r[proxy], -r["fidelity"]) for r in searched if r.get(proxy) is not None]
        taus[proxy] = kendall_tau(*map(list, zip(*pts, strict=True))) if len(pts) >= 3 else None
    runner = ok[1] if len(ok) > 1 else None
    return {
        "study": study.name, "budget_ms": budget_ms, "finalists": rows, "chosen": chosen,
        "baseline_won": chosen["origin"] != "search", "over_budget": chosen["over_budget"],
        "kendall_tau_vs_fidelity": taus,
        "runner_up": runner["name"] if runner else None,
        # the two best are told apart when their intervals do not overlap
        "separated": bool(runner and runner["fidelity_interval"][1] < chosen["fidelity_interval"][0]),  # NaN: False
        "dropped_over_budget": [r["name"] for r in rows if r["over_budget"]],
        "replacements": [r["name"] for r in rows if r.get("reserve")],
    }


def truncated_reference(study: Study, budget_ms: float, student_ms: float) -> dict[str, Any] | None:
    """What a user gets for free: the teacher's first k layers, untouched, of the measured latency nearest
    `student_ms` (in the budget's finalists' timing run), with its fidelity on the WordNet test texts and out
    of domain."""
    db = Database(study.db_url)
    fp = device_fingerprint(study.cfg.latency)
    prefix = f"model:{budget_ms:g}:truncated:"
    with db.session() as s:
        rows = {r.key: r.ms for r in s.scalars(select(LatencyRow).where(
            LatencyRow.fingerprint == fp, LatencyRow.key.like(f"{prefix}%")))}
    teacher = load_teacher(study.cfg.teacher, study.device())
    archs = {truncated_architecture(teacher, k): k for k in range(1, teacher.num_layers)}
    timed = [(rows[f"{prefix}{a.hash()}"], a, k) for a, k in archs.items() if f"{prefix}{a.hash()}" in rows]
    if not timed:
        return None
    ms, arch, k = min(timed, key=lambda t: abs(t[0] - student_ms))
    student = teacher_initialised(arch, teacher)
    cfg = study.cfg.evaluate
    texts = list(load_task("wordnet", cfg)[0]["test"]["text"][: cfg.fidelity_texts])
    return {"name": f"truncated-{k}", "layers": k, "measured_ms": ms,
            **agreement(student, teacher.tokenizer, teacher, cfg, texts, study.device())}


def chosen_finalist(db: Database, study: Study, budget_ms: float) -> dict[str, Any] | None:
    """The budget's student recorded by the latest finalists' run (None before stage 5 ran)."""
    with db.session() as s:
        rows = s.scalars(select(FinalistRow).where(FinalistRow.study == study.name, FinalistRow.budget_ms == budget_ms)
                         .order_by(FinalistRow.id)).all()
    if not rows:
        return None
    latest = rows[-1].protocol_hash
    found = []
    for r in rows:
        if r.protocol_hash != latest:
            continue
        m = json.loads(r.metrics_json)
        cand = Candidate(r.name, r.origin, Architecture.from_json(r.arch_json), r.trial_number)
        found.append({**cand.to_dict(), **m, "measured_ms": r.measured_ms,
                      "over_budget": bool(m.get("over_budget"))})
    return summarise(study, budget_ms, found)["chosen"] if found else None


