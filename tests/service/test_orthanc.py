"""Integration with a real PACS (Orthanc) and the real `ctriage serve` process.

Orthanc cannot be told to listen on loopback only, so each test re-runs itself in a fresh network namespace
(``unshare --net``, only ``lo`` up) where Orthanc, `ctriage serve` and the test client talk over 127.0.0.1.

- push: the CT is stored in Orthanc, Orthanc C-STOREs it to ctriage, ctriage analyses it after the quiet period
  and C-STOREs SEG, SR and a secondary capture back; the test finds them in Orthanc's copy of the study; a
  re-analysis sends new versions into the same three series;
- pull: ctriage C-FINDs Orthanc for recent CT studies and retrieves the new one (C-MOVE to its own listener or
  C-GET), on POST /api/pull or by itself every pull_interval_s, analyses it and sends the results back; a study
  dated days ago is pulled, one older than pull_days is not, and a series that grows on the PACS is pulled again
  (only then);
- a partial series: the upper half of P001 is pushed alone and reads as incomplete (lungs cut), nothing is sent;
  the rest arrives, the study is analysed again, the first result is superseded and SEG / SR / SC are sent.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import P001_DICOM, require
from tests.service.conftest import PASSWORD, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ORTHANC = shutil.which("Orthanc")
IN_NETNS = os.environ.get("CTRIAGE_TEST_NETNS") == "1"
ANALYSIS_TIMEOUT_S = 600.0  # a generous bound on a 20-slice study on a busy 2-core machine; never a sleep
UNSHARE_VARIANTS = (["unshare", "--net"], ["unshare", "--net", "--map-root-user"])


def _unshare_prefix() -> list[str] | None:
    """The first ``unshare`` invocation this machine allows (root, or unprivileged user namespaces)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for prefix in UNSHARE_VARIANTS:
        probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def run_in_network_namespace(request: pytest.FixtureRequest) -> None:
    """Run this very test again in a private network namespace and fail with its output if it fails there."""
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it)")
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("cannot create a network namespace (needs util-linux unshare, iproute2 ip, and root or userns)")
    basetemp = request.getfixturevalue("tmp_path") / "netns"  # Orthanc and ctriage logs end up here
    command = [*prefix, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m", "pytest",
               "-q", "-p", "no:cacheprovider", "-x", f"--basetemp={basetemp}", request.node.nodeid]
    env = {**os.environ, "CTRIAGE_TEST_NETNS": "1"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=ANALYSIS_TIMEOUT_S + 300)
    assert proc.returncode == 0, f"in the network namespace:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM port, REST base URL and HTTP client."""

    dicom_port: int
    http: httpx.Client

    def upload(self, folder: Path) -> str:
        """Store every file of ``folder`` through the REST API; returns Orthanc's study id."""
        study_id = ""
        for path in sorted(folder.iterdir()):
            response = self.http.post("/instances", content=path.read_bytes())
            response.raise_for_status()
            study_id = response.json()["ParentStudy"]
        return study_id

    def instances_by_position(self, study_id: str) -> list[str]:
        """Orthanc ids of the study's instances, head first (by ImagePositionPatient z, descending)."""
        instances = self.http.get(f"/studies/{study_id}/instances").json()

        def z_mm(instance: dict) -> float:
            tags = self.http.get(f"/instances/{instance['ID']}/simplified-tags").json()
            return float(tags["ImagePositionPatient"].split("\\")[2])

        return [i["ID"] for i in sorted(instances, key=z_mm, reverse=True)]

    def push(self, resources: list[str]) -> None:
        """C-STORE the given studies / instances to ctriage, synchronously."""
        response = self.http.post("/modalities/ctriage/store", json={"Resources": resources, "Synchronous": True})
        assert response.status_code == 200, response.text

    def modalities_in(self, study_uid: str) -> dict[str, list[str]]:
        """Modality -> SOP instance UIDs of the instances Orthanc holds for ``study_uid``."""
        found = self.http.post("/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid},
                                                     "Expand": True}).json()
        out: dict[str, list[str]] = {}
        for instance in found:
            tags = self.http.get(f"/instances/{instance['ID']}/simplified-tags").json()
            out.setdefault(tags.get("Modality", ""), []).append(tags["SOPInstanceUID"])
        return out


