"""The `nas-bert` command line (typer). Every command takes --config and --db; read commands --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from nas_bert.config import load_study
from nas_bert.errors import NasBertError

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
        except KeyboardInterrupt:
            typer.echo("interrupted; run the same command again to continue", err=True)
            raise typer.Exit(130) from None

    return wrapper


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
    from nas_bert.blockwise import train_supernet

    study = load_study(config, db)
    summary = train_supernet(study, steps=steps)
    if summary["is_main"]:  # under torchrun / accelerate launch, one report
        _print(summary, as_json, _supernet_table)


def _supernet_table(s: dict[str, Any]) -> str:
    lines = [f"supernet of study '{s['study']}': step {s['step']}/{s['target_steps']} ({s['seconds']} s this run)",
             f"checkpoint {s['checkpoint']}  sha256 {str(s['sha256'])[:12]}", "validation MSE per block:"]
    for name, losses in s["val_losses"].items():
        if name != "step":
            lines.append(f"  {name:<10} " + "  ".join(f"{x:8.4f}" for x in losses))
    return "\n".join(lines)


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
        lines.append("  supernet: not trained (run `nas-bert train-supernet`)")
    else:
        lines.append(f"  supernet: step {sn['step']}/{sn['target_steps']} ({sn['status']}), checkpoint {sn['checkpoint']}")
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
