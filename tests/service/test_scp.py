"""The DICOM listener over real TCP: C-ECHO, C-STORE written to disk before the ack, access control (AE title and
host allow-list, loopback only by default, called AE title, CT storage only, disk-space guard), audit lines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage, Verification
from sqlalchemy import select

from ctriage.service.db import RECEIVING, Study, open_db
from ctriage.service.scp import Listener, start_listener
from ctriage.service.store import StudyStore, safe_name
from tests.service.conftest import audit_lines


def _start(config):
    config.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_db(config.db_url)
    return start_listener(config, StudyStore(config.studies_dir, sessions)), sessions


@pytest.fixture
def listener(config):
    """A running listener that only accepts the calling AE title SCANNER1 from 127.0.0.1."""
    config = replace(config, allowed_peers=("SCANNER1@127.0.0.1",))
    server, sessions = _start(config)
    yield config, sessions
    server.shutdown()


def _associate(config, calling: str, contexts, called: str | None = None, source: str = "127.0.0.1"):
    ae = AE(ae_title=calling)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae.associate("127.0.0.1", config.dicom_port, ae_title=called or config.ae_title, bind_address=(source, 0))


def test_echo_and_allow_list_of_ae_title_and_host(listener):
    config, sessions = listener
    assoc = _associate(config, "SCANNER1", [(Verification, None)])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert _associate(config, "INTRUDER", [(Verification, None)]).is_rejected
    assert _associate(config, "SCANNER1", [(Verification, None)], source="127.0.0.2").is_rejected  # other host
    assert _associate(config, "SCANNER1", [(Verification, None)], called="SOMEONE").is_rejected  # not our AE
    assert set(audit_lines(sessions, 3)) == {  # the association's line is written when it ends, in any order
        ("dicom-association", "SCANNER1", "127.0.0.1", "0 instances stored, released"),
        ("dicom-refused", "INTRUDER", "127.0.0.1", "INTRUDER@127.0.0.1 is not in allowed_peers"),
        ("dicom-refused", "SCANNER1", "127.0.0.2", "SCANNER1@127.0.0.2 is not in allowed_peers"),
    }


def test_by_default_only_this_machine_may_connect(config):
    assert config.allowed_peers == ()
    server, _sessions = _start(config)
    try:
        assoc = _associate(config, "ANY", [(Verification, None)], source="127.0.0.3")
        assert assoc.is_established
        assoc.release()
    finally:
        server.shutdown()
    refusal = Listener(config, StudyStore(config.studies_dir, _sessions)).refusal("PACS1", "10.0.0.5")
    assert refusal == "PACS1@10.0.0.5: allowed_peers is empty, so only this machine may connect"
    named = Listener(replace(config, allowed_peers=("PACS1@localhost", "CT1@10.1.2.0/24")), None)
    assert named.refusal("PACS1", "127.0.0.1") == "" and named.refusal("CT1", "10.1.2.77") == ""
    assert named.refusal("CT1", "::ffff:10.1.2.77") == "" and named.refusal("CT1", "10.1.3.1") != ""


def test_only_ct_image_storage_is_accepted(listener):
    config, _ = listener
    assoc = _associate(config, "SCANNER1", [(CTImageStorage, None), (SecondaryCaptureImageStorage, None)])
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == [CTImageStorage]
    assoc.release()


def test_new_associations_are_refused_before_the_disk_fills(config):
    server, sessions = _start(replace(config, min_free_disk_mb=1e12))
    try:
        assert _associate(config, "SCANNER1", [(Verification, None)]).is_rejected
    finally:
        server.shutdown()
    ((action, _user, _host, detail),) = audit_lines(sessions, 1)
    assert action == "dicom-refused" and "MB free on the data disk (min_free_disk_mb = 1000000000000.0)" in detail


def test_each_instance_is_on_disk_when_acknowledged(listener, ct_series: Path):
    config, sessions = listener
    files = sorted(ct_series.iterdir())
    syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assoc = _associate(config, "SCANNER1", [(CTImageStorage, [syntax])])
    assert assoc.is_established
    for path in files:
        ds = pydicom.dcmread(path)
        assert assoc.send_c_store(ds).Status == 0x0000
        stored = (config.studies_dir / safe_name(ds.StudyInstanceUID) / safe_name(ds.SeriesInstanceUID)
                  / f"{safe_name(ds.SOPInstanceUID)}.dcm")
        assert stored.is_file()
        assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID
    assert assoc.send_c_store(pydicom.dcmread(files[0])).Status == 0x0000  # a re-sent duplicate
    assoc.release()
    association = ("dicom-association", "SCANNER1", "127.0.0.1", "21 instances stored, released")
    assert audit_lines(sessions, 1)[-1] == association
    with sessions() as session:
        (study,) = session.scalars(select(Study)).all()
    assert (study.status, study.n_instances, study.source, study.calling_ae) == (RECEIVING, 20, "push", "SCANNER1")
    assert study.patient_id == "CTRIAGE-TEST" and Path(study.path).is_dir()