def _wait(check, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll ``check()`` until it returns a truthy value; fail after ``timeout_s`` saying ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _reachable(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def ports() -> dict[str, int]:
    return {"orthanc_dicom": free_port(), "orthanc_http": free_port(), "ctriage_dicom": free_port(),
            "ctriage_http": free_port()}


@pytest.fixture
def orthanc(tmp_path: Path, ports: dict[str, int]) -> Iterator[Orthanc]:
    """Orthanc with its own storage, knowing ctriage as modality 'ctriage' (for C-STORE and C-MOVE)."""
    storage = tmp_path / "orthanc"
    storage.mkdir()
    config = {
        "Name": "ctriage-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "DicomAet": "ORTHANC", "DicomPort": ports["orthanc_dicom"], "HttpPort": ports["orthanc_http"],
        "Plugins": [], "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False, "DicomModalities": {
            "ctriage": ["CTRIAGE", "127.0.0.1", ports["ctriage_dicom"]]},
        "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True, "DicomAlwaysAllowStore": True,
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "w")
    process = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{ports['orthanc_http']}", timeout=60)
    try:
        _wait(lambda: process.poll() is not None or _reachable(client, "/system"), 60, "Orthanc to start")
        assert process.poll() is None, (tmp_path / "orthanc.log").read_text()[-3000:]
        yield Orthanc(ports["orthanc_dicom"], client)
    finally:
        client.close()
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture
def serve_ctriage(tmp_path: Path, ports: dict[str, int]):
    """Start the real `ctriage serve` with settings written to a TOML file and a first admin created with
    `ctriage users add`, as an admin would; returns an HTTP client logged in as that admin (plain HTTP on
    loopback here, so the session cookie is not marked Secure)."""
    processes = []

    def start(**settings) -> httpx.Client:
        config = {"data_dir": str(tmp_path / "ctriage-data"), "ae_title": "CTRIAGE", "dicom_host": "127.0.0.1",
                  "dicom_port": ports["ctriage_dicom"], "http_port": ports["ctriage_http"],
                  "quiet_period_s": 2.0, "allowed_peers": ["ORTHANC@127.0.0.1"], "secure_cookies": False,
                  "destination": f"ORTHANC@127.0.0.1:{ports['orthanc_dicom']}", **settings}
        lines = [f"{key} = {json.dumps(value)}" for key, value in config.items()]
        (tmp_path / "ctriage.toml").write_text("[service]\n" + "\n".join(lines) + "\n")
        command = [sys.executable, "-c", "from ctriage.cli import app; app()"]
        subprocess.run([*command, "users", "add", "pacs.admin", "--role", "admin", "--password-stdin", "--config",
                        str(tmp_path / "ctriage.toml")], input=f"{PASSWORD}\n", text=True, check=True, cwd=tmp_path)
        log = open(tmp_path / "ctriage.log", "w")
        process = subprocess.Popen(
            [*command, "serve", "--config", str(tmp_path / "ctriage.toml")], stdout=log, stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        processes.append((process, log))
        client = httpx.Client(base_url=f"http://127.0.0.1:{ports['ctriage_http']}", timeout=60)
        _wait(lambda: process.poll() is not None or _reachable(client, "/api/health"), 120, "ctriage serve")
        assert process.poll() is None, (tmp_path / "ctriage.log").read_text()[-3000:]
        assert client.post("/api/login", json={"username": "pacs.admin", "password": PASSWORD}).status_code == 200
        client.headers["X-CSRF-Token"] = client.get("/api/me").json()["csrf_token"]
        return client

    yield start
    for process, log in processes:
        process.terminate()
        process.wait(60)
        log.close()


def _analysed(ctriage: httpx.Client, study_uid: str, log: Path, status: str = "done", attempts: int = 1) -> dict:
    """Wait until ctriage finished (or failed) the study's ``attempts``-th analysis and sent its results; fail with
    the reason unless it ended in ``status``."""

    def finished():
        rows = [s for s in ctriage.get("/api/studies").json() if s["study_uid"] == study_uid]
        ready = (
            rows
            and rows[0]["status"] in ("done", "incomplete", "failed")
            and rows[0]["attempts"] >= attempts
            and rows[0]["send_status"] != "sending"
        )
        return rows[0] if ready else None

    row = _wait(finished, ANALYSIS_TIMEOUT_S, f"the analysis of {study_uid}")
    assert row["status"] == status, f"{row['error']}\n{log.read_text()[-3000:]}"
    return row


def _results_in_pacs(orthanc: Orthanc, ctriage: httpx.Client, row: dict, ct_series: Path) -> None:
    """SEG, SR and the secondary capture arrived in Orthanc, in the CT's study, referencing its series."""
    assert row["send_status"].startswith("sent 3 objects"), row["send_status"]
    held = orthanc.modalities_in(row["study_uid"])
    assert len(held["CT"]) == 20 and len(held["SEG"]) == 1 and len(held["SR"]) == 1 and len(held["OT"]) == 1
    seg_id = orthanc.http.post("/tools/lookup", content=held["SEG"][0]).json()[0]["ID"]
    seg = pydicom.dcmread(io.BytesIO(orthanc.http.get(f"/instances/{seg_id}/file").content))
    ct_series_uid = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_series_uid
    assert seg.NumberOfFrames == 20 * 4  # every slice, four segments
    detail = ctriage.get(f"/api/studies/{row['id']}").json()
    assert detail["report"]["severity"]["ct_category"] in range(5)


@pytest.mark.slow
def test_push_from_pacs_analysis_and_results_back(request, ct_series: Path, tmp_path: Path):
    if not IN_NETNS:
        run_in_network_namespace(request)
        return
    orthanc = request.getfixturevalue("orthanc")
    ctriage = request.getfixturevalue("serve_ctriage")()
    orthanc_study = orthanc.upload(ct_series)
    response = orthanc.http.post("/modalities/ctriage/store",
                                 json={"Resources": [orthanc_study], "Synchronous": True})
    assert response.status_code == 200, response.text
    study_uid = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True).StudyInstanceUID
    row = _analysed(ctriage, study_uid, tmp_path / "ctriage.log")
    assert row["source"] == "push" and row["n_instances"] == 20
    _results_in_pacs(orthanc, ctriage, row, ct_series)

    assert ctriage.post(f"/api/studies/{row['id']}/retry").status_code == 200  # a re-analysis replaces them
    row = _analysed(ctriage, study_uid, tmp_path / "ctriage.log", attempts=2)
    assert row["send_status"].startswith("sent 4 objects"), row["send_status"]
    series = orthanc.http.post("/tools/find", json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid},
                                                    "Expand": True}).json()
    by_modality = {s["MainDicomTags"]["Modality"]: len(s["Instances"]) for s in series}
    # each result series holds both versions; an IOCM rejection note lists the three superseded ones
    assert by_modality == {"CT": 20, "SEG": 2, "SR": 2, "OT": 2, "KO": 1}
    (note_series,) = [s for s in series if s["MainDicomTags"]["Modality"] == "KO"]
    note = orthanc.http.get(f"/instances/{note_series['Instances'][0]}/file").content
    note = pydicom.dcmread(io.BytesIO(note))
    rejected = {ref.ReferencedSOPInstanceUID for item in note.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence for ref in item.ReferencedSOPSequence}
    results = [orthanc.http.get(f"/instances/{i}/simplified-tags").json() for s in series
               if s["MainDicomTags"]["Modality"] in ("SEG", "SR", "OT") for i in s["Instances"]]
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    assert rejected == {r["SOPInstanceUID"] for r in results if r["InstanceNumber"] == "1"}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "trigger"), [("move", "api"), ("get", "api"), ("move", "periodic")])
def test_pull_new_ct_studies_from_pacs(request, method: str, trigger: str, ct_series: Path, tmp_path: Path):
    if not IN_NETNS:
        run_in_network_namespace(request)
        return
    orthanc = request.getfixturevalue("orthanc")
    orthanc.upload(ct_series)
    ctriage = request.getfixturevalue("serve_ctriage")(
        pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", retrieve_method=method,
        pull_interval_s=1.0 if trigger == "periodic" else 0.0,
    )
    study_uid = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True).StudyInstanceUID
    if trigger == "api":
        response = ctriage.post("/api/pull")
        assert response.status_code == 200, response.text
        assert response.json()["retrieved"] == [study_uid]
        assert ctriage.post("/api/pull").json()["retrieved"] == []  # known studies are not fetched twice
    row = _analysed(ctriage, study_uid, tmp_path / "ctriage.log")
    assert row["source"] == "pull" and row["n_instances"] == 20
    series_uid = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert ctriage.get(f"/api/studies/{row['id']}").json()["expected_instances"] == {series_uid: 20}
    _results_in_pacs(orthanc, ctriage, row, ct_series)


