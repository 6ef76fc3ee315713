"""The DICOM listener over real TCP: C-ECHO, C-STORE written to disk before the ack, calling AE allow-list."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from ctriage.service.db import RECEIVING, Study, open_db
from ctriage.service.scp import start_listener
from ctriage.service.store import StudyStore, safe_name


@pytest.fixture
def listener(config):
    """A running listener that only accepts the calling AE title SCANNER1."""
    config = replace(config, allowed_calling_aets=("SCANNER1",))
    config.data_dir.mkdir(parents=True)
    sessions = open_db(config.db_url)
    server = start_listener(config, StudyStore(config.studies_dir, sessions))
    yield config, sessions
    server.shutdown()


def _associate(config, calling: str, contexts):
    ae = AE(ae_title=calling)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae.associate("127.0.0.1", config.dicom_port, ae_title=config.ae_title)


def test_echo_and_allow_list(listener):
    config, _ = listener
    assoc = _associate(config, "SCANNER1", [(Verification, None)])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    stranger = _associate(config, "INTRUDER", [(Verification, None)])
    assert stranger.is_rejected


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
    with sessions() as session:
        (study,) = session.scalars(select(Study)).all()
    assert (study.status, study.n_instances, study.source, study.calling_ae) == (RECEIVING, 20, "push", "SCANNER1")
    assert study.patient_id == "CTRIAGE-TEST" and Path(study.path).is_dir()
