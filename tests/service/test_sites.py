"""Many sites on one service: studies carry the site of their sender, the worklist filters by site, and a
radiologist limited to some sites sees only their studies; health, readiness, metrics and JSON logs."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from ctriage.service.api import create_app
from ctriage.service.auth import list_users
from ctriage.service.cli import _logging
from ctriage.service.cli import app as cli_app
from ctriage.service.config import load_config
from ctriage.service.db import open_db
from ctriage.service.runtime import Service
from tests.conftest import REPO
from tests.service.conftest import PASSWORD, logged_in, store_series


@pytest.fixture
def service(config, analyze, ct_series: Path, lesion_mask: Path) -> Service:
    """Three studies: from SCANNER1 (site "north" by the sites table), from SOUTHPACS and from the web upload."""
    service = Service.create(replace(config, sites={"SCANNER1": "north"}), analyze)
    store_series(service.store, ct_series)
    service.store.add_nifti(lesion_mask.read_bytes(), "south.nii.gz", calling_ae="SOUTHPACS")
    service.store.add_nifti(lesion_mask.read_bytes(), "upload.nii.gz")
    return service


def _sites(client, **params) -> list[str]:
    response = client.get("/api/studies", params=params)
    assert response.status_code == 200, response.text
    return sorted(row["site"] for row in response.json())


def test_studies_carry_their_site_and_the_worklist_filters_by_site(service: Service):
    client = logged_in(create_app(service), service.sessions, "dr.any", "radiologist")
    assert _sites(client) == ["HTTP", "SOUTHPACS", "north"]  # unlisted AE titles are their own site
    assert _sites(client, site=["north", "SOUTHPACS"]) == ["SOUTHPACS", "north"]


def test_a_radiologist_limited_to_a_site_sees_only_its_studies(service: Service):
    app = create_app(service)
    north = logged_in(app, service.sessions, "dr.north", "radiologist", sites="north")
    assert north.get("/api/me").json()["sites"] == ["north"]
    assert _sites(north) == ["north"]
    assert _sites(north, site="SOUTHPACS") == []  # asking for another site does not widen the view
    rows = logged_in(app, service.sessions, "admin", "admin", sites="north").get("/api/studies").json()
    other = next(r["id"] for r in rows if r["site"] == "SOUTHPACS")  # admins see every site
    mine = next(r["id"] for r in rows if r["site"] == "north")
    assert north.get(f"/api/studies/{mine}").status_code == 200
    for path in ("", "/slices/0.png", "/files/report.json", "/volume.nii.gz"):
        assert north.get(f"/api/studies/{other}{path}").status_code == 404, path
    review = north.post(f"/api/studies/{other}/review", json={"decision": "confirmed"})
    assert review.status_code == 404


def test_sites_of_users_from_the_command_line(tmp_path: Path):
    runner = CliRunner()
    args, env = ["--data-dir", str(tmp_path)], {"CTRIAGE_CONFIG": ""}
    command = ["users", "add", "dr.north", "--role", "radiologist", "--sites", "north, east", "--password-stdin"]
    assert runner.invoke(cli_app, [*command, *args], input=f"{PASSWORD}\n", env=env).exit_code == 0
    assert runner.invoke(cli_app, ["users", "set", "dr.north", "--sites", "west", *args], env=env).exit_code == 0
    listed = runner.invoke(cli_app, ["users", "list", *args], env=env).output
    assert listed.split() == ["dr.north", "radiologist", "active", "sites", "west"]
    assert list_users(open_db(f"sqlite:///{tmp_path / 'ctriage.db'}")) == [("dr.north", "radiologist", True, "west")]


def test_sites_setting_from_toml_and_environment(tmp_path: Path):
    toml = tmp_path / "ctriage.toml"
    toml.write_text('[service.sites]\nSCANNER1 = "north"\n')
    assert load_config(toml, environ={}).sites == {"SCANNER1": "north"}
    from_env = load_config(environ={"CTRIAGE_SITES": "A=north, B=south"})
    assert from_env.sites == {"A": "north", "B": "south"} and from_env.site_of("C") == "C"
    with pytest.raises(ValueError, match="sites"):
        load_config(environ={"CTRIAGE_SITES": "north"})
    with pytest.raises(ValueError, match="database_url"):
        load_config(environ={"CTRIAGE_BROKER_URL": "redis://localhost:6379/0"})
    example = load_config(REPO / "deploy" / "ctriage.toml", environ={})  # the distributed example is valid
    assert example.distributed and example.site_of("REGIONPACS") == "region"


def test_health_readiness_and_metrics_need_no_login(service: Service):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(service), base_url="https://testserver")
    assert client.get("/api/health").json() == {"status": "ok"}
    assert client.get("/api/ready").json() == {
        "status": "ready", "checks": {"database": "ok", "data_dir": "ok"}
    }
    ok = {"outcome": "ok"}
    before = REGISTRY.get_sample_value("ctriage_analyses_total", ok) or 0.0  # the counters are process-wide
    lungs_before = REGISTRY.get_sample_value("ctriage_analysis_stage_seconds_count", {"stage": "lungs"}) or 0.0
    service.worker.run_once()  # one analysis: its stages are timed
    metrics = client.get("/metrics").text
    assert REGISTRY.get_sample_value("ctriage_analyses_total", ok) == before + 1
    assert REGISTRY.get_sample_value("ctriage_analysis_stage_seconds_count", {"stage": "lungs"}) == lungs_before + 1
    assert "ctriage_queue_depth 2.0" in metrics
    assert 'ctriage_studies{status="done"} 1.0' in metrics
    assert 'ctriage_analysis_stage_seconds_count{stage="lungs"}' in metrics
    assert 'ctriage_analyses_total{outcome="ok"}' in metrics
    service.config.studies_dir.rename(service.config.data_dir / "moved")
    not_ready = client.get("/api/ready")
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["database"] == "ok"


def test_json_logs(capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    _logging(False, "json")
    try:
        logging.getLogger("ctriage.test").warning("study %s failed", 7)
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert (line["level"], line["name"], line["message"]) == ("WARNING", "ctriage.test", "study 7 failed")
    assert "time" in line and "process" in line
