"""The `nas-bert` command line (typer). Every command takes --config and --db; read commands --json."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy.exc import DatabaseError

from nas_bert.cli import tables
from nas_bert.errors import NasBertError
from nas_bert.store import DB_ENV, database_error, is_corrupt
from nas_bert.study import load_study

if TYPE_CHECKING:  # the stages are imported by the commands that run them: the command line starts quickly
    from pydantic import BaseModel

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Search, distil and export small BERT students.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="study file (e.g. studies/demo.yaml) or a shipped "
                                                                   "study's name (demo, quality, tiny)")]
DbOpt = Annotated[str | None, typer.Option("--db", envvar=DB_ENV, show_envvar=True,
                                            help="database URL overriding the study file's")]
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
        raise NasBertError(f"{option} {value}: must be a whole number >= 1 "
                           f"(leave {option} out for the study's default)")
    return value


def _budget(option: str, value: float | None) -> float | None:
    """A latency budget is a finite number of milliseconds above zero (NaN would pass every comparison)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise NasBertError(f"{option} {value:g}: budget must be a finite number of ms > 0")
    return value


def _print(result: BaseModel, as_json: bool, table: Callable[[Any], str]) -> None:
    """A stage's typed result: its JSON dump with --json, else its table."""
    typer.echo(json.dumps(result.model_dump(mode="json"), indent=2, default=str) if as_json else table(result))


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
    if summary.is_main:  # under torchrun / accelerate launch, one report
        _print(summary, as_json, tables.supernet_table)


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
    _print(latency_report(model), as_json, tables.latency_table)


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
    from nas_bert.choose import SearchReport, choose
    from nas_bert.search import search

    _budget("--latency-budget-ms", latency_budget_ms)
    _count("--trials", trials)
    _count("--workers", workers)
    study = load_study(config, db)
    summary = search(study, latency_budget_ms, trials, workers)
    report = SearchReport(**dict(summary), finalists=choose(study, latency_budget_ms))
    _print(report, as_json, tables.search_table)


