"""`nas-bert status`: what the study database holds, stage by stage."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from nas_bert.config import Study
from nas_bert.db import Checkpoint, Database, SupernetRun


def study_status(study: Study) -> dict[str, Any]:
    db = Database(study.db_url)
    with db.session() as s:
        run = s.scalars(select(SupernetRun).where(SupernetRun.study == study.name,
                                                  SupernetRun.space_hash == study.space.fingerprint())).first()
        supernet = None
        if run is not None:
            ckpt = Checkpoint.latest(s, run.id)
            supernet = {"status": run.status, "target_steps": run.target_steps,
                        "step": ckpt.step if ckpt else 0, "checkpoint": ckpt.path if ckpt else None,
                        "val_losses": ckpt.val_losses if ckpt else {}}
    db.dispose()
    return {"study": study.name, "db": study.db_url, "supernet": supernet}
