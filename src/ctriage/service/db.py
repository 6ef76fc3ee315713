"""The job database (SQLAlchemy 2): a row per study with its job status and result, reviews."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

# Job states: instances arriving -> waiting for a worker -> being analysed -> finished / failed with a reason, or
# incomplete with the reason (instances missing, slices missing, lungs cut at the first or last slice): analysed
# again when more instances arrive.
RECEIVING, QUEUED, RUNNING, DONE, FAILED = "receiving", "queued", "running", "done", "failed"
INCOMPLETE = "incomplete"
DEAD_LETTER = "dead-letter"  # distributed mode: the analysis crashed on every one of its attempts (reason in error)
STATUSES = (RECEIVING, QUEUED, RUNNING, DONE, INCOMPLETE, FAILED, DEAD_LETTER)
FINISHED = (DONE, INCOMPLETE, FAILED, DEAD_LETTER)  # states a retry or a new instance starts from
SENDING = "sending"  # send_status while results are on their way to the destination
INTERRUPTED_SEND = "failed: interrupted by a restart; send again"


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the service's tables."""


class Study(Base):
    """A received study and the state of its analysis job."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    source: Mapped[str] = mapped_column(String(16))  # push, pull or upload
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    site: Mapped[str] = mapped_column(String(64), default="", index=True)  # hospital, from the calling AE
    path: Mapped[str] = mapped_column(Text)  # folder (or NIfTI file) the analysis reads
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(128), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(128), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    patient_age: Mapped[str] = mapped_column(String(16), default="")  # "64 y", "6 mo"
    series_description: Mapped[str] = mapped_column(String(128), default="")  # of the analysed CT series
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=RECEIVING, index=True)
    progress: Mapped[str] = mapped_column(String(64), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    result_dir: Mapped[str] = mapped_column(Text, default="")
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    ct_category: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    send_status: Mapped[str] = mapped_column(Text, default="")  # "", "sent ...", "failed: reason"
    # SeriesInstanceUID -> NumberOfSeriesRelatedInstances the PACS reported (C-FIND) for the CT series pulled
    expected_instances: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    # distributed mode (see ``queue``): when a queued study may go to the broker (back-off), when it went, which
    # worker holds the running analysis and until when its lease lasts without a heartbeat
    dispatch_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str] = mapped_column(String(128), default="")
    reviews: Mapped[list[Review]] = relationship(
        back_populates="study", order_by="Review.created_at", cascade="all, delete-orphan"
    )
    analyses: Mapped[list[Analysis]] = relationship(
        back_populates="study", order_by="Analysis.id", cascade="all, delete-orphan"
    )

    def summary(self) -> dict[str, Any]:
        """The worklist row of this study, JSON-ready."""
        latest = self.reviews[-1] if self.reviews else None
        return {
            "id": self.id,
            "study_uid": self.study_uid,
            "source": self.source,
            "site": self.site,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "accession_number": self.accession_number,
            "study_date": self.study_date,
            "study_description": self.study_description,
            "patient_sex": self.patient_sex,
            "patient_age": self.patient_age,
            "series_description": self.series_description,
            "n_instances": self.n_instances,
            "received_at": _iso(self.received_at),
            "status": self.status,
            "progress": self.progress,
            "error": self.error,
            "attempts": self.attempts,
            "probability": self.probability,
            "positive": ((self.report or {}).get("identification") or {}).get("positive"),
            "threshold": ((self.report or {}).get("identification") or {}).get("threshold"),
            "ct_category": self.ct_category,
            "max_ratio": self.max_ratio,
            "send_status": self.send_status,
            "review": latest.to_dict() if latest else None,
        }


class Analysis(Base):
    """One analysis result of a study (first run, re-analysis after late instances, retry); the newest is current,
    the earlier ones are marked superseded by it. One claim of a study (its attempt number) stores at most one."""

    __tablename__ = "analyses"
    __table_args__ = (UniqueConstraint("study_id", "attempt", name="uq_analyses_study_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # done or incomplete
    reason: Mapped[str] = mapped_column(Text, default="")  # why incomplete
    result_dir: Mapped[str] = mapped_column(Text)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    series_uid: Mapped[str] = mapped_column(String(128), default="")  # the analysed series
    model_version: Mapped[str] = mapped_column(String(256), default="")  # software and model versions
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    superseded_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    study: Mapped[Study] = relationship(back_populates="analyses")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready history entry."""
        return {
            "id": self.id,
            "attempt": self.attempt,
            "status": self.status,
            "reason": self.reason,
            "n_instances": self.n_instances,
            "series_uid": self.series_uid,
            "model_version": self.model_version,
            "created_at": _iso(self.created_at),
            "superseded_at": _iso(self.superseded_at),
            "superseded_by": self.superseded_by,
        }


class Review(Base):
    """A radiologist's confirm / reject of a result, with a comment, who and when."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    decision: Mapped[str] = mapped_column(String(16))  # confirmed or rejected
    comment: Mapped[str] = mapped_column(Text, default="")
    user: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    study: Mapped[Study] = relationship(back_populates="reviews")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready review."""
        return {
            "decision": self.decision,
            "comment": self.comment,
            "user": self.user,
            "created_at": _iso(self.created_at),
        }


