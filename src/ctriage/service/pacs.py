"""ctriage as a DICOM client: C-FIND new CT studies, retrieve them (C-MOVE or C-GET), C-STORE results."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select

from ctriage.service import tls
from ctriage.service.config import DicomNode, ServiceConfig
from ctriage.service.db import Study
from ctriage.service.scp import handle_store
from ctriage.service.store import StudyStore

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
RETRIEVE_OK = (0x0000, 0xB000)  # success, or warning (e.g. a non-CT instance of the study was not wanted)


class DicomNetworkError(RuntimeError):
    """A peer could not be reached or refused an operation; the message says which and why."""


@dataclass(frozen=True)
class FoundStudy:
    """One C-FIND match at STUDY level."""

    study_uid: str
    patient_id: str
    study_date: str
    description: str


def _associate(config: ServiceConfig, ae: AE, node: DicomNode, **kwargs: Any) -> Association:
    """Open an association with ``node`` (over TLS with ``tls_outgoing``); raise DicomNetworkError if refused."""
    assoc = ae.associate(
        node.host, node.port, ae_title=node.ae_title, tls_args=tls.client_args(config, node), **kwargs
    )
    if not assoc.is_established:
        raise DicomNetworkError(f"cannot open an association with {node}")
    return assoc


def _find(config: ServiceConfig, query: Dataset) -> list[Dataset]:
    """C-FIND (study root) ``query`` on the configured PACS; returns the matching identifiers."""
    if config.pacs is None:
        raise DicomNetworkError("no PACS configured (setting 'pacs')")
    ae = AE(ae_title=config.ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(config, ae, config.pacs)
    found: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                raise DicomNetworkError(f"C-FIND to {config.pacs}: no response")
            if status.Status in PENDING and identifier is not None:
                found.append(identifier)
            elif status.Status not in PENDING and status.Status != 0x0000:
                raise DicomNetworkError(f"C-FIND to {config.pacs} failed with status 0x{status.Status:04X}")
    finally:
        assoc.release()
    return found


def find_ct_studies(config: ServiceConfig, since: date) -> list[FoundStudy]:
    """C-FIND (study root, STUDY level) the PACS for CT studies dated ``since`` or later."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.StudyDate = f"{since:%Y%m%d}-"
    query.ModalitiesInStudy = "CT"
    query.PatientID = ""
    query.StudyDescription = ""
    return [
        FoundStudy(
            str(identifier.StudyInstanceUID),
            str(identifier.get("PatientID", "")),
            str(identifier.get("StudyDate", "")),
            str(identifier.get("StudyDescription", "")),
        )
        for identifier in _find(config, query)
        if identifier.get("StudyInstanceUID")
    ]


def ct_series_counts(config: ServiceConfig, study_uid: str) -> dict[str, int]:
    """C-FIND (SERIES level) the CT series of a study: SeriesInstanceUID -> NumberOfSeriesRelatedInstances
    (series whose count the PACS does not give are left out)."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.Modality = "CT"
    query.NumberOfSeriesRelatedInstances = None
    counts = {}
    for identifier in _find(config, query):
        uid, count = identifier.get("SeriesInstanceUID"), identifier.get("NumberOfSeriesRelatedInstances")
        if uid and count not in (None, ""):
            counts[str(uid)] = int(count)
    return counts


def _retrieve_identifier(study_uid: str, series_uid: str = "") -> Dataset:
    """C-MOVE / C-GET identifier of a whole study, or of one of its series."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES" if series_uid else "STUDY"
    ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    return ds


def _check_retrieve(responses: object, what: str) -> None:
    """Consume C-MOVE / C-GET responses; raise unless the final status is success or warning."""
    final = None
    for status, _identifier in responses:  # type: ignore[attr-defined]
        if status is None or "Status" not in status:
            raise DicomNetworkError(f"{what}: no response")
        if status.Status not in PENDING:
            final = status
    if final is None or final.Status not in RETRIEVE_OK:
        code = "none" if final is None else f"0x{final.Status:04X}"
        raise DicomNetworkError(f"{what} failed with status {code}")


