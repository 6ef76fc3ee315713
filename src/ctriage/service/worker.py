"""`ctriage worker`: a Celery worker that analyses studies queued by the `serve` front ends (distributed mode)."""

from __future__ import annotations

import functools
import os
import socket

from ctriage.service.config import ServiceConfig
from ctriage.service.db import open_db
from ctriage.service.jobs import default_analyze
from ctriage.service.metrics import timed
from ctriage.service.queue import QUEUE, DistributedWorker, celery_app, register_task


def serve_metrics(port: int) -> None:
    """Prometheus metrics of all of this worker's processes on ``port`` (prometheus_client's multi-process mode:
    ``PROMETHEUS_MULTIPROC_DIR`` must be set before the metrics are created, see the CLI)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def run_worker(config: ServiceConfig) -> None:
    """Take analysis tasks from the broker until stopped, ``config.workers`` at a time (one process each)."""
    config.results_dir.mkdir(parents=True, exist_ok=True)
    open_db(config.db_url)  # migrate now, before a task needs the database
    if config.metrics_port:
        serve_metrics(config.metrics_port)
    app = celery_app(config)
    @functools.cache
    def worker() -> DistributedWorker:  # one per process, made in the process (after the fork of a pool)
        return DistributedWorker(config, open_db(config.db_url), timed(default_analyze))

    register_task(app, worker)
    pool = "solo" if config.workers <= 1 else "prefork"
    app.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--concurrency={max(config.workers, 1)}",
            f"--queues={QUEUE}",
            f"--hostname=ctriage-{socket.gethostname()}-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )
