"""Job database on a real SQLite file: quiet period, atomic claiming, restart recovery, retry."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from ctriage.service.db import (
    DONE,
    FAILED,
    INTERRUPTED_SEND,
    QUEUED,
    RECEIVING,
    RUNNING,
    SENDING,
    Study,
    claim_next,
    open_db,
    promote_quiet,
    recover_interrupted,
    requeue,
    utcnow,
)


def _add(sessions, uid: str, **values) -> int:
    with sessions.begin() as session:
        study = Study(study_uid=uid, source="push", path=f"/nowhere/{uid}", **values)
        session.add(study)
        session.flush()
        return study.id


def _status(sessions, study_id: int) -> str:
    with sessions() as session:
        return session.get(Study, study_id).status


def test_quiet_period_decides_when_a_study_is_complete(tmp_path: Path):
    sessions = open_db(f"sqlite:///{tmp_path / 'jobs.db'}")
    now = utcnow()
    recent = _add(sessions, "1.1", last_instance_at=now - timedelta(seconds=5))
    quiet = _add(sessions, "1.2", last_instance_at=now - timedelta(seconds=60))
    assert promote_quiet(sessions, 30.0, now=now) == 1
    assert (_status(sessions, recent), _status(sessions, quiet)) == (RECEIVING, QUEUED)


def test_a_job_is_claimed_once_oldest_first(tmp_path: Path):
    sessions = open_db(f"sqlite:///{tmp_path / 'jobs.db'}")
    now = utcnow()
    newer = _add(sessions, "2.1", status=QUEUED, received_at=now)
    older = _add(sessions, "2.2", status=QUEUED, received_at=now - timedelta(minutes=1))
    first, second = claim_next(sessions), claim_next(sessions)
    assert (first.id, second.id) == (older, newer)
    assert first.status == RUNNING and first.attempts == 1
    assert claim_next(sessions) is None


def test_state_survives_reopening_and_running_jobs_are_requeued(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    sessions = open_db(url)
    running = _add(sessions, "3.1", status=QUEUED)
    sending = _add(sessions, "3.2", status=DONE, send_status=SENDING)
    claim_next(sessions)
    sessions.kw["bind"].dispose()  # the process "crashes"
    reopened = open_db(url)
    assert _status(reopened, running) == RUNNING
    assert recover_interrupted(reopened) == 1
    assert _status(reopened, running) == QUEUED
    with reopened() as session:
        assert session.get(Study, sending).send_status == INTERRUPTED_SEND


def test_retry_only_from_failed_or_done(tmp_path: Path):
    sessions = open_db(f"sqlite:///{tmp_path / 'jobs.db'}")
    failed = _add(sessions, "4.1", status=FAILED, error="not a CT")
    done = _add(sessions, "4.2", status=DONE)
    receiving = _add(sessions, "4.3")
    assert requeue(sessions, failed) and requeue(sessions, done)
    assert not requeue(sessions, receiving)
    with sessions() as session:
        assert session.get(Study, failed).error == ""
    assert _status(sessions, failed) == QUEUED
