"""Load test of the distributed mode: a day of studies replayed at an accelerated rate through a real Redis broker
and a real PostgreSQL, analysed by several `ctriage worker` processes on this machine, some killed (kill -9) and
replaced during the run.

Studies arrive as a Poisson process at ``--per-day`` studies a day sped up ``--speedup`` times, each a small chest
phantom (NIfTI, 32 x 96 x 96 voxels, so that a 2-core machine keeps up) stored and queued by a `serve` front end
in this process. Reports throughput, queue wait (arrival to start of the analysis) p50 / p95, failures, the
per-worker capacity from the measured seconds per study and, from the seconds of one real study (``--real-study``,
COVID-CT-MD P001 when present, analysed here as a worker does), how many 2-core worker machines ``--per-day`` real
studies need. Then checks that nothing was lost (every study has a stored result, or a failed / dead-letter state
with its reason: a study whose worker is killed on each of its attempts is dead-lettered) and nothing stored twice.

    python benchmarks/load_test.py --studies 300 --speedup 5 --workers 3 --kill-every 45
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from ctriage.service.config import ServiceConfig
from ctriage.service.db import DEAD_LETTER, FAILED, FINISHED, Analysis, Study, as_utc
from ctriage.service.runtime import Service
from ctriage.testing.cluster import kill_worker, phantom_nifti, start_worker
from ctriage.testing.servers import postgres_server, redis_server

REPO = Path(__file__).resolve().parents[1]
P001 = REPO.parent / "shared" / "data" / "ct_volumes" / "covidctmd_P001_covid19" / "dicom"
DAY_S = 86400.0
PEAK_FACTOR = 2.0  # busiest hour's arrivals / the day's mean hourly arrivals (daytime scanning)
TARGET_LOAD = 0.7  # plan workers to be busy at most 70 % of the busiest hour


def real_study_seconds(path: Path) -> float:
    """Seconds of the service's job (analysis, report files, viewer slices) on one real study, run twice in this
    process (models loaded, as in a running worker); the second run's time."""
    import pydicom

    from ctriage.service.db import requeue

    with tempfile.TemporaryDirectory() as tmp:
        service = Service.create(ServiceConfig(data_dir=Path(tmp), quiet_period_s=0))
        for file in sorted(path.rglob("*.dcm")):
            service.store.add_instance(file.read_bytes(), pydicom.dcmread(file, stop_before_pixels=True), "P", "push")
        service.worker.run_once()
        with service.sessions() as session:
            study_id = session.scalar(select(Study.id))
        requeue(service.sessions, study_id)
        start = time.perf_counter()
        service.worker.run_once()
        return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` (0 when empty)."""
    return float(np.percentile(values, q)) if values else 0.0


def replay(config: ServiceConfig, args: argparse.Namespace, logs: Path) -> dict[str, float]:
    """Feed the studies, run and kill workers, wait for the queue to drain; the figures."""
    rng = random.Random(args.seed)
    study = phantom_nifti()
    rate_per_s = args.per_day / DAY_S * args.speedup
    front = Service.create(config)
    front.start(listen=False, periodic_pull=False)
    workers = [start_worker(config, logs / f"worker{i}.log") for i in range(args.workers)]
    kills, spawned = 0, args.workers
    start = time.monotonic()
    next_arrival, next_kill, fed = start, start + args.kill_every, 0
    try:
        while True:
            now = time.monotonic()
            if fed < args.studies and now >= next_arrival:
                site = f"SITE{rng.randrange(args.sites):02d}"
                front.store.add_nifti(study, f"{site}-{fed}.nii.gz", calling_ae=site)
                fed += 1
                next_arrival += rng.expovariate(rate_per_s)
            if args.kill_every > 0 and now >= next_kill and finished(front) < args.studies:
                index = rng.randrange(len(workers))
                kill_worker(workers[index])  # mid-study, most of the time: the workers are busy
                workers[index] = start_worker(config, logs / f"worker{spawned}.log")
                kills, spawned, next_kill = kills + 1, spawned + 1, now + args.kill_every
            if fed == args.studies and finished(front) == args.studies:
                break
            if now - start > args.timeout_s:
                raise SystemExit(f"timed out after {args.timeout_s:.0f} s with {finished(front)} studies finished")
            time.sleep(min(0.02, max(0.0, next_arrival - time.monotonic())))
        wall_s = time.monotonic() - start
    finally:
        for process in workers:
            kill_worker(process)
        front.stop()
    return figures(front, args, wall_s, kills)


def finished(front: Service) -> int:
    """How many studies reached a final state."""
    with front.sessions() as session:
        return session.scalar(select(func.count()).where(Study.status.in_(FINISHED))) or 0


def figures(front: Service, args: argparse.Namespace, wall_s: float, kills: int) -> dict[str, float]:
    """Throughput, queue waits, failures, per-worker capacity, and the lost / twice-stored checks."""
    with front.sessions() as session:
        studies = list(session.scalars(select(Study)))
        analyses = list(session.scalars(select(Analysis)))
    stored = Counter(a.study_id for a in analyses)
    waits = [(as_utc(s.started_at) - as_utc(s.received_at)).total_seconds() for s in studies if s.started_at]
    by_id = {s.id: s for s in studies}
    seconds = [  # the stored (last) attempt of each study: start to end of its analysis
        (as_utc(by_id[a.study_id].finished_at) - as_utc(by_id[a.study_id].started_at)).total_seconds()
        for a in analyses
    ]
    per_study_s = float(np.median(seconds)) if seconds else math.nan
    return {
        "studies": len(studies),
        "workers": args.workers,
        "arrival_rate_per_min": round(args.per_day / DAY_S * args.speedup * 60, 2),
        "wall_s": round(wall_s, 1),
        "throughput_per_min": round(len(studies) / wall_s * 60, 2),
        "queue_wait_p50_s": round(percentile(waits, 50), 1),
        "queue_wait_p95_s": round(percentile(waits, 95), 1),
        "failed": sum(s.status == FAILED for s in studies),
        "dead_lettered": sum(s.status == DEAD_LETTER for s in studies),
        "workers_killed": kills,
        "analysed_again_after_a_kill": sum(s.attempts > 1 for s in studies),
        "lost": sum(stored[s.id] == 0 and s.status not in (FAILED, DEAD_LETTER) for s in studies),
        "stored_twice": sum(n > 1 for n in stored.values()),
        "seconds_per_phantom_study_median": round(per_study_s, 2),
        "per_worker_studies_per_min": round(60 / per_study_s, 1),
    }


def sizing(real_s: float, per_day: int) -> dict[str, float]:
    """2-core worker machines (one analysis at a time each: the pipeline uses both cores) for ``per_day`` real
    studies a day, with the busiest hour at PEAK_FACTOR times the mean and workers at most TARGET_LOAD busy."""
    busy_s_per_day = per_day * real_s
    mean = busy_s_per_day / DAY_S
    return {
        "real_study_s": round(real_s, 1),
        "worker_machines_mean_load": round(mean, 2),
        "worker_machines_needed": math.ceil(mean * PEAK_FACTOR / TARGET_LOAD),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=300, help="studies to replay (a day: --per-day)")
    parser.add_argument("--per-day", type=int, default=10_000, help="arrival rate, studies a day")
    parser.add_argument("--speedup", type=float, default=5.0, help="replay this many times faster than real time")
    parser.add_argument("--workers", type=int, default=3, help="`ctriage worker` processes")
    parser.add_argument("--kill-every", type=float, default=45.0, help="kill -9 a worker every this many s (0: no)")
    parser.add_argument("--sites", type=int, default=16, help="sending sites (calling AE titles)")
    parser.add_argument("--real-study", type=Path, default=P001, help="real study timed for the sizing")
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server() as broker_url, postgres_server() as database_url:
        config = replace(
            ServiceConfig(data_dir=Path(tmp) / "data", quiet_period_s=0.0, poll_interval_s=0.2),
            broker_url=broker_url,
            database_url=database_url,
            lease_s=10.0,
            retry_backoff_s=1.0,
            log_format="json",
        )
        (Path(tmp) / "logs").mkdir()
        result = replay(config, args, Path(tmp) / "logs")
    if args.real_study.exists():
        result.update(sizing(real_study_seconds(args.real_study), args.per_day))
    print(json.dumps(result, indent=2))
    if result["lost"] or result["stored_twice"]:
        raise SystemExit("FAILED: studies lost or stored twice")


if __name__ == "__main__":
    main()
