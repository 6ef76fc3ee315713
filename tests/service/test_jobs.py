"""Analysis jobs over the real pipeline and a real SQLite file: results, failures with reasons, restarts, sending.

The worker is driven with ``run_once`` (no threads, no sleeps), so nothing here depends on timing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import select

from ctriage.service.config import DicomNode
from ctriage.service.db import DONE, FAILED, INCOMPLETE, QUEUED, RECEIVING, RUNNING, Study, claim_next, requeue
from ctriage.service.runtime import Service
from tests.service.conftest import free_port, store_series


def _study(service: Service) -> Study:
    with service.sessions() as session:
        (study,) = session.scalars(select(Study)).all()
        return study


def test_received_study_is_analysed_with_all_outputs(config, ct_series: Path, analyze):
    service = Service.create(config, analyze)
    store_series(service.store, ct_series)
    assert service.worker.run_once()
    study = _study(service)
    assert study.status == DONE, study.error
    assert study.report["study"]["patient_id"] == "CTRIAGE-TEST"
    assert study.ct_category == study.report["severity"]["ct_category"]
    direct = analyze(ct_series)  # the same analysis outside the service: the job must store its figures
    assert study.ct_category == direct.severity.ct_category
    assert study.max_ratio == pytest.approx(direct.severity.max_ratio)
    assert study.probability == pytest.approx(direct.identification.probability)
    result_dir = Path(study.result_dir)
    for name in ("report.json", "projection.png", "lungs.nii.gz", "lesions.nii.gz", "viewer.zip"):
        assert (result_dir / name).is_file(), name
    assert not (result_dir / "dicom").exists()  # no destination: no DICOM results are built
    assert not service.worker.run_once()  # nothing left


def test_too_few_slices_is_incomplete_keeps_the_files_and_recovers(config, ct_series: Path, analyze):
    service = Service.create(config, analyze)
    files = sorted(ct_series.iterdir())
    store_series(service.store, ct_series, files[:3])
    service.worker.run_once()
    study = _study(service)
    assert study.status == INCOMPLETE and "slices" in study.error  # too few slices for a volume
    assert len(list(Path(study.path).rglob("*.dcm"))) == 3  # nothing received is deleted
    assert requeue(service.sessions, study.id)
    service.worker.run_once()
    assert (_study(service).status, _study(service).attempts) == (INCOMPLETE, 2)
    store_series(service.store, ct_series, files[3:])  # the rest of the series arrives late
    assert _study(service).status == RECEIVING
    service.worker.run_once()
    assert _study(service).status == DONE and _study(service).error == ""


def test_internal_errors_become_failed_jobs_with_the_reason(config, ct_series: Path):
    def broken(path: Path, progress=None):
        raise MemoryError("out of memory in the lesion model")

    service = Service.create(config, broken)
    store_series(service.store, ct_series)
    service.worker.run_once()
    study = _study(service)
    assert study.status == FAILED
    assert study.error == "internal error: MemoryError: out of memory in the lesion model"


def test_restart_finishes_interrupted_and_waiting_studies(config, ct_series: Path, analyze):
    before = Service.create(replace(config, quiet_period_s=3600), analyze)
    store_series(before.store, ct_series)
    before.store.queue_now(_study(before).study_uid)
    assert claim_next(before.sessions).status == RUNNING  # the process dies while analysing
    before.sessions.kw["bind"].dispose()

    after = Service.create(config, analyze)
    after.start(listen=False, work=False)
    assert _study(after).status == QUEUED
    after.worker.run_once()
    assert _study(after).status == DONE


def test_instances_arriving_during_a_refused_analysis_cause_a_new_analysis(config, ct_series: Path, analyze):
    """A partial series refused as incomplete (too few slices) while the rest arrives is analysed again, not left
    incomplete (a race seen with PACS pulls: the rest was stored while the first files were being analysed)."""
    files = sorted(ct_series.iterdir())
    holder: dict[str, Service] = {}

    def refused_while_receiving(path: Path, progress=None):
        try:
            return analyze(path, progress)  # three slices: refused as incomplete
        finally:
            store_series(holder["service"].store, ct_series, files[3:])  # meanwhile the rest was stored

    service = holder["service"] = Service.create(config, refused_while_receiving)
    store_series(service.store, ct_series, files[:3])
    service.worker.run_once()
    study = _study(service)
    assert study.status == RECEIVING and "slices" in study.error and study.n_instances == 20


def test_instances_arriving_during_analysis_cause_a_new_analysis(config, ct_series: Path, analyze):
    files = sorted(ct_series.iterdir())
    holder: dict[str, Service] = {}

    def analyse_while_receiving(path: Path, progress=None):
        store_series(holder["service"].store, ct_series, files[-1:])
        return analyze(path, progress)

    service = holder["service"] = Service.create(config, analyse_while_receiving)
    store_series(service.store, ct_series, files[:-1])
    service.worker.run_once()
    assert _study(service).status == RECEIVING and _study(service).n_instances == 20


@pytest.fixture
def archive(config):
    """A plain pynetdicom storage SCP standing in for the results destination; collects what it receives."""
    received: list[pydicom.Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="ARCHIVE")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield DicomNode("ARCHIVE", "127.0.0.1", port), received
    server.shutdown()


def test_results_are_sent_to_the_destination_and_replaced_by_a_reanalysis(config, ct_series: Path, analyze,
                                                                          archive):
    node, received = archive
    service = Service.create(replace(config, destination=node), analyze)
    store_series(service.store, ct_series)
    service.worker.run_once()
    study = _study(service)
    assert study.send_status.startswith("sent 3 objects to ARCHIVE@127.0.0.1"), study.send_status
    assert sorted(ds.Modality for ds in received) == ["OT", "SEG", "SR"]
    assert {ds.StudyInstanceUID for ds in received} == {study.study_uid}
    assert {ds.InstanceNumber for ds in received} == {1}

    assert requeue(service.sessions, study.id)  # analysed again: the new objects replace the ones sent
    service.worker.run_once()
    first, second = {ds.Modality: ds for ds in received[:3]}, {ds.Modality: ds for ds in received[3:]}
    assert _study(service).send_status.startswith("sent 4 objects"), _study(service).send_status
    for modality in ("SEG", "SR", "OT"):
        assert second[modality].SeriesInstanceUID == first[modality].SeriesInstanceUID, modality
        assert second[modality].SOPInstanceUID != first[modality].SOPInstanceUID
        assert second[modality].InstanceNumber == 2
    (predecessor,) = second["SR"].PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        first["SR"].SOPInstanceUID)
    note = second["KO"]  # IHE IOCM rejection note for everything the re-analysis superseded
    assert note.StudyInstanceUID == study.study_uid and note.InstanceNumber == 1
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    rejected = {ref.ReferencedSOPInstanceUID for series in note.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert rejected == {first[m].SOPInstanceUID for m in ("SEG", "SR", "OT")}

    assert requeue(service.sessions, study.id)  # a third analysis: its note goes into the same series
    service.worker.run_once()
    third = {ds.Modality: ds for ds in received[7:]}
    assert third["KO"].SeriesInstanceUID == note.SeriesInstanceUID and third["KO"].InstanceNumber == 2
    assert {ref.ReferencedSOPInstanceUID for series in third["KO"].CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence for ref in series.ReferencedSOPSequence} == {
        second[m].SOPInstanceUID for m in ("SEG", "SR", "OT")}


def test_unreachable_destination_is_recorded(config, ct_series: Path, analyze):
    service = Service.create(replace(config, destination=DicomNode("NOBODY", "127.0.0.1", free_port())), analyze)
    store_series(service.store, ct_series)
    service.worker.run_once()
    study = _study(service)
    assert study.status == DONE and study.send_status.startswith("failed: cannot open an association")


def test_dicom_output_problem_keeps_the_analysis(config, ct_series: Path, analyze):
    def analyse_with_bad_slice_list(path: Path, progress=None):
        result = analyze(path, progress)
        result.volume.slice_files = result.volume.slice_files[:-1]
        return result

    nobody = DicomNode("NOBODY", "127.0.0.1", free_port())  # DICOM results are built only with a destination
    service = Service.create(replace(config, destination=nobody), analyse_with_bad_slice_list)
    store_series(service.store, ct_series)
    service.worker.run_once()
    study = _study(service)
    assert study.status == DONE and study.report is not None
    assert study.send_status.startswith("failed: cannot build DICOM results: ValueError")
