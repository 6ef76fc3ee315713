"""Deleting studies: by an admin, and by the retention policy (``retention_days`` after arrival).

A deleted study loses its received files, every results folder of its analyses and its database rows (reviews,
analyses); the audit trail keeps who deleted it and when, and every earlier line about it. Only paths under the
data folder are ever removed.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ctriage.service import audit
from ctriage.service.config import ServiceConfig
from ctriage.service.db import RUNNING, Study, utcnow

log = logging.getLogger(__name__)

RETENTION_CHECK_S = 3600.0  # how often the service looks for studies past retention_days


def _remove(path: Path, roots: tuple[Path, ...]) -> None:
    """Remove a file or folder that lies inside one of ``roots`` (anything else is left alone)."""
    resolved = path.resolve()
    if not any(resolved != root and resolved.is_relative_to(root) for root in roots):
        log.warning("not removing %s: outside the data folders", path)
        return
    if resolved.is_dir():
        shutil.rmtree(resolved)
    else:
        resolved.unlink(missing_ok=True)


def delete_study(
    config: ServiceConfig, sessions: sessionmaker[Session], study_id: int, action: str, user: str, host: str = ""
) -> bool:
    """Delete a study's files and rows and audit it as ``action``; False if it is unknown or being analysed."""
    roots = (config.studies_dir.resolve(), config.results_dir.resolve())
    with sessions.begin() as session:
        study = session.get(Study, study_id)
        if study is None or study.status == RUNNING:
            return False
        received = Path(study.path)
        _remove(received.parent if received.name.startswith("volume.nii") else received, roots)
        for folder in config.results_dir.glob(f"{study.id}-*"):
            _remove(folder, roots)
        uid, detail = study.study_uid, f"patient {study.patient_id}, accession {study.accession_number}"
        session.delete(study)
    audit.record(sessions, action, user=user, host=host, study_id=study_id, study_uid=uid, detail=detail)
    return True


def purge_expired(config: ServiceConfig, sessions: sessionmaker[Session], now: datetime | None = None) -> int:
    """Delete the studies that arrived more than ``retention_days`` ago (none when it is 0); returns how many."""
    if config.retention_days <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=config.retention_days)
    with sessions() as session:
        ids = list(session.scalars(select(Study.id).where(Study.received_at < cutoff)))
    days = f"{config.retention_days:g}"
    return sum(delete_study(config, sessions, i, "retention-delete", f"retention ({days} days)") for i in ids)
