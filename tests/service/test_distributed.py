"""Distributed mode against a real Redis broker and a real PostgreSQL: `ctriage worker` processes, kill -9 of a
worker mid-study, two front ends receiving the same study, retries and the dead letter.

The servers are started in temporary folders (``ctriage.testing.servers``); the tests skip, saying why, only when
redis-server or PostgreSQL is not installed (CI installs both).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from itertools import count
from pathlib import Path

import pydicom
import pytest
import redis
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import ProgrammingError

from ctriage.service.audit import record
from ctriage.service.config import ServiceConfig
from ctriage.service.db import DEAD_LETTER, DONE, QUEUED, RUNNING, Analysis, Base, Study, as_utc, open_db, utcnow
from ctriage.service.queue import Dispatcher, DistributedWorker, claim_study
from ctriage.service.runtime import Service
from ctriage.testing.cluster import kill_worker, phantom_nifti, start_worker
from ctriage.testing.servers import ServerUnavailableError, postgres_server, redis_server
from tests.service.conftest import free_port

pytestmark = pytest.mark.integration
WAIT_S = 240.0  # for all studies of a test to be analysed on a busy 2-core machine
_databases = count()


def _running(server: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    """The URL of a started ``server``; the test skips, saying what to install, when its binaries are absent."""
    try:
        with server() as url:
            yield url
    except ServerUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    yield from _running(redis_server)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    yield from _running(postgres_server)


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """A new, empty database on the test server for one test."""
    name = f"ctriage_test_{next(_databases)}"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def distributed(config: ServiceConfig, broker_url: str, database_url: str) -> ServiceConfig:
    """Settings of a front end / worker: the test broker and database, a short lease (a killed worker's study is
    queued again 3 s after its last heartbeat), no back-off."""
    return replace(
        config, broker_url=broker_url, database_url=database_url, lease_s=3.0, retry_backoff_s=0.0, workers=1
    )


@pytest.fixture(scope="module")
def phantom() -> bytes:
    return phantom_nifti()


def wait_for(condition: Callable[[], bool], what: str, logs: list[Path], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(log.read_text()[-3000:] for log in logs if log.exists())
            raise AssertionError(f"timed out waiting for {what}; worker logs:\n{tails}")
        time.sleep(0.1)


def studies(sessions) -> list[Study]:
    with sessions() as session:
        return list(session.scalars(select(Study).order_by(Study.id)))


def analyses(sessions) -> list[Analysis]:
    with sessions() as session:
        return list(session.scalars(select(Analysis)))


def test_worker_pool_survives_kill_9_mid_study(distributed: ServiceConfig, phantom: bytes, tmp_path: Path):
    front = Service.create(distributed)
    ids = [front.store.add_nifti(phantom, f"phantom{i}.nii.gz", calling_ae=f"SITE{i % 2}").id for i in range(5)]
    front.start(listen=False, periodic_pull=False)
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [start_worker(distributed, log) for log in logs[:2]]
    try:
        wait_for(lambda: any(s.status == RUNNING for s in studies(front.sessions)), "an analysis to start", logs)
        running = next(s for s in studies(front.sessions) if s.status == RUNNING)
        killed, held = running.id, running.worker  # "host:pid" of the worker analysing it
        victim = next(w for w in workers if held.endswith(f":{w.pid}"))
        kill_worker(victim)  # a power cut mid-study: no clean-up, no acknowledgement
        workers.append(start_worker(distributed, logs[2]))  # a replacement joins the pool
        wait_for(lambda: all(s.status == DONE for s in studies(front.sessions)), "all studies analysed", logs)
    finally:
        for process in workers:
            kill_worker(process)
        front.stop()
    done = {s.id: s for s in studies(front.sessions)}
    stored = analyses(front.sessions)
    assert sorted(a.study_id for a in stored) == ids  # every study stored exactly once, none lost
    assert done[killed].attempts == 2 and done[killed].worker != held
    assert {a.attempt for a in stored if a.study_id == killed} == {2}
    assert all(a.model_version.startswith("ctriage ") for a in stored)
    assert {s.site for s in done.values()} == {"SITE0", "SITE1"}


def push(config: ServiceConfig, folder: Path) -> None:
    """C-STORE the files of ``folder`` to the DICOM listener of ``config``, as the scanner SCANNER1."""
    files = sorted(folder.iterdir())
    syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    scanner = AE(ae_title="SCANNER1")
    scanner.add_requested_context(CTImageStorage, [syntax])
    association = scanner.associate("127.0.0.1", config.dicom_port, ae_title=config.ae_title)
    assert association.is_established
    for path in files:
        assert association.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    association.release()


def test_two_front_ends_receiving_one_study_analyse_it_once(distributed: ServiceConfig, ct_series: Path, tmp_path):
    settings = replace(distributed, quiet_period_s=1.0, poll_interval_s=0.05)
    fronts = [Service.create(replace(settings, dicom_port=free_port())) for _ in range(2)]  # one database, one folder
    sent: list[int] = []
    for front in fronts:
        send = front.dispatcher.send
        front.dispatcher.send = lambda study_id, send=send: (sent.append(study_id), send(study_id))
        front.start(periodic_pull=False)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        senders = [threading.Thread(target=push, args=(front.config, ct_series)) for front in fronts]
        for thread in senders:  # the PACS routes the study to both front ends at once
            thread.start()
        for thread in senders:
            thread.join()
        wait_for(lambda: [s.status for s in studies(fronts[0].sessions)] == [DONE], "the study analysed", [log])
        time.sleep(1.0)  # a second dispatch, if there were one, would have been sent by now
    finally:
        kill_worker(worker)
        for front in fronts:
            front.stop()
    (study,) = studies(fronts[0].sessions)
    assert study.n_instances == len(list(ct_series.iterdir()))  # each instance counted once across both
    assert len(sent) == 1 and study.attempts == 1 and study.site == "SCANNER1"
    assert len(analyses(fronts[0].sessions)) == 1


def test_crashing_study_is_retried_then_dead_lettered(distributed: ServiceConfig, phantom: bytes):
    settings = replace(distributed, max_attempts=2, retry_backoff_s=60.0)
    front = Service.create(settings)
    study_id = front.store.add_nifti(phantom, "phantom.nii.gz").id
    dispatcher = Dispatcher(settings, front.sessions, lambda _: None, lambda: 0)

    def crash(path, progress=None):
        raise MemoryError("out of memory")

    worker = DistributedWorker(settings, front.sessions, crash)
    assert dispatcher.run_once() == 1 and worker.handle(study_id) == "analysed"
    (study,) = studies(front.sessions)
    assert study.status == QUEUED and "attempt 1 of 2 failed" in study.error and "MemoryError" in study.error
    assert 59 < (as_utc(study.dispatch_after) - utcnow()).total_seconds() <= 60
    assert dispatcher.run_once() == 0  # backing off
    with front.sessions.begin() as session:
        session.execute(update(Study).values(dispatch_after=utcnow()))  # a minute later
    assert dispatcher.run_once() == 1 and worker.handle(study_id) == "analysed"
    (study,) = studies(front.sessions)
    assert study.status == DEAD_LETTER and "each of 2 attempts" in study.error and "out of memory" in study.error
    assert dispatcher.run_once() == 0 and analyses(front.sessions) == []


def test_outcome_of_a_worker_that_lost_its_lease_is_discarded(distributed: ServiceConfig, phantom: bytes):
    front = Service.create(distributed)
    study_id = front.store.add_nifti(phantom, "phantom.nii.gz").id
    slow, fast = DistributedWorker(distributed, front.sessions), DistributedWorker(distributed, front.sessions)
    slow.name, fast.name = "host-a:1", "host-b:2"
    claimed = claim_study(front.sessions, study_id, slow.name, lease_s=-1.0)  # its lease has run out already
    assert Dispatcher(distributed, front.sessions, lambda _: None, lambda: 0).requeue_lost() == 1
    assert fast.handle(study_id) == "analysed"
    slow._finish(claimed, None, Path(claimed.path).parent, "", "")  # the first worker wakes up late: not read
    (study,) = studies(front.sessions)
    assert (study.status, study.worker, study.attempts) == (DONE, "host-b:2", 2)
    assert [a.attempt for a in analyses(front.sessions)] == [2]


def test_a_message_the_broker_lost_is_sent_again(distributed: ServiceConfig, phantom: bytes, broker_url: str):
    front = Service.create(distributed)
    front.store.add_nifti(phantom, "phantom.nii.gz")
    dispatcher = front.dispatcher
    assert dispatcher.waiting() == 0  # no queue on the broker yet: declared, empty
    assert dispatcher.run_once() == 1 and dispatcher.waiting() == 1
    assert dispatcher.run_once() == 0  # sent once
    redis.Redis.from_url(broker_url).flushall()  # the broker restarted without its append-only file
    assert dispatcher.resend_lost(after_s=60.0) == 0  # too early to tell from a message in a worker's hands
    assert dispatcher.resend_lost(after_s=0.0) == 1 and dispatcher.dispatch_due() == 1 and dispatcher.waiting() == 1
    redis.Redis.from_url(broker_url).flushall()


def test_migrations_run_once_for_concurrent_starts_and_keep_the_audit_append_only(database_url: str):
    opened = []
    threads = [threading.Thread(target=lambda: opened.append(open_db(database_url))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 3  # no start failed on a half-made schema
    record(opened[0], "login", user="someone")
    with opened[0]() as session:
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == "0001"
        context = MigrationContext.configure(session.connection())
        assert compare_metadata(context, Base.metadata) == []  # the migrations make what db.py describes
        with pytest.raises(ProgrammingError, match="append-only"):
            session.execute(text("DELETE FROM audit_events"))
