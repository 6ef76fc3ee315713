"""Distributed mode: `ctriage serve` front ends queue studies on a Celery broker, `ctriage worker` processes on any
number of machines analyse them (docs/deployment.md).

The database stays the one record of a study's state; the broker only carries "analyse study N" messages:

* a front end's :class:`Dispatcher` queues quiet studies, hands each queued study to the broker once (a row-level
  claim on ``dispatched_at``, so several front ends never send one study twice), puts back in the queue the
  running studies whose worker stopped sending heartbeats (killed, powered off), and sends again the queued
  studies whose message the broker lost (its queue is empty while they wait: a broker restarted without its
  append-only file);
* a worker takes a message (late acknowledgement: the message is acknowledged only after the analysis, so a
  worker that dies mid-study leaves it to be delivered again), claims the study with an atomic
  ``UPDATE ... WHERE status = 'queued'`` (a duplicate message finds it claimed and is dropped), renews its lease
  while it works and stores the result only if it still holds the study (a fencing check under a row lock;
  analyses are also unique on study + attempt). A crash is retried with exponential back-off, up to
  ``max_attempts``, then the study is dead-lettered with the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ctriage.service.config import ServiceConfig
from ctriage.service.db import DEAD_LETTER, QUEUED, RUNNING, Study, claim, promote_quiet, utcnow
from ctriage.service.jobs import Analyze, Worker, default_analyze

log = logging.getLogger(__name__)

TASK = "ctriage.analyse"
QUEUE = "ctriage-analysis"
DISPATCH_BATCH = 500  # studies handed to the broker per dispatcher round at most
RESEND_AFTER_S = 60.0  # a study queued this long after its message went out, with the broker's queue empty, is resent
LOST_WORKER = "the worker analysing it stopped (killed, out of memory or powered off)"


def celery_app(config: ServiceConfig) -> Celery:
    """The Celery application over ``config.broker_url``: late acknowledgement, one message per worker process at
    a time, messages requeued when a worker process dies, JSON only, no result backend (results are in the
    database)."""
    app = Celery("ctriage", broker=config.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": config.visibility_timeout_s},
        worker_hijack_root_logger=False,
    )
    return app


def queue_length(app: Celery) -> int:
    """Messages waiting in the analysis queue of ``app``'s broker (not counting those being worked on); declares
    the queue as Celery does if the broker has none yet."""
    with app.connection_for_read() as connection:
        queue = app.amqp.queues[QUEUE].bind(connection.default_channel)
        return int(queue.queue_declare().message_count)


def worker_name() -> str:
    """This process's name in the ``worker`` column: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff_s(config: ServiceConfig, attempt: int) -> float:
    """Seconds to wait before retrying a study whose ``attempt``-th analysis crashed (doubling each time)."""
    return config.retry_backoff_s * 2 ** max(attempt - 1, 0)


