"""The running service: database, study store, DICOM listener, workers and the optional periodic PACS pull."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from ctriage.service import pacs
from ctriage.service.config import ServiceConfig
from ctriage.service.db import open_db, recover_interrupted
from ctriage.service.jobs import Analyze, Worker, default_analyze
from ctriage.service.metrics import timed
from ctriage.service.queue import TASK, Dispatcher, celery_app, queue_length
from ctriage.service.retention import RETENTION_CHECK_S, purge_expired
from ctriage.service.scp import start_listener
from ctriage.service.store import StudyStore

log = logging.getLogger(__name__)


@dataclass
class Service:
    """Everything ``ctriage serve`` runs besides the HTTP server, which gets this object."""

    config: ServiceConfig
    sessions: sessionmaker[Session]
    store: StudyStore
    worker: Worker
    listener: ThreadedAssociationServer | None = None
    dispatcher: Dispatcher | None = None  # distributed mode: hands queued studies to the broker
    _stop: threading.Event = field(default_factory=threading.Event)
    _puller: threading.Thread | None = None
    _retention: threading.Thread | None = None

    @classmethod
    def create(cls, config: ServiceConfig, analyze: Analyze = default_analyze) -> Service:
        """Open (or create) the data folder and database; nothing is started yet."""
        config.studies_dir.mkdir(parents=True, exist_ok=True)
        config.results_dir.mkdir(parents=True, exist_ok=True)
        sessions = open_db(config.db_url)
        store = StudyStore(config.studies_dir, sessions, config.site_of)
        service = cls(config, sessions, store, Worker(config, sessions, timed(analyze)))
        if config.distributed:
            app = celery_app(config)
            service.dispatcher = Dispatcher(
                config, sessions, lambda study_id: app.send_task(TASK, args=[study_id]), lambda: queue_length(app)
            )
        return service

    def start(self, listen: bool = True, work: bool = True, periodic_pull: bool = True) -> None:
        """Requeue interrupted jobs, then start the listener, the workers (distributed mode: the dispatcher) and
        the periodic pull (if set). In distributed mode other front ends' workers are running: lost analyses are
        found by their lease instead."""
        requeued = 0 if self.dispatcher else recover_interrupted(self.sessions)
        if requeued:
            log.info("requeued %d job(s) interrupted by the last shutdown", requeued)
        if listen:
            self.listener = start_listener(self.config, self.store)
        if work:
            (self.dispatcher or self.worker).start()
        if work and self.config.retention_days > 0:
            self._retention = threading.Thread(target=self._retention_loop, name="ctriage-retention", daemon=True)
            self._retention.start()
        if periodic_pull and self.config.pacs is not None and self.config.pull_interval_s > 0:
            self._puller = threading.Thread(target=self._pull_loop, name="ctriage-pull", daemon=True)
            self._puller.start()

    def stop(self) -> None:
        """Stop accepting associations, let running jobs finish their current step, stop pulling."""
        self._stop.set()
        if self.listener is not None:
            self.listener.shutdown()
            self.listener = None
        (self.dispatcher or self.worker).stop()
        for thread in (self._puller, self._retention):
            if thread is not None:
                thread.join(timeout=30)

    def pull(self) -> list[str]:
        """One C-FIND + retrieve round against the configured PACS; returns the retrieved study UIDs."""
        return pacs.pull_new_studies(self.config, self.store)

    def _pull_loop(self) -> None:
        while not self._stop.is_set():
            try:
                fetched = self.pull()
                if fetched:
                    log.info("pulled %d new study(ies) from %s", len(fetched), self.config.pacs)
            except (pacs.DicomNetworkError, OSError) as exc:
                log.warning("pull from %s failed: %s", self.config.pacs, exc)
            self._stop.wait(self.config.pull_interval_s)

    def _retention_loop(self) -> None:
        while not self._stop.is_set():
            try:
                deleted = purge_expired(self.config, self.sessions)
                if deleted:
                    log.info("retention: deleted %d study(ies) older than %g days", deleted, self.config.retention_days)
            except OSError:
                log.exception("retention: cannot delete")
            self._stop.wait(RETENTION_CHECK_S)
