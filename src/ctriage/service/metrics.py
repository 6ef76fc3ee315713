"""Prometheus metrics: analysis seconds per stage and outcomes (counted by the process that analyses: `serve` on
one box, each `ctriage worker` in distributed mode), and the job database's queue figures (read at each scrape of
`serve`'s /metrics, so they are the same whichever front end is asked)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ctriage.io.errors import IncompleteSeriesError, InputError
from ctriage.service.db import DEAD_LETTER, FAILED, QUEUED, STATUSES, Study, as_utc, utcnow

SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
STAGE_SECONDS = Histogram(
    "ctriage_analysis_stage_seconds", "Seconds per pipeline stage of an analysis", ["stage"], buckets=SECONDS_BUCKETS
)
ANALYSIS_SECONDS = Histogram("ctriage_analysis_seconds", "Seconds per whole analysis", buckets=SECONDS_BUCKETS)
ANALYSES = Counter("ctriage_analyses", "Analyses run, by outcome (ok, incomplete, refused, crash)", ["outcome"])


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of an analysis that raised ``exc``."""
    if isinstance(exc, IncompleteSeriesError):
        return "incomplete"
    return "refused" if isinstance(exc, InputError) else "crash"


def timed(analyze: Callable[..., Any]) -> Callable[..., Any]:
    """``analyze`` (path, progress=...) -> result, counting its outcome and observing its seconds, in total and per
    stage (the result's ``timings_s``)."""

    def run(path: Path, progress: Callable[[str], None] | None = None) -> Any:
        start = time.perf_counter()
        try:
            result = analyze(path, progress=progress)
        except Exception as exc:
            ANALYSES.labels(outcome_of(exc)).inc()
            raise
        ANALYSES.labels("ok").inc()
        ANALYSIS_SECONDS.observe(time.perf_counter() - start)
        for stage, seconds in (getattr(result, "timings_s", None) or {}).items():
            STAGE_SECONDS.labels(stage).observe(seconds)
        return result

    return run


class QueueCollector(Collector):
    """Queue depth, studies by state, the oldest queued study's wait, studies finished in the last minute and
    failed studies, from the job database at each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges (no sample when the database cannot be read: the scrape still answers)."""
        now = utcnow()
        try:
            with self.sessions() as session:
                counts = dict(session.execute(select(Study.status, func.count()).group_by(Study.status)).all())
                oldest = session.scalar(select(func.min(Study.received_at)).where(Study.status == QUEUED))
                finished = session.scalar(
                    select(func.count()).where(Study.finished_at >= now - timedelta(minutes=1))
                )
        except SQLAlchemyError:  # /api/ready says so; the process's own metrics are still worth scraping
            return
        by_status = GaugeMetricFamily("ctriage_studies", "Studies by job state", labels=["status"])
        for status in STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("ctriage_queue_depth", "Studies waiting for a worker", value=counts.get(QUEUED, 0))
        wait = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily("ctriage_queue_oldest_seconds", "Seconds since the oldest queued arrived", value=wait)
        yield GaugeMetricFamily(
            "ctriage_studies_finished_last_minute", "Studies whose analysis ended in the last 60 s", value=finished or 0
        )
        failed = counts.get(FAILED, 0) + counts.get(DEAD_LETTER, 0)
        yield GaugeMetricFamily("ctriage_studies_failed", "Studies failed or dead-lettered", value=failed)