class Dispatcher:
    """A front end's loop that moves studies from the database to the broker (see the module's docstring)."""

    def __init__(
        self,
        config: ServiceConfig,
        sessions: sessionmaker[Session],
        send: Callable[[int], Any],
        waiting: Callable[[], int],
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.send = send  # study id -> message on the broker
        self.waiting = waiting  # -> messages waiting on the broker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run :meth:`run_once` every ``poll_interval_s`` in a thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ctriage-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the loop after its current round."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # database or broker unavailable: try again next round
                log.exception("dispatcher round failed")
            self._stop.wait(self.config.poll_interval_s)

    def run_once(self) -> int:
        """Queue quiet studies, requeue those of lost workers, send the queued ones that are due; returns how many
        were sent."""
        promote_quiet(self.sessions, self.config.quiet_period_s)
        self.requeue_lost()
        sent = self.dispatch_due()
        self.resend_lost()  # last: a broker that does not answer stops no other step (sent again next round)
        return sent

    def requeue_lost(self) -> int:
        """Running studies whose lease expired go back to the queue, or to the dead letter after ``max_attempts``;
        returns how many."""
        now = utcnow()
        expired = (Study.status == RUNNING, Study.lease_until < now)
        with self.sessions.begin() as session:
            dead = session.execute(
                update(Study)
                .where(*expired, Study.attempts >= self.config.max_attempts)
                .values(status=DEAD_LETTER, error=f"{LOST_WORKER} on each attempt", progress="", finished_at=now)
            )
            again = session.execute(
                update(Study)
                .where(*expired)
                .values(status=QUEUED, dispatched_at=None, progress="", error=LOST_WORKER, worker="")
            )
        count = (dead.rowcount or 0) + (again.rowcount or 0)
        if count:
            log.warning("%d study(ies) of lost workers queued again or dead-lettered", count)
        return count

    def resend_lost(self, after_s: float = RESEND_AFTER_S) -> int:
        """Mark for sending again the studies sent over ``after_s`` ago and still queued while the broker holds no
        message (so theirs was lost); returns how many. A message taken by a worker this very moment may be sent
        twice: the second finds the study claimed and is dropped."""
        stale = (Study.status == QUEUED, Study.dispatched_at < utcnow() - timedelta(seconds=after_s))
        with self.sessions() as session:
            if session.scalar(select(Study.id).where(*stale).limit(1)) is None or self.waiting() > 0:
                return 0
        with self.sessions.begin() as session:
            count = session.execute(update(Study).where(*stale).values(dispatched_at=None)).rowcount or 0
        log.warning("%d queued study(ies) had no message on the broker: sending again", count)
        return count

    def dispatch_due(self) -> int:
        """Send each queued, not yet sent study whose back-off has passed to the broker, once; returns how many.

        The row is claimed and the message sent inside one transaction: another front end's claim waits on the
        row lock and then finds it sent; a failed send leaves it unsent for the next round.
        """
        now = utcnow()
        due = (
            Study.status == QUEUED,
            Study.dispatched_at.is_(None),
            (Study.dispatch_after.is_(None)) | (Study.dispatch_after <= now),
        )
        with self.sessions() as session:
            ids = list(session.scalars(select(Study.id).where(*due).order_by(Study.received_at).limit(DISPATCH_BATCH)))
        sent = 0
        for study_id in ids:
            with self.sessions.begin() as session:
                claimed = session.execute(update(Study).where(Study.id == study_id, *due).values(dispatched_at=now))
                if claimed.rowcount == 1:
                    self.send(study_id)
                    sent += 1
        return sent


def claim_study(sessions: sessionmaker[Session], study_id: int, worker: str, lease_s: float) -> Study | None:
    """Atomically move a queued study to running, held by ``worker`` for ``lease_s``; None when it is not queued
    (another worker has it, it is finished, or deleted)."""
    lease_until = utcnow() + timedelta(seconds=lease_s)
    with sessions.begin() as session:
        return claim(
            session, study_id, worker=worker, lease_until=lease_until, dispatched_at=None, dispatch_after=None
        )


class DistributedWorker(Worker):
    """The analysis of one claimed study in a `ctriage worker` process, with heartbeats, fencing and retries."""

    def __init__(
        self, config: ServiceConfig, sessions: sessionmaker[Session], analyze: Analyze = default_analyze
    ) -> None:
        super().__init__(config, sessions, analyze)
        self.name = worker_name()

    def handle(self, study_id: int) -> str:
        """Analyse study ``study_id`` if it is still queued; returns "analysed" or "skipped"."""
        study = claim_study(self.sessions, study_id, self.name, self.config.lease_s)
        if study is None:
            log.info("study %s is not queued (analysed or claimed already): message dropped", study_id)
            return "skipped"
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(study_id, beating), daemon=True)
        heart.start()
        try:
            self.process(study)
        finally:
            beating.set()
            heart.join()
        return "analysed"

    def _heartbeat(self, study_id: int, stop: threading.Event) -> None:
        """Renew the lease every third of ``lease_s`` until ``stop``."""
        while not stop.wait(self.config.lease_s / 3):
            try:
                with self.sessions.begin() as session:
                    session.execute(
                        update(Study)
                        .where(Study.id == study_id, Study.status == RUNNING, Study.worker == self.name)
                        .values(lease_until=utcnow() + timedelta(seconds=self.config.lease_s))
                    )
            except OperationalError:
                log.warning("heartbeat of study %s failed; trying again", study_id)

    def _owned(self, session: Session, study_id: int) -> Study | None:
        """The study's row, locked, if this worker still holds it (its lease may have expired and another worker
        taken over, whose outcome then counts)."""
        study = session.get(Study, study_id, with_for_update=True)
        if study is None or study.status != RUNNING or study.worker != self.name:
            log.warning("study %s is no longer held by %s: outcome discarded", study_id, self.name)
            return None
        return study

    def _crashed(self, study_id: int, reason: str) -> None:
        """Queue the study again after a back-off, or dead-letter it once it has crashed ``max_attempts`` times."""
        with self.sessions.begin() as session:
            study = self._owned(session, study_id)
            if study is None:
                return
            study.progress, study.worker, study.lease_until = "", "", None
            if study.attempts >= self.config.max_attempts:
                log.error("study %s dead-lettered after %d attempts: %s", study_id, study.attempts, reason)
                study.status, study.finished_at = DEAD_LETTER, utcnow()
                study.error = f"failed on each of {study.attempts} attempts; last: {reason}"
                return
            wait_s = backoff_s(self.config, study.attempts)
            log.warning("study %s attempt %d crashed, retry in %.0f s: %s", study_id, study.attempts, wait_s, reason)
            study.status, study.dispatched_at = QUEUED, None
            study.dispatch_after = utcnow() + timedelta(seconds=wait_s)
            study.error = f"attempt {study.attempts} of {self.config.max_attempts} failed, retrying: {reason}"


def register_task(app: Celery, worker: Callable[[], DistributedWorker]) -> Any:
    """Define the analysis task on ``app``, run by ``worker()`` (built once per worker process); late
    acknowledgement comes from :func:`celery_app`'s settings. Database outages are retried by Celery with exponential
    back-off (up to 10 minutes apart)."""

    @app.task(
        name=TASK,
        autoretry_for=(OperationalError,),
        retry_backoff=True,
        retry_backoff_max=600,
        max_retries=None,
    )
    def analyse(study_id: int) -> str:
        return worker().handle(study_id)

    return analyse