class User(Base):
    """A person who logs in to the web UI / API (see ``auth``): Argon2 password hash, role, active or not."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # radiologist or admin
    sites: Mapped[str] = mapped_column(Text, default="")  # comma-separated sites a radiologist sees; "": all
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LoginSession(Base):
    """An open login: SHA-256 of the cookie's token (the token itself is never stored), CSRF token, expiry."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One line of the append-only audit trail (see ``audit``): who did what to which study, from where."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    user: Mapped[str] = mapped_column(String(128), default="")  # user name, or the calling AE title for DICOM
    host: Mapped[str] = mapped_column(String(64), default="")  # client address
    action: Mapped[str] = mapped_column(String(32), index=True)
    study_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # no foreign key: outlives a deletion
    study_uid: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready audit line."""
        return {
            "id": self.id,
            "at": _iso(self.at),
            "user": self.user,
            "host": self.host,
            "action": self.action,
            "study_id": self.study_id,
            "study_uid": self.study_uid,
            "detail": self.detail,
        }


APPEND_ONLY_TRIGGERS = (  # SQLite: the audit trail cannot be changed or deleted through SQL either
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets the listener, the workers and the API write without blocking readers."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_db(url: str) -> sessionmaker[Session]:
    """Connect to the database at ``url`` and bring its tables up to date; returns a session factory.

    SQLite (one box) creates missing tables and columns itself; any other database (PostgreSQL) is migrated to
    the newest Alembic revision (see ``migrations``), by one front end or worker at a time.
    """
    is_sqlite = url.startswith("sqlite")
    engine: Engine = create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False} if is_sqlite else {},
        json_serializer=lambda v: json.dumps(v, allow_nan=False, default=str),
        pool_pre_ping=not is_sqlite,  # a server restart or failover leaves dead connections in the pool
    )
    if not is_sqlite:
        from ctriage.service.migrations import upgrade

        upgrade(engine)
        return sessionmaker(engine, expire_on_commit=False)
    event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    _add_new_columns(engine)
    with engine.begin() as connection:
        for trigger in APPEND_ONLY_TRIGGERS:
            connection.execute(text(trigger))
    return sessionmaker(engine, expire_on_commit=False)


def _add_new_columns(engine: Engine) -> None:
    """Add columns that a newer ctriage defines to the tables of an existing database (all nullable or with a
    default), so that an upgrade keeps the studies, reviews and audit trail; new tables come from create_all."""
    existing = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"
                default = column.default.arg if column.default is not None and column.default.is_scalar else None
                if default is not None:
                    ddl += f" DEFAULT {default!r}" if isinstance(default, str) else f" DEFAULT {default}"
                connection.execute(text(ddl))


def recover_interrupted(sessions: sessionmaker[Session]) -> int:
    """After a restart, jobs running when the process stopped go back to the queue; returns how many.

    Results that were being sent are marked as failed sends, to be sent again from the UI / API.
    """
    with sessions.begin() as session:
        session.execute(
            update(Study).where(Study.send_status == SENDING).values(send_status=INTERRUPTED_SEND)
        )
        result = session.execute(
            update(Study).where(Study.status == RUNNING).values(status=QUEUED, progress="")
        )
        return result.rowcount or 0


def promote_quiet(sessions: sessionmaker[Session], quiet_period_s: float, now: datetime | None = None) -> int:
    """Queue studies that received no instance for ``quiet_period_s``; returns how many were queued."""
    now = now or utcnow()
    with sessions.begin() as session:
        ids = [
            s.id
            for s in session.scalars(select(Study).where(Study.status == RECEIVING))
            if (now - as_utc(s.last_instance_at)).total_seconds() >= quiet_period_s
        ]
        if not ids:
            return 0
        # still receiving: another front end may have queued it, or an instance arrived, meanwhile
        queued = session.execute(
            update(Study).where(Study.id.in_(ids), Study.status == RECEIVING).values(status=QUEUED)
        )
        return queued.rowcount or 0


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def claim_next(sessions: sessionmaker[Session]) -> Study | None:
    """Atomically move the oldest queued study to running and return it (None when the queue is empty)."""
    with sessions.begin() as session:
        for study_id in session.scalars(
            select(Study.id).where(Study.status == QUEUED).order_by(Study.received_at)
        ):
            study = claim(session, study_id)
            if study is not None:
                return study
    return None


def claim(session: Session, study_id: int, **values: Any) -> Study | None:
    """Atomically move study ``study_id`` from queued to running (one more attempt; ``values`` set too) in
    ``session``; its row, or None when it was not queued (another worker has it, it is finished, or deleted)."""
    claimed = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.status == QUEUED)
        .values(status=RUNNING, started_at=utcnow(), attempts=Study.attempts + 1, error="", progress="", **values)
    )
    return session.get(Study, study_id) if claimed.rowcount == 1 else None


def requeue(sessions: sessionmaker[Session], study_id: int) -> bool:
    """Queue a failed, incomplete or finished study again (retry from the UI / API); False if it is in another state."""
    with sessions.begin() as session:
        result = session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status.in_(FINISHED))
            .values(status=QUEUED, error="", progress="")
        )
        return result.rowcount == 1