def _copy_dated(ct_series: Path, folder: Path, days_ago: int, new_uids: bool) -> list[Path]:
    """The example CT dated ``days_ago`` days before today (with new study / series UIDs if ``new_uids``)."""
    from datetime import date, timedelta

    from pydicom.uid import generate_uid

    folder.mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    for path in sorted(ct_series.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyDate = ds.SeriesDate = f"{date.today() - timedelta(days=days_ago):%Y%m%d}"
        if new_uids:
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
        ds.save_as(folder / path.name, enforce_file_format=True)
    return sorted(folder.iterdir())


@pytest.mark.slow
def test_pull_looks_back_days_and_fetches_only_what_is_new(request, ct_series: Path, tmp_path: Path):
    if not IN_NETNS:
        run_in_network_namespace(request)
        return
    orthanc = request.getfixturevalue("orthanc")
    late = _copy_dated(ct_series, tmp_path / "late", days_ago=3, new_uids=False)  # a late arrival
    for path in late[:10] + _copy_dated(ct_series, tmp_path / "old", days_ago=30, new_uids=True):
        orthanc.http.post("/instances", content=path.read_bytes()).raise_for_status()
    ctriage = request.getfixturevalue("serve_ctriage")(pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    header = pydicom.dcmread(late[0], stop_before_pixels=True)
    assert ctriage.post("/api/pull").json()["retrieved"] == [header.StudyInstanceUID]  # 3 days old, not 30
    assert ctriage.post("/api/pull").json()["retrieved"] == []  # nothing new
    for path in late[10:]:  # the rest of the series reaches the PACS
        orthanc.http.post("/instances", content=path.read_bytes()).raise_for_status()
    assert ctriage.post("/api/pull").json()["retrieved"] == [header.StudyInstanceUID]
    assert ctriage.post("/api/pull").json()["retrieved"] == []

    def analysed_whole() -> dict | None:  # the first 10 files may have been analysed (and refused) already
        rows = [s for s in ctriage.get("/api/studies").json() if s["study_uid"] == header.StudyInstanceUID]
        whole = rows and rows[0]["n_instances"] == 20 and rows[0]["status"] in ("done", "incomplete", "failed")
        return rows[0] if whole and (rows[0]["status"] == "done" or rows[0]["attempts"] >= 2) else None

    row = _wait(analysed_whole, ANALYSIS_TIMEOUT_S, "the analysis of the whole series")
    assert row["status"] == "done", row["error"]
    detail = ctriage.get(f"/api/studies/{row['id']}").json()
    assert detail["expected_instances"] == {header.SeriesInstanceUID: 20}


@pytest.mark.slow
def test_partial_series_is_incomplete_until_the_rest_arrives(request, tmp_path: Path):
    if not IN_NETNS:
        run_in_network_namespace(request)
        return
    require(P001_DICOM)
    orthanc = request.getfixturevalue("orthanc")
    ctriage = request.getfixturevalue("serve_ctriage")()
    orthanc_study = orthanc.upload(P001_DICOM)
    head_first = orthanc.instances_by_position(orthanc_study)
    half = len(head_first) // 2
    orthanc.push(head_first[:half])  # the upper half: the lungs are cut at its last slice
    study_uid = str(pydicom.dcmread(next(P001_DICOM.iterdir()), stop_before_pixels=True).StudyInstanceUID)
    log = tmp_path / "ctriage.log"
    row = _analysed(ctriage, study_uid, log, status="incomplete")
    assert row["error"].startswith("lungs cut at the edge of the series: last slice"), row["error"]
    assert row["send_status"] == "" and "SEG" not in orthanc.modalities_in(study_uid)

    orthanc.push(head_first[half:])
    row = _analysed(ctriage, study_uid, log, attempts=2)
    assert row["n_instances"] == len(head_first) and row["error"] == ""
    detail = ctriage.get(f"/api/studies/{row['id']}").json()
    first, second = detail["analyses"]
    assert first["status"] == "incomplete" and first["superseded_by"] == second["id"]
    assert second["status"] == "done" and second["superseded_at"] is None
    assert row["send_status"].startswith("sent 3 objects"), row["send_status"]
    held = orthanc.modalities_in(study_uid)
    assert len(held["SEG"]) == len(held["SR"]) == len(held["OT"]) == 1
