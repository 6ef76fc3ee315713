"""REST API over a real SQLite file and the real pipeline: upload, worklist order and filters, viewer, review."""

from __future__ import annotations

import gzip
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ctriage.service.api import create_app
from ctriage.service.db import DONE, INCOMPLETE, Study, utcnow
from ctriage.service.runtime import Service
from ctriage.service.viewer import open_viewer
from tests.service.conftest import logged_in, with_lesions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def service(config, analyze) -> Service:
    """The service, its analysis drawing a lesion on slice 10 (see ``with_lesions``)."""
    return Service.create(config, with_lesions(analyze, {10: 1}))


@pytest.fixture
def client(service: Service) -> TestClient:
    """Logged in as an admin (who may also upload, retry and send)."""
    return logged_in(create_app(service), service.sessions, "dr.house", "admin")


def _upload_series(client: TestClient, folder: Path) -> int:
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(folder.iterdir())]
    files.append(("files", ("notes.txt", b"not dicom", "text/plain")))
    response = client.post("/api/upload", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["ignored"] == ["notes.txt"]
    (study_id,) = response.json()["study_ids"]
    return study_id


def test_upload_analyse_view_and_review(client: TestClient, service: Service, ct_series: Path):
    study_id = _upload_series(client, ct_series)
    assert client.get(f"/api/studies/{study_id}").json()["status"] == "queued"  # no quiet period for uploads
    assert service.worker.run_once()
    detail = client.get(f"/api/studies/{study_id}").json()
    assert detail["status"] == "done" and detail["n_slices"] == 20 and detail["source"] == "upload"
    assert detail["report"]["severity"]["ct_category"] == detail["ct_category"]
    assert "projection.png" in detail["files"]

    with_overlay = client.get(f"/api/studies/{study_id}/slices/10.png?window=lung&overlay=true")
    assert with_overlay.status_code == 200 and with_overlay.content.startswith(PNG_MAGIC)
    soft_tissue = client.get(f"/api/studies/{study_id}/slices/10.png?window=mediastinum&overlay=false")
    assert soft_tissue.content != with_overlay.content
    k = 10  # the service's analysis drew a lesion there (fixture ``service``)
    assert detail["lesion_slices"] == [k] and detail["most_involved_slice"] == k
    # each slice's instance number and position as the PACS viewer shows them (head first: 267 at z -766.5 mm)
    assert [s["instance_number"] for s in detail["slices"]] == list(range(267, 287))
    assert [s["position_mm"] for s in detail["slices"]] == [-766.5 - 2 * z for z in range(20)]

    def picture(window: str, overlay: bool) -> bytes:
        params = {"window": window, "overlay": str(overlay).lower()}
        return client.get(f"/api/studies/{study_id}/slices/{k}.png", params=params).content

    assert picture("lung", True) != picture("lung", False)  # the overlay alone changes the picture
    assert picture("lung", True) != picture("mediastinum", True)  # and the window alone does
    assert client.get(f"/api/studies/{study_id}/slices/20.png").status_code == 404
    assert client.get(f"/api/studies/{study_id}/slices/0.png?window=nope").status_code == 422
    assert client.get(f"/api/studies/{study_id}/files/projection.png").content.startswith(PNG_MAGIC)
    assert client.get(f"/api/studies/{study_id}/files/..%2Fctriage.db").status_code == 404

    assert client.post(f"/api/studies/{study_id}/review", json={"decision": "maybe"}).status_code == 422
    saved = client.post(f"/api/studies/{study_id}/review", json={"decision": "rejected", "comment": "motion",
                                                                 "user": "form-user"},
                        headers={"X-Remote-User": "someone.else"})  # the reviewer is the logged-in user only
    assert saved.status_code == 200
    review = client.get(f"/api/studies/{study_id}").json()["reviews"][0]
    assert (review["decision"], review["comment"], review["user"]) == ("rejected", "motion", "dr.house")
    assert review["created_at"]
    assert client.get("/api/studies").json()[0]["review"]["decision"] == "rejected"


def test_nifti_upload_and_bad_uploads(client: TestClient, service: Service, lesion_mask: Path):
    response = client.post("/api/upload", files=[("files", ("ct.nii.gz", lesion_mask.read_bytes(), "x"))])
    assert response.status_code == 200
    (study_id,) = response.json()["study_ids"]
    assert client.get(f"/api/studies/{study_id}").json()["status"] == "queued"
    assert client.post("/api/upload", files=[("files", ("a.txt", b"hello", "text/plain"))]).status_code == 422


def test_retry_failed_study(client: TestClient, service: Service, ct_series: Path):
    files = sorted(ct_series.iterdir())[:2]
    response = client.post("/api/upload", files=[("files", (p.name, p.read_bytes(), "x")) for p in files])
    study_id = response.json()["study_ids"][0]
    service.worker.run_once()
    failed = client.get(f"/api/studies/{study_id}").json()
    assert failed["status"] == INCOMPLETE and "slices" in failed["error"]
    confirm = {"decision": "confirmed"}
    assert client.post(f"/api/studies/{study_id}/review", json=confirm).status_code == 409
    assert client.post(f"/api/studies/{study_id}/retry").json()["status"] == "queued"
    assert client.post(f"/api/studies/{study_id}/retry").status_code == 409  # already queued
    assert client.post("/api/studies/999/retry").status_code == 404
    assert client.post(f"/api/studies/{study_id}/send").json()["send_status"].startswith("failed: no destination")


def _report(probability: float, positive: bool, max_ratio: float, category: int) -> dict:
    return {"identification": {"probability": probability, "positive": positive, "threshold": 0.5},
            "severity": {"max_ratio": max_ratio, "ct_category": category}}


@pytest.fixture
def worklist(service: Service) -> dict[str, int]:
    """Four analysed studies and one waiting, arriving a minute apart in the order given."""
    rows = {
        "mild-positive": _report(0.9, True, 0.1, 1),
        "severe-negative": _report(0.2, False, 0.8, 4),
        "moderate-positive": _report(0.7, True, 0.4, 2),
        "clear": _report(0.05, False, 0.0, 0),
        "waiting": None,
    }
    start = utcnow() - timedelta(hours=1)
    ids = {}
    with service.sessions.begin() as session:
        for minute, (name, report) in enumerate(rows.items()):
            study = Study(study_uid=name, source="push", path="/x", patient_id=name,
                          received_at=start + timedelta(minutes=minute), status=DONE if report else "receiving",
                          report=report, probability=report and report["identification"]["probability"],
                          ct_category=report and report["severity"]["ct_category"])
            session.add(study)
            session.flush()
            ids[name] = study.id
    return ids


@pytest.mark.parametrize(
    ("policy", "order"),
    [
        ("combined", ["moderate-positive", "mild-positive", "severe-negative", "clear", "waiting"]),
        ("identification", ["mild-positive", "moderate-positive", "severe-negative", "clear", "waiting"]),
        ("severity", ["severe-negative", "moderate-positive", "mild-positive", "clear", "waiting"]),
    ],
)
def test_worklist_follows_the_triage_policy(client: TestClient, worklist, policy: str, order: list[str]):
    rows = client.get("/api/studies", params={"policy": policy}).json()
    assert [r["patient_id"] for r in rows] == order


def test_worklist_filters(client: TestClient, worklist):
    def names(**params):
        return [r["patient_id"] for r in client.get("/api/studies", params=params).json()]

    assert names(status="receiving") == ["waiting"]
    assert names(positive="true") == ["moderate-positive", "mild-positive"]
    assert names(min_category=2) == ["moderate-positive", "severe-negative"]
    assert names(q="SEVERE") == ["severe-negative"]
    assert names(limit=2) == ["moderate-positive", "mild-positive"]
    assert client.get("/api/studies", params={"policy": "alphabetical"}).status_code == 422
    assert client.get("/api/studies", params={"status": "lost"}).status_code == 422


def test_web_pages_are_served(client: TestClient):
    assert "worklist" in client.get("/").text
    assert "study.js" in client.get("/study.html").text
    assert client.get("/api/me").json()["policies"] == ["identification", "severity", "combined"]


def test_ct_volume_as_nifti_on_the_lesion_grid(client: TestClient, service: Service, ct_series: Path):
    """The MPR viewer's CT: the viewer's HU slices as one NIfTI, on the grid and affine of lesions.nii.gz."""
    study_id = _upload_series(client, ct_series)
    assert client.get(f"/api/studies/{study_id}/volume.nii.gz").status_code == 409  # not analysed yet
    assert service.worker.run_once()
    response = client.get(f"/api/studies/{study_id}/volume.nii.gz")
    assert response.status_code == 200
    ct = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    mask = client.get(f"/api/studies/{study_id}/files/lesions.nii.gz").content
    lesions = nib.Nifti1Image.from_bytes(gzip.decompress(mask))
    assert ct.shape == lesions.shape and np.allclose(ct.affine, lesions.affine)
    hu = np.asarray(ct.dataobj)
    with service.sessions() as session:
        viewer = open_viewer(session.get(Study, study_id).result_dir)
    assert hu.dtype == np.int16 and np.array_equal(hu[:, :, 10].T, viewer.slice(10)[0])  # stored (x, y, z)
    labels = np.asarray(lesions.dataobj)
    assert np.flatnonzero(labels.reshape(-1, labels.shape[2]).any(axis=0)).tolist() == [10]  # the drawn lesion
