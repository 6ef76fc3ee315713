"""The audit trail: who viewed which study, who confirmed / rejected / retried / sent / deleted what, logins, and
every DICOM association (calling AE title, host, instances stored, or why it was refused).

Append-only: ctriage only inserts (and on SQLite, triggers refuse UPDATE and DELETE on the table). Admins read it
on the audit page and export it as CSV.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ctriage.service.db import AuditEvent

log = logging.getLogger(__name__)

CSV_COLUMNS = ("id", "at", "user", "host", "action", "study_id", "study_uid", "detail")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell as a formula


def record(
    sessions: sessionmaker[Session],
    action: str,
    user: str = "",
    host: str = "",
    study_id: int | None = None,
    study_uid: str = "",
    detail: str = "",
) -> None:
    """Append one event to the audit trail."""
    with sessions.begin() as session:
        session.add(
            AuditEvent(
                action=action,
                user=user[:128],
                host=host[:64],
                study_id=study_id,
                study_uid=study_uid[:128],
                detail=detail,
            )
        )
    log.info("audit: %s %s %s %s", action, user, study_uid or study_id or "", detail)


def events(
    sessions: sessionmaker[Session], action: str | None = None, study_id: int | None = None, limit: int = 1000
) -> list[AuditEvent]:
    """The newest ``limit`` events, newest first, optionally of one action or one study."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEvent.action == action)
    if study_id is not None:
        query = query.where(AuditEvent.study_id == study_id)
    with sessions() as session:
        return list(session.scalars(query))


def to_csv(rows: Iterable[AuditEvent]) -> str:
    """The events as CSV text with a header row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.to_dict().items()})
    return buffer.getvalue()


def _cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text: text starting like a formula gets a leading quote."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value