def retrieve_study(
    config: ServiceConfig, store: StudyStore, study_uid: str, series: dict[str, int] | None = None
) -> None:
    """Fetch from the PACS the given CT ``series`` of a study (SeriesInstanceUID -> the PACS's instance count), or
    the whole study when None: C-MOVE to our own listener, or C-GET on the same association. The PACS's instance
    count of each CT series is kept, so that a series not received whole is analysed as incomplete."""
    if config.pacs is None:
        raise DicomNetworkError("no PACS configured (setting 'pacs')")
    expected = ct_series_counts(config, study_uid) if series is None else series
    identifiers = [_retrieve_identifier(study_uid)] if series is None else [
        _retrieve_identifier(study_uid, uid) for uid in series
    ]
    ae = AE(ae_title=config.ae_title)
    if config.retrieve_method == "move":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = _associate(config, ae, config.pacs)
        try:
            for identifier in identifiers:
                _check_retrieve(
                    assoc.send_c_move(identifier, config.ae_title, StudyRootQueryRetrieveInformationModelMove),
                    f"C-MOVE of {study_uid} from {config.pacs} to {config.ae_title}",
                )
        finally:
            assoc.release()
    else:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        storage = (CTImageStorage, EnhancedCTImageStorage)
        for sop_class in storage:  # one context per transfer syntax, so the PACS can send files as stored
            for syntax in ALL_TRANSFER_SYNTAXES:
                ae.add_requested_context(sop_class, [syntax])
        assoc = _associate(
            config,
            ae,
            config.pacs,
            ext_neg=[build_role(c, scp_role=True) for c in storage],
            evt_handlers=[(evt.EVT_C_STORE, handle_store, [store, "pull"])],
        )
        try:
            for identifier in identifiers:
                _check_retrieve(
                    assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet),
                    f"C-GET of {study_uid} from {config.pacs}",
                )
        finally:
            assoc.release()
    store.expect_instances(study_uid, expected)
    store.queue_now(study_uid, source="pull")


def pull_new_studies(config: ServiceConfig, store: StudyStore, today: date | None = None) -> list[str]:
    """Query the PACS for CT studies dated within the last ``pull_days`` days and retrieve what is new in them:
    CT series of which ctriage holds fewer instances than the PACS (new studies, late or added series); returns
    the UIDs of the studies retrieved. Studies and series already held whole are not fetched again."""
    since = (today or date.today()) - timedelta(days=config.pull_days - 1)
    with store.sessions() as session:
        known = set(session.scalars(select(Study.study_uid)))
    fetched = []
    for study in find_ct_studies(config, since):
        counts = ct_series_counts(config, study.study_uid)
        new = {uid: n for uid, n in counts.items() if store.held_instances(study.study_uid, uid) < n}
        if study.study_uid in known and not new:
            continue
        log.info(
            "retrieving %s of study %s (patient %s, %s)",
            f"{len(new)} series" if new else "all", study.study_uid, study.patient_id, study.study_date,
        )
        retrieve_study(config, store, study.study_uid, new or None)
        fetched.append(study.study_uid)
    return fetched


def send_datasets(config: ServiceConfig, node: DicomNode, datasets: list[Dataset]) -> None:
    """C-STORE ``datasets`` to ``node`` on one association; raise DicomNetworkError unless all succeed."""
    ae = AE(ae_title=config.ae_title)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = _associate(config, ae, node)
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status is None or "Status" not in status:
                raise DicomNetworkError(f"C-STORE to {node}: no response")
            if status.Status not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise DicomNetworkError(
                    f"C-STORE of {ds.SOPClassUID.name} to {node}: status 0x{status.Status:04X}"
                )
    finally:
        assoc.release()
