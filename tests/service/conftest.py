"""Service fixtures: a real CT series with complete UIDs, free ports, per-test data folders."""

from __future__ import annotations

import shutil
import socket
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from ctriage.service.config import ServiceConfig
from tests.conftest import TOTALSEG, require

EXAMPLE_CT = TOTALSEG / "tests" / "reference_files" / "example_ct_dicom"  # 20 slices, 512 x 512, JPEG 2000
TEST_PATIENT = "CTRIAGE-TEST"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example CT with the UIDs its anonymiser blanked filled in (a PACS needs them), dated today."""
    source = require(EXAMPLE_CT)
    folder = tmp_path_factory.mktemp("ct") / "series"
    folder.mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    for index, path in enumerate(sorted(source.iterdir())):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.PatientName = TEST_PATIENT, "Test^Triage"
        ds.StudyDate = ds.SeriesDate = f"{date.today():%Y%m%d}"
        ds.AccessionNumber, ds.StudyID = "ACC001", "1"
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def config(tmp_path: Path) -> ServiceConfig:
    """Settings for one test: its own data folder and ports, no quiet period, fast polling."""
    return ServiceConfig(
        data_dir=tmp_path / "data", dicom_host="127.0.0.1", dicom_port=free_port(), http_port=free_port(),
        quiet_period_s=0.0, poll_interval_s=0.1,
    )


def copy_series(series: Path, target: Path) -> Path:
    """A private copy of a series folder (tests that damage or move files use it)."""
    shutil.copytree(series, target)
    return target
