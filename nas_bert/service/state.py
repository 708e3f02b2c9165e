"""What the routes share: one `ServiceState` per app (the study database, the folder of study files, the
token's check, the caches), kept on `app.state.service` and handed to each route by the `State` dependency."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from nas_bert.errors import NasBertError
from nas_bert.service import results
from nas_bert.service.auth import Auth
from nas_bert.service.errors import ApiError, field_of
from nas_bert.store import Database
from nas_bert.study import Study, load_study

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ServiceState:
    """The service over one study database and one folder of study files."""

    db_url: str
    studies_dir: Path
    db: Database
    auth: Auth
    computer: results.FrontProcess  # fronts and their PNG, in a process of their own
    fronts_cache: results.TTLCache = field(default_factory=lambda: results.TTLCache(2.0))
    names_cache: results.TTLCache = field(default_factory=lambda: results.TTLCache(2.0))
    fastest_cache: results.TTLCache = field(default_factory=lambda: results.TTLCache(30.0))
    loaded: dict[str, tuple[float, Study]] = field(default_factory=dict)  # name -> (file mtime, study)

    @classmethod
    def open(cls, db_url: str, studies_dir: str | Path, token: str) -> ServiceState:
        """The state of a new app: the studies folder made when missing."""
        studies_dir = Path(studies_dir).resolve()
        studies_dir.mkdir(parents=True, exist_ok=True)
        return cls(db_url, studies_dir, Database(db_url), Auth(token), results.FrontProcess(db_url))

    def study_path(self, name: str) -> Path:
        if not NAME.fullmatch(name):
            raise ApiError(404, f"unknown study '{name}': study names use letters, digits, '_', '-' and '.'", "name")
        return self.studies_dir / f"{name}.yaml"

    def get_study(self, name: str) -> Study:
        """The study of `<studies>/<name>.yaml`, loaded again when its file changed."""
        path = self.study_path(name)
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in self.studies_dir.glob("*.yaml"))) or "none yet"
            raise ApiError(404, f"unknown study '{name}'; create it with POST /v1/studies (known: {known})", "name")
        mtime = path.stat().st_mtime
        hit = self.loaded.get(name)
        if hit is None or hit[0] != mtime:
            try:
                hit = (mtime, load_study(path, self.db_url))
            except NasBertError as e:
                raise ApiError(422, str(e), field_of(str(e))) from None
            if hit[1].name != name:  # the service knows a study by its file's name
                raise ApiError(422, f"study file {path} names its study '{hit[1].name}'; rename the file to "
                                    f"{hit[1].name}.yaml or set name: {name}", "name")
            self.loaded[name] = hit
        return hit[1]

    def searched(self, study: Study) -> list[float]:
        """The budgets (ms) the study has an Optuna study for (on any machine: `search.budgets_in_db`)."""
        # deferred: the search room takes seconds to import, and only this read needs it
        from nas_bert.search import budgets_in_db

        return self.names_cache.get(study.name, lambda: budgets_in_db(study))


async def service_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_state)]


def authorize(request: Request, state: State) -> None:
    state.auth(request)


# one check for all: reads (GET) open on loopback, else the token; writes always the bearer token
read = write = [Depends(authorize)]
