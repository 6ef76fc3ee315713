"""Per-study time, memory and disk of the service's analysis job on a real study (COVID-CT-MD P001).

Each case runs in a fresh process: the study is stored as the DICOM listener stores it, then one worker job
(``Worker.run_once``: analysis, report files, the viewer's slices and, with a destination, SEG / SR / SC built and
C-STOREd to a pynetdicom storage SCP in the same process) is timed twice, the second time after a retry in
the same process (models and decoding workers ready, as in a running service). Prints a Markdown table: job
seconds (first, again), peak RSS, and the results folder's size against the received CT's.

    python benchmarks/service_study.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
P001 = REPO.parent / "shared" / "data" / "ct_volumes" / "covidctmd_P001_covid19" / "dicom"


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def run_case(send: bool) -> dict[str, float]:
    """One case in this process: store P001, run the job twice (first, then after a retry); figures."""
    import pydicom
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from sqlalchemy import select

    from ctriage.io.decode import start_workers
    from ctriage.service.config import DicomNode, ServiceConfig
    from ctriage.service.db import Study, requeue
    from ctriage.service.runtime import Service

    start_workers()
    server = None
    destination = None
    if send:
        archive = AE(ae_title="ARCHIVE")
        archive.supported_contexts = AllStoragePresentationContexts
        server = archive.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)])
        destination = DicomNode("ARCHIVE", "127.0.0.1", server.server_address[1])
    with tempfile.TemporaryDirectory() as tmp:
        service = Service.create(ServiceConfig(data_dir=Path(tmp), destination=destination, quiet_period_s=0))
        for path in sorted(P001.iterdir()):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            service.store.add_instance(path.read_bytes(), header, "BENCH", "push")
        timings = []
        for attempt in range(2):
            if attempt:
                with service.sessions() as session:
                    requeue(service.sessions, session.scalars(select(Study.id)).one())
            start = time.perf_counter()
            assert service.worker.run_once()
            timings.append(time.perf_counter() - start)
        with service.sessions() as session:
            study = session.scalars(select(Study)).one()
        assert study.status == "done", study.error
        assert not send or study.send_status.startswith("sent"), study.send_status
        figures = {
            "first_s": timings[0],
            "again_s": timings[1],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ct_mb": _size_mb(Path(study.path)),
            "results_mb": _size_mb(Path(study.result_dir)),
        }
    if server is not None:
        server.shutdown()
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        print(json.dumps(run_case(sys.argv[2] == "send")))
        return
    print("| case | job s | again s | peak RSS MiB | received CT MB | results MB | results / CT |")
    print("|---|---|---|---|---|---|---|")
    for case in ("no-destination", "send"):
        out = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True)
        f = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| P001, {case} | {f['first_s']:.2f} | {f['again_s']:.2f} | {f['peak_rss_mib']:.0f} | {f['ct_mb']:.1f} "
            f"| {f['results_mb']:.1f} | {f['results_mb'] / f['ct_mb']:.2f} |"
        )


if __name__ == "__main__":
    main()