@app.command("pareto")
@_friendly
def pareto_cmd(
    config: ConfigOpt,
    db: DbOpt = None,
    budget: Annotated[float | None,
                      typer.Option("--budget", help="one budget (ms); default: every budget searched")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="also draw the front(s) to this PNG")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The feasible Pareto front (approximate loss vs predicted latency) of each budget searched."""
    from nas_bert.search import Fronts, budgets_in_db, pareto_rows
    from nas_bert.store import Database

    _budget("--budget", budget)
    study = load_study(config, db)
    budgets = [budget] if budget is not None else budgets_in_db(study)
    if not budgets:
        raise NasBertError(f"study '{study.name}' has no search yet; "
                           f"run `nas-bert search --config {config} --latency-budget-ms X`")
    database = Database(study.db_url)
    fronts = Fronts({f"{b:g}": pareto_rows(database, study, b) for b in budgets})
    if plot is not None:
        from nas_bert.export import plot_fronts

        plot_fronts(study, budgets, plot)
    _print(fronts, as_json, tables.pareto_table)


TrialOpt = Annotated[int, typer.Option("--trial", help="trial number (see `nas-bert pareto`)")]
BudgetOpt = Annotated[float | None, typer.Option("--budget", help="which search's trial (ms); needed with several")]


@app.command("map-layers")
@_friendly
def map_layers_cmd(config: ConfigOpt, trial: TrialOpt, budget: BudgetOpt = None, db: DbOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Stage 6: search which teacher layer each student layer learns from (DEAP GA); resumes."""
    from nas_bert.distill import map_layers

    _budget("--budget", budget)
    _print(map_layers(load_study(config, db), trial, budget), as_json, tables.mapping_table)


@app.command("distill")
@_friendly
def distill_cmd(config: ConfigOpt, trial: Annotated[int | None, typer.Option(
                    "--trial", help="trial number (see `nas-bert pareto`); default: the budget's chosen student "
                                    "(the finalists' choice, searched or hand-designed)")] = None,
                budget: BudgetOpt = None, db: DbOpt = None,
                steps: Annotated[int | None, typer.Option(help="distillation steps (default: the study's)")] = None,
                mapping: Annotated[str | None, typer.Option(help="comma-separated teacher layers, e.g. 2,4,6")] = None,
                as_json: JsonOpt = False) -> None:
    """Stage 7: distil one student (a trial, else the budget's chosen student) with its searched (else uniform)
    layer mapping; resumes, and continues a finished one to more --steps."""
    from nas_bert.distill import distill

    _budget("--budget", budget)
    _count("--steps", steps)
    parsed = None
    if mapping is not None:
        try:
            parsed = [int(x) for x in mapping.split(",")]
        except ValueError:
            raise NasBertError(f"--mapping '{mapping}' is not a comma-separated list of teacher layers") from None
    study = load_study(config, db)
    if trial is None:
        from nas_bert.choose import distill_chosen

        _print(distill_chosen(study, budget, steps, parsed), as_json, tables.distill_table)
    else:
        _print(distill(study, trial, budget, steps, parsed), as_json, tables.distill_table)


@app.command("evaluate")
@_friendly
def evaluate_cmd(
    config: ConfigOpt,
    path: Annotated[str | None, typer.Argument(help="an exported or distilled student folder")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="evaluate the study's teacher instead")] = False,
    task: Annotated[str, typer.Option(
        help="wordnet, a csv/json file with text and label columns, or a Hub id")] = "wordnet",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stage 8: fidelity to the teacher, downstream accuracy and loyalty, under one protocol."""
    from nas_bert.evaluate import evaluate_path

    if (path is None) == (not teacher):
        raise NasBertError("give a student folder PATH or --teacher (one of the two)")
    study = load_study(config, db)
    _print(evaluate_path(study, path, teacher, task, study.cfg.evaluate), as_json, tables.evaluate_table)


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
    _print(summary, as_json, tables.export_table)


@app.command("init")
@_friendly
def init_cmd(
    name: Annotated[str, typer.Argument(help="the study's name; the file written is NAME.yaml")],
    teacher: Annotated[str | None, typer.Option("--teacher", help="an alias, a model folder or a Hub id")] = None,
    corpus: Annotated[str | None, typer.Option("--corpus", help="wordnet, a .txt/.json/.csv file or a Hub dataset id")] = None,
    template: Annotated[str, typer.Option("--from", help="the shipped study to start from")] = "demo",
    folder: Annotated[Path, typer.Option("--dir", help="where to write it")] = Path("."),
    budget: Annotated[list[float] | None, typer.Option("--budget-ms", help="a latency budget in ms (repeat for several)")] = None,
    budget_x: Annotated[list[float] | None, typer.Option("--budget-x", help="a latency budget as a fraction of the "
                                                         "teacher's latency, e.g. 0.25 (repeat for several)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing NAME.yaml")] = False,
) -> None:
    """Write a study file to start from: a shipped study (the demo by default), its comments kept, with your
    name, teacher and corpus."""
    from nas_bert.study import init_study

    for b in budget or []:
        _budget("--budget-ms", b)
    path = init_study(name, teacher, corpus, template, folder, force, budget, budget_x)
    typer.echo(f"wrote {path}; run it with: nas-bert run --config {path}")


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

    _print(run_study(load_study(config, db), out, echo=lambda m: typer.echo(m, err=True)), as_json, tables.run_table)


@app.command("status")
@_friendly
def status_cmd(config: ConfigOpt, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """What the study holds, stage by stage."""
    from nas_bert.status import study_status

    study = load_study(config, db)
    _print(study_status(study), as_json, tables.status_table)


StudiesOpt = Annotated[Path, typer.Option("--studies", help="folder of the service's study files (created if missing)")]
ServiceDbOpt = Annotated[str, typer.Option("--db", envvar=DB_ENV, show_envvar=True,
                                           help="the study database every study of the service shares, e.g. "
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
    allowed_hosts: Annotated[list[str] | None, typer.Option(
        "--allowed-hosts", help="a name clients use for this service (repeat for several); default: the loopback "
                                "names and --host; '*' for any")] = None,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="the largest request body accepted (MB)")] = 1.0,
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        "--forwarded-allow-ips", help="addresses of reverse proxies whose X-Forwarded-For/-Proto are believed, "
                                      "comma-separated (default: none)")] = None,
) -> None:
    """The search as a service: HTTP API (docs at /docs), a live page at /, Optuna's dashboard, a job queue."""
    from nas_bert.service.app import read_token, serve

    if workers < 0:
        raise NasBertError(f"--workers {workers}: must be 0 or more")
    if not 0 < port < 65536:
        raise NasBertError(f"--port {port}: must be between 1 and 65535")
    if not (math.isfinite(max_body_mb) and max_body_mb > 0):
        raise NasBertError(f"--max-body-mb {max_body_mb:g}: must be a finite number of MB > 0")
    token, source = read_token(token_file)
    typer.echo(f"nas-bert serve: http://{host}:{port}/  (API docs /docs, Optuna dashboard /dashboard); "
               f"{workers} worker(s); writes need the token from {source}", err=True)
    serve(db, studies, host, port, token, workers, ["--lease", f"{lease:g}"], echo=lambda m: typer.echo(m, err=True),
          hosts=allowed_hosts, max_body=int(max_body_mb * (1 << 20)), forwarded_allow_ips=forwarded_allow_ips)


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
