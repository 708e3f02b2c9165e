"""The `nas-bert` command line (typer). Every command takes --config and --db; read commands --json."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.exc import DatabaseError

from nas_bert.errors import NasBertError
from nas_bert.store import database_error, is_corrupt
from nas_bert.study import load_study

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Search, distil and export small BERT students.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="study file, e.g. studies/demo.yaml")]
DbOpt = Annotated[str | None, typer.Option("--db", help="database URL overriding the study file's")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one line on stderr and exit status 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NasBertError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except DatabaseError as e:  # damage found past the checks of `Database` (e.g. inside Optuna's storage)
            if not is_corrupt(e):
                raise
            typer.echo(f"error: {database_error(_db_url(kwargs), e)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; run the same command again to continue", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _db_url(kwargs: dict[str, Any]) -> str:
    """The database URL a command used, for an error message (its --db, else its study file's)."""
    try:
        return load_study(kwargs["config"], kwargs.get("db")).db_url
    except Exception:  # noqa: BLE001 - only for naming the file in a message
        return str(kwargs.get("db") or "the study database")


def _count(option: str, value: int | None) -> int | None:
    """A count given on the command line is at least 1: 0 is an error, never "the study's default"."""
    if value is not None and value < 1:
        raise NasBertError(f"{option} {value}: must be a whole number >= 1 (leave {option} out for the study's default)")
    return value


def _budget(option: str, value: float | None) -> float | None:
    """A latency budget is a finite number of milliseconds above zero (NaN would pass every comparison)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise NasBertError(f"{option} {value:g}: budget must be a finite number of ms > 0")
    return value


def _print(data: Any, as_json: bool, table: Callable[[Any], str]) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else table(data))


@app.command("train-supernet")
@_friendly
def train_supernet_cmd(
    config: ConfigOpt,
    db: DbOpt = None,
    steps: Annotated[int | None, typer.Option(help="train to this many updates (default: the study's)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stage 1: block-wise supernet training; resumes from the last checkpoint."""
    from nas_bert.supernet import train_supernet

    _count("--steps", steps)
    study = load_study(config, db)
    summary = train_supernet(study, steps=steps)
    if summary["is_main"]:  # under torchrun / accelerate launch, one report
        _print(summary, as_json, _supernet_table)


def _supernet_table(s: dict[str, Any]) -> str:
    lines = [f"supernet of study '{s['study']}': step {s['step']}/{s['target_steps']} ({s['seconds']} s this run)",
             f"checkpoint {s['checkpoint']}  sha256 {str(s['sha256'])[:12]}", "validation MSE per block:"]
    for name, losses in s["val_losses"].items():
        if name != "step" and isinstance(losses, list):
            lines.append(f"  {name:<10} " + "  ".join(f"{x:8.4f}" for x in losses))
    if s.get("teacher_paths"):
        lines.append("the teacher's first k layers taken from the supernet, against the untouched cut "
                     "(fidelity to the teacher's output):")
        lines += [f"  k={p['layers']}: supernet {p['fidelity_supernet']:.4f}, untouched {p['fidelity_untouched']:.4f}, "
                  f"largest difference {p['max_abs_diff']:.1e}" for p in s["teacher_paths"]]
    return "\n".join(lines)


@app.command("latency")
@_friendly
def latency_cmd(config: ConfigOpt, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Stage 2: the per-operator latency table of this device and its calibration error."""
    from nas_bert.latency import ensure_latency_model, latency_report
    from nas_bert.store import Database
    from nas_bert.teacher import embeddings_spec_of, load_teacher_config

    study = load_study(config, db)
    database = Database(study.db_url)  # a damaged database is found before any teacher is loaded
    emb = embeddings_spec_of(load_teacher_config(study.cfg.teacher))
    model = ensure_latency_model(database, study.space, emb, study.cfg.latency)
    _print(latency_report(model), as_json, _latency_table)


def _latency_table(r: dict[str, Any]) -> str:
    lines = [f"latency table {r['fingerprint'][:12]} ({len(r['table'])} entries, ms)"]
    lines += [f"  {k:<28} {v:9.4f}" for k, v in r["table"].items()]
    cal = r.get("calibration") or {}
    lines.append(f"calibration: end-to-end ms = {cal.get('a', 0):.4f} x summed table + {cal.get('c', 0):.4f} ms "
                 f"x operators + {cal.get('w', 0):.4f} ms x resizes + {cal.get('b', 0):.4f} ms, "
                 f"fitted on {r.get('n')} students, leave-one-out error {r.get('loo_mape_pct', float('nan')):.2f}%")
    return "\n".join(lines)


@app.command("search")
@_friendly
def search_cmd(
    config: ConfigOpt,
    latency_budget_ms: Annotated[float, typer.Option("--latency-budget-ms", help="predicted latency budget (ms)")],
    db: DbOpt = None,
    trials: Annotated[int | None, typer.Option(help="complete trials wanted (default: the study's)")] = None,
    workers: Annotated[int, typer.Option(help="processes on this machine sharing the study database")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Stages 2-5 for one budget: latency table, block scores, Optuna search, rescoring, and the finalists'
    choice (searched and hand-designed students short-distilled, timed and ranked by fidelity); resumes."""
    from nas_bert.choose import choose
    from nas_bert.search import search

    _budget("--latency-budget-ms", latency_budget_ms)
    _count("--trials", trials)
    _count("--workers", workers)
    study = load_study(config, db)
    summary = search(study, latency_budget_ms, trials, workers)
    summary["finalists"] = choose(study, latency_budget_ms)
    _print(summary, as_json, _search_table)


def _front_table(front: list[dict[str, Any]]) -> str:
    head = f"  {'trial':>5} {'params':>10} {'pred ms':>8} {'approx':>8} {'rescored':>8}  architecture"
    rows = [head]
    for r in front:
        resc = f"{r['rescored_loss']:8.4f}" if r["rescored_loss"] is not None else f"{'-':>8}"
        rows.append(f"  {r['trial']:>5} {r['params']:>10,} {r['predicted_ms']:8.2f} {r['approx_loss']:8.4f} {resc}  {r['architecture']}")
    return "\n".join(rows)


def _search_table(s: dict[str, Any]) -> str:
    t = s["trials"]
    tau = "n/a" if s["kendall_tau"] is None else f"{s['kendall_tau']:.2f}"
    lines = [
        (f"search '{s['optuna_study']}' (budget {s['budget_ms']:g} ms): {t['complete']} complete, {t['fail']} failed, "
        f"{t['pruned']} stood down, {s['feasible']} feasible; {s['seconds']} s this run"),
        (f"block scores computed this run: {s['block_scores_computed']}; rescored {s['rescored']}; "
        f"Kendall tau (approx vs rescored) {tau}"),
        "feasible Pareto front:",
        _front_table(s["front"]),
    ]
    if "finalists" in s:
        lines += ["", _finalists_table(s["finalists"])]
    elif s["chosen"]:
        lines.append(f"best under budget by rescored loss: trial {s['chosen']['trial']} ({s['chosen']['predicted_ms']:.2f} ms)")
    return "\n".join(lines)


def _finalists_table(f: dict[str, Any]) -> str:
    def num(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [(f"finalists of the {f['budget_ms']:g} ms budget (the same short distillation; ranked by held-out fidelity; "
             "pred: the search's latency model, now: its calibration refitted in the finalists' timing run):"),
             (f"  {'student':<18} {'origin':<9} {'pred ms':>7} {'now ms':>7} {'meas ms':>7} {'approx':>7} {'fid. start':>10} "
             f"{'fidelity':>8} {'interval':>13}  architecture")]
    for r in sorted(f["finalists"], key=lambda r: -(r.get("fidelity") or -1)):
        iv = r.get("fidelity_interval")
        lines.append(f"  {r['name']:<18} {r['origin']:<9} {num(r.get('predicted_ms'), '7.2f')} {num(r.get('predicted_now_ms'), '7.2f')} "
                     f"{r['measured_ms']:7.2f} "
                     f"{num(r.get('approx_loss'), '7.4f')} {num(r.get('fidelity_before'), '10.3f')} "
                     f"{'over budget' if r['over_budget'] else num(r.get('fidelity'), '8.3f'):>8} "
                     f"{f'{iv[0]:.3f}-{iv[1]:.3f}' if iv else '-':>13}  {r['architecture']}")
    c, taus = f["chosen"], f["kendall_tau_vs_fidelity"]
    kind = "a hand-designed student (the baseline won)" if f["baseline_won"] else "a searched student"
    lines.append(f"chosen: {c['name']}, {kind}, {c['measured_ms']:.2f} ms measured"
                 + (" (OVER BUDGET: nothing the budget holds)" if f["over_budget"] else "")
                 + (f"; runner-up {f['runner_up']} {'outside' if f['separated'] else 'inside'} its interval"
                    if f["runner_up"] else ""))
    if f.get("replacements"):
        lines.append(f"over budget as measured: {', '.join(f['dropped_over_budget'])}; in their place, the next by "
                     f"approximate loss that the budget holds: {', '.join(f['replacements'])}")
    lines.append(f"budget judged on the measured time at the fitted speed, as far as the drift and each student's "
                 f"own factor (now / pred) agree: a faster host tightens, a slower one loosens only where both say so (drift "
                 f"{num((f.get('timing') or {}).get('drift'), '.2f')}x in this run)")
    lines.append("Kendall tau with the fidelity ranking: " + ", ".join(
        f"{k} {'n/a' if v is None else format(v, '.2f')}" for k, v in taus.items()))
    return "\n".join(lines)


@app.command("pareto")
@_friendly
def pareto_cmd(
    config: ConfigOpt,
    db: DbOpt = None,
    budget: Annotated[float | None, typer.Option("--budget", help="one budget (ms); default: every budget searched")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="also draw the front(s) to this PNG")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The feasible Pareto front (approximate loss vs predicted latency) of each budget searched."""
    from nas_bert.search import budgets_in_db, pareto_rows
    from nas_bert.store import Database

    _budget("--budget", budget)
    study = load_study(config, db)
    budgets = [budget] if budget is not None else budgets_in_db(study)
    if not budgets:
        raise NasBertError(f"study '{study.name}' has no search yet; run `nas-bert search --config {config} --latency-budget-ms X`")
    database = Database(study.db_url)
    fronts = {f"{b:g}": pareto_rows(database, study, b) for b in budgets}
    if plot is not None:
        from nas_bert.export import plot_fronts

        plot_fronts(study, budgets, plot)
    _print(fronts, as_json, lambda f: "\n".join(f"budget {b} ms:\n" + _front_table(rows) for b, rows in f.items()))


TrialOpt = Annotated[int, typer.Option("--trial", help="trial number (see `nas-bert pareto`)")]
BudgetOpt = Annotated[float | None, typer.Option("--budget", help="which search's trial (ms); needed with several")]


@app.command("map-layers")
@_friendly
def map_layers_cmd(config: ConfigOpt, trial: TrialOpt, budget: BudgetOpt = None, db: DbOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Stage 6: search which teacher layer each student layer learns from (DEAP GA); resumes."""
    from nas_bert.distill import map_layers

    _budget("--budget", budget)
    _print(map_layers(load_study(config, db), trial, budget), as_json, _mapping_table)


def _mapping_table(s: dict[str, Any]) -> str:
    lines = [f"layer mapping for trial {s['trial']} ({s['architecture']})",
             (f"{s['points']} distillation points, teacher layers 1..{s['teacher_layers']}: "
             f"{s['mappings_possible']} monotone mappings, searched by {s['method']} "
             f"({s['fitness_evaluations']} proxy distillations this run, {s['seconds']} s)"),
             f"  {'mapping':<24} {'held-out loss':>14}"]
    for name, b in s["baselines"].items():
        lines.append(f"  {name + ' ' + str(b['mapping']):<24} {b['fitness']:14.5f}")
    lines.append(f"  {'best ' + str(s['best']['mapping']):<24} {s['best']['fitness']:14.5f}")
    lines.append(f"best vs uniform: {100 * s['improvement_vs_uniform']:+.2f}% lower loss")
    return "\n".join(lines)


@app.command("distill")
@_friendly
def distill_cmd(config: ConfigOpt, trial: TrialOpt, budget: BudgetOpt = None, db: DbOpt = None,
                steps: Annotated[int | None, typer.Option(help="distillation steps (default: the study's)")] = None,
                mapping: Annotated[str | None, typer.Option(help="comma-separated teacher layers, e.g. 2,4,6")] = None,
                as_json: JsonOpt = False) -> None:
    """Stage 7: distil one student with its searched (else uniform) layer mapping; resumes."""
    from nas_bert.distill import distill

    _budget("--budget", budget)
    _count("--steps", steps)
    parsed = None
    if mapping is not None:
        try:
            parsed = [int(x) for x in mapping.split(",")]
        except ValueError:
            raise NasBertError(f"--mapping '{mapping}' is not a comma-separated list of teacher layers") from None
    _print(distill(load_study(config, db), trial, budget, steps, parsed), as_json, _distill_table)


def _distill_table(s: dict[str, Any]) -> str:
    lines = [(f"distilled trial {s['trial']} ({s['params']:,} params) to step {s['step']}/{s['target_steps']} "
             f"with mapping {s['mapping']} ({s['mapping_origin']}); {s['seconds']} s this run")]
    before, after = s.get("before") or {}, s.get("after") or {}
    for k in sorted(set(before) | set(after)):
        if k != "step":
            b = f"{before[k]:.4f}" if k in before else "-"
            a = f"{after[k]:.4f}" if k in after else "-"
            lines.append(f"  held-out {k:<11} {b:>9} -> {a:>9}")
    lines.append(f"student folder: {s['student_path'] or '(not finished)'}")
    return "\n".join(lines)


@app.command("evaluate")
@_friendly
def evaluate_cmd(
    config: ConfigOpt,
    path: Annotated[str | None, typer.Argument(help="an exported or distilled student folder")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="evaluate the study's teacher instead")] = False,
    task: Annotated[str, typer.Option(help="wordnet, a csv/json file with text and label columns, or a Hub id")] = "wordnet",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stage 8: fidelity to the teacher, downstream accuracy and loyalty, under one protocol."""
    from nas_bert.evaluate import evaluate_path

    if (path is None) == (not teacher):
        raise NasBertError("give a student folder PATH or --teacher (one of the two)")
    study = load_study(config, db)
    _print(evaluate_path(study, path, teacher, task, study.cfg.evaluate), as_json, _evaluate_table)


def _evaluate_table(m: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return "\n".join(f"  {k:<22} {fmt(v)}" for k, v in m.items() if not isinstance(v, (list, dict)))


@app.command("export")
@_friendly
def export_cmd(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", help="folder to write (refused if it exists, unless --overwrite)")],
    budgets: Annotated[str | None, typer.Option(help="comma-separated budgets (ms): the best student of each")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out folder")] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stage 9: the Pareto front (or the best per budget) as Hugging Face folders, ONNX and int8."""
    import shlex

    from nas_bert.export import export_front

    parsed = None
    if budgets is not None:  # an empty --budgets is an error, not "every budget"
        try:
            parsed = [float(b) for b in budgets.split(",")]
        except ValueError:
            raise NasBertError(f"--budgets '{budgets}' is not a comma-separated list of milliseconds") from None
        for b in parsed:
            _budget("--budgets", b)
    study = load_study(config, db)
    summary = export_front(study, out, parsed, overwrite, command=shlex.join(["nas-bert", *sys.argv[1:]]))
    _print(summary, as_json, _export_table)


def _export_table(s: dict[str, Any]) -> str:
    rows = [f"exported {len(s['students'])} students to {s['out_dir']} (teacher {s['students'][0]['teacher_ms']:.2f} ms)",
            (f"  {'name':<34} {'params':>11} {'MB':>6} {'pred':>7} {'pred now':>8} {'torch':>7} {'onnx':>7} {'int8':>7} "
            f"{'speed-up':>8}")]
    for st in s["students"]:
        m, now = st.get("measured_ms", {}), st.get("predicted_now_ms")
        pred = "-" if st["predicted_ms"] is None else f"{st['predicted_ms']:.2f}"
        rows.append(f"  {st['name']:<34} {st['params']:>11,} {st.get('size_mb', 0):6.1f} {pred:>7} "
                    f"{'-' if now is None else f'{now:.2f}':>8} "
                    f"{m.get('torch_fp32', 0):7.2f} {m.get('onnx_fp32', 0):7.2f} {m.get('onnx_int8', 0):7.2f} "
                    f"{st.get('speedup', {}).get('torch_fp32', 0):7.2f}x")
    return "\n".join(rows)


@app.command("run")
@_friendly
def run_cmd(
    config: ConfigOpt,
    db: DbOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="export folder (default <study dir>/<name>/export)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """All stages for the budgets in the study file; a rerun resumes at the first unfinished stage."""
    from nas_bert.pipeline import run_study

    _print(run_study(load_study(config, db), out, echo=lambda m: typer.echo(m, err=True)), as_json, _run_table)


def _run_table(s: dict[str, Any]) -> str:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = [f"study '{s['study']}': {len(s['students'])} students in {s['out']} ({s['seconds']:.0f} s this run)", "",
            (f"| {'budget':>6} | {'student':<22} | {'params':>10} | {'ms':>7} | {'int8 ms':>7} | {'fidelity':>8} | "
             f"{'ood fid.':>8} | {'accuracy':>8} | {'vs teacher':>10} | {'label loy.':>10} | {'prob. loy.':>10} | "
             "architecture"),
            "|" + "|".join("-" * w for w in (8, 24, 12, 9, 9, 10, 10, 10, 12, 12, 12, 14)) + "|"]
    for r in s["students"]:
        who = r["student"] if r["origin"] == "search" else f"{r['student']} (baseline)"
        over = " OVER BUDGET" if r["over_budget"] else ""
        rows.append(f"| {r['budget_ms']:>6g} | {who:<22} | {r['params']:>10,} | "
                    f"{f(r['finalist_ms'], '7.2f')} | {f(r['onnx_int8_ms'], '7.2f')} | {f(r['fidelity'], '8.3f')} | "
                    f"{f(r['ood_fidelity'], '8.3f')} | {f(r['accuracy'], '8.3f')} | {f(r['accuracy_ratio'], '10.3f')} | "
                    f"{f(r['label_loyalty'], '10.3f')} | {f(r['probability_loyalty'], '10.3f')} | {r['architecture']}{over}")
        t = r.get("truncated")
        if t:
            rows.append(f"| {'':>6} | {'vs ' + t['name'] + ' (untouched)':<22} | {'':>10} | {t['measured_ms']:7.2f} | "
                        f"{'':>7} | {f(t['fidelity'], '8.3f')} | {f(t['ood_fidelity'], '8.3f')} | {'':>8} | {'':>10} | "
                        f"{'':>10} | {'':>10} | the teacher's first {t['layers']} layer(s), no training")
    if s["students"]:
        t = s["students"][0]
        rows += ["", (f"teacher: {f(t['teacher_ms'], '.2f')} ms (PyTorch fp32), accuracy {f(t['teacher_accuracy'], '.3f')}; "
                 f"the host ran {f(t.get('drift'), '.2f')}x as long as when the latency model was fitted")]
        rows += [f"{r['budget_ms']:g} ms student at export: predicted {f(r.get('predicted_ms'), '.2f')} ms "
                 f"(at the fit), {f(r.get('predicted_now_ms'), '.2f')} ms (calibration refitted in the export's run), "
                 f"measured {f(r.get('measured_ms'), '.2f')} ms, judged {f(r.get('judged_ms'), '.2f')} ms against "
                 f"its {r['budget_ms']:g} ms budget" for r in s["students"]]
    stages = [f"{x['stage']} {x['key']}".strip() + (" (skipped)" if x["skipped"] else f" {x['seconds']:.0f} s")
              for x in s["stages"]]
    rows += [("ms: PyTorch fp32, batch 1, the student and the truncated teacher timed in one run (the finalists'); "
              "the model cards hold the export's own timing; a budget judges the time measured at the host's speed "
              "when the latency model was fitted, as far as the reference student and the calibration refitted in "
              "the same run agree (a faster host tightens the verdict, a slower one loosens it only where both say so)"),
             f"Pareto front: {s['pareto_png']}", "stages: " + ", ".join(stages)]
    return "\n".join(rows)


@app.command("status")
@_friendly
def status_cmd(config: ConfigOpt, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """What the study holds, stage by stage."""
    from nas_bert.status import study_status

    study = load_study(config, db)
    _print(study_status(study), as_json, _status_table)


def _status_table(s: dict[str, Any]) -> str:
    sn = s["supernet"]
    lines = [f"study '{s['study']}'  db {s['db']}"]
    if sn is None:
        lines.append("  1 supernet:     not trained (run `nas-bert train-supernet`)")
    else:
        lines.append(f"  1 supernet:     step {sn['step']}/{sn['target_steps']} ({sn['status']}), {sn['checkpoint']}")
    lines.append(f"  2 latency:      {s['latency']['entries']} operator timings on this device")
    lines.append(f"  3 block scores: {s['block_scores']} memoised; {s['architectures']} architectures scored")
    if not s["searches"]:
        lines.append("  4 search:       none yet (run `nas-bert search --latency-budget-ms X`)")
    for r in s["searches"]:
        t, best = r["trials"], r["best"]
        b = "no feasible trial" if best is None else (
            f"best trial {best['trial']}: loss {best['approx_loss']:.4f} at {best['predicted_ms']:.2f} ms")
        lines.append(f"  4 search {r['budget_ms']:g} ms: {t['complete']} complete, {t['fail']} failed, "
                     f"{t['running']} running, {r['feasible']} feasible; {b}")
    if s.get("stages"):
        lines.append("`nas-bert run` stages (current: its inputs are those it was made from):")
        width = max(len(f"{r['stage']} {r['key']}") for r in s["stages"])
        lines += [f"  {(r['stage'] + ' ' + r['key']).ljust(width)}  {r['state']:<8} {r['why']}" for r in s["stages"]]
    return "\n".join(lines)


StudiesOpt = Annotated[Path, typer.Option("--studies", help="folder of the service's study files (created if missing)")]
ServiceDbOpt = Annotated[str, typer.Option("--db", help="the study database every study of the service shares, e.g. "
                                                       "sqlite:///studies/service.db or postgresql+psycopg://...")]
LeaseOpt = Annotated[float, typer.Option("--lease", help="seconds a job stays a worker's without a heartbeat")]


@app.command("serve")
@_friendly
def serve_cmd(
    db: ServiceDbOpt,
    studies: StudiesOpt = Path("studies"),
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="`nas-bert worker` processes started beside the server (0: none)")] = 1,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="file holding the service token "
                                                    "(default: $NAS_BERT_TOKEN, else ~/.config/nas-bert/token, "
                                                    "created with a random token)")] = None,
    lease: LeaseOpt = 30.0,
) -> None:
    """The search as a service: HTTP API (docs at /docs), a live page at /, Optuna's dashboard, a job queue."""
    from nas_bert.service.app import read_token, serve

    if workers < 0:
        raise NasBertError(f"--workers {workers}: must be 0 or more")
    if not 0 < port < 65536:
        raise NasBertError(f"--port {port}: must be between 1 and 65535")
    token, source = read_token(token_file)
    typer.echo(f"nas-bert serve: http://{host}:{port}/  (API docs /docs, Optuna dashboard /dashboard); "
               f"{workers} worker(s); writes need the token from {source}", err=True)
    serve(db, studies, host, port, token, workers, ["--lease", f"{lease:g}"], echo=lambda m: typer.echo(m, err=True))


@app.command("worker")
@_friendly
def worker_cmd(
    db: ServiceDbOpt,
    studies: StudiesOpt = Path("studies"),
    lease: LeaseOpt = 30.0,
    heartbeat: Annotated[float | None, typer.Option(help="seconds between heartbeats (default: lease / 6)")] = None,
    poll: Annotated[float, typer.Option(help="seconds between looks at an empty queue")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="exit when the queue is empty")] = False,
) -> None:
    """Claim jobs from the study database and run them; several may run, on several machines (one
    PostgreSQL URL, one shared studies folder). Killed, its job is taken over when its lease runs out."""
    import signal

    from nas_bert.service.worker import Worker

    if not (lease > 0 and poll > 0 and (heartbeat is None or 0 < heartbeat < lease)):
        raise NasBertError("--lease and --poll must be > 0, and --heartbeat between 0 and --lease")
    w = Worker(db, studies, lease_s=lease, heartbeat_s=heartbeat or lease / 6, poll_s=poll,
               echo=lambda m: typer.echo(m, err=True))
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the heartbeat, hand the job back, exit
        signal.signal(sig, lambda *_: w.stop_event.set())
    w.run(once=once)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
