"""Service fixtures: a real CT series with complete UIDs, free ports, per-test data folders."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ctriage.service.config import ServiceConfig
from ctriage.testing.servers import free_port
from tests.conftest import TOTALSEG, require

EXAMPLE_CT = TOTALSEG / "tests" / "reference_files" / "example_ct_dicom"  # 20 slices, 512 x 512, JPEG 2000
TEST_PATIENT = "CTRIAGE-TEST"


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
        ds.PatientSex, ds.PatientBirthDate = "F", f"{date.today().year - 64}0101"  # 64 years old
        ds.save_as(folder / f"{index:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def config(tmp_path: Path) -> ServiceConfig:
    """Settings for one test: its own data folder and ports, no quiet period, fast polling."""
    return ServiceConfig(
        data_dir=tmp_path / "data", dicom_host="127.0.0.1", dicom_port=free_port(), http_port=free_port(),
        quiet_period_s=0.0, poll_interval_s=0.1,
    )


@pytest.fixture(scope="session")
def lesion_mask(ct_series: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed GGO / consolidation label NIfTI on the example CT's grid (the pipeline clips it to the lungs)."""
    from ctriage.io import load_volume
    from ctriage.io.nifti import save_nifti

    volume = load_volume(ct_series)
    labels = np.zeros(volume.shape, np.uint8)
    labels[:, 150:350, 60:250] = 1
    labels[:, 250:350, 300:450] = 2
    return save_nifti(labels, volume.affine, tmp_path_factory.mktemp("mask") / "lesions.nii.gz")


@pytest.fixture
def analyze(lesion_mask: Path):
    """The real pipeline with a given lesion mask in place of the lesion model (deterministic, model-free)."""
    from ctriage.pipeline import analyze_path

    def run(path: Path, progress=None):
        return analyze_path(path, lesion_mask=lesion_mask, progress=progress)

    return run


def with_lesions(analyze, blocks: dict[int, int]):
    """``analyze`` with a square lesion of label ``blocks[z]`` drawn on each slice z after the analysis (the
    example CT holds no lung, so the pipeline finds no lesion there): what the viewer shows comes from it."""

    def run(path: Path, progress=None):
        result = analyze(path, progress=progress)
        for z, label in blocks.items():
            size = 200 if label == 1 else 20
            result.lesions.mask[z, 100:100 + size, 100:100 + size] = label
        return result

    return run


def store_series(store, folder: Path, files: list[Path] | None = None, source: str = "push") -> str:
    """Store the files of a series as the listener would; returns the StudyInstanceUID."""
    study_uid = ""
    for path in files or sorted(folder.iterdir()):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        store.add_instance(path.read_bytes(), header, "SCANNER1", source)
        study_uid = str(header.StudyInstanceUID)
    return study_uid


def audit_lines(sessions, at_least: int, timeout_s: float = 30.0) -> list[tuple[str, str, str, str]]:
    """(action, user, host, detail) of the audit trail, once it holds ``at_least`` lines: the listener writes an
    association's line from its own thread when the association ends, which may be just after the peer returned."""
    from sqlalchemy import select

    from ctriage.service.db import AuditEvent

    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            lines = [(e.action, e.user, e.host, e.detail) for e in session.scalars(select(AuditEvent))]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


PASSWORD = "correct horse battery"  # test users' password


def logged_in(app, sessions, username: str, role: str, sites: str | None = None):
    """A TestClient over HTTPS (the session cookie is Secure) logged in as a new user (seeing ``sites`` only, if
    given), sending its CSRF token."""
    from fastapi.testclient import TestClient

    from ctriage.service.auth import add_user

    add_user(sessions, username, PASSWORD, role, sites)
    client = TestClient(app, base_url="https://testserver")
    assert client.post("/api/login", json={"username": username, "password": PASSWORD}).status_code == 200
    client.headers["X-CSRF-Token"] = client.get("/api/me").json()["csrf_token"]
    return client
