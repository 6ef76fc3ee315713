"""Settings: defaults need no set-up; TOML < environment < command line; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctriage.service.config import DicomNode, ServiceConfig, load_config


def test_defaults_need_no_setup():
    config = load_config(environ={})
    assert config == ServiceConfig()
    assert config.db_url.startswith("sqlite:///") and config.db_url.endswith("ctriage-data/ctriage.db")
    assert config.pacs is None and config.destination is None and config.allowed_peers == ()


def test_toml_then_environment_then_overrides(tmp_path: Path):
    toml = tmp_path / "ctriage.toml"
    toml.write_text(
        '[service]\nae_title = "TRIAGE1"\ndicom_port = 4242\nallowed_peers = ["PACS1@10.0.0.4", "CT01@10.1.2.0/24"]\n'
        'pacs = { ae_title = "PACS1", host = "pacs.local", port = 104 }\ndestination = "ARCHIVE@10.0.0.5:11112"\n'
    )
    config = load_config(toml, {"dicom_port": 5555, "http_port": None},
                         environ={"CTRIAGE_AE_TITLE": "FROMENV", "CTRIAGE_QUIET_PERIOD_S": "5"})
    assert config.ae_title == "FROMENV"
    assert config.dicom_port == 5555
    assert config.http_port == ServiceConfig().http_port
    assert config.quiet_period_s == 5.0
    assert config.allowed_peers == ("PACS1@10.0.0.4", "CT01@10.1.2.0/24")
    assert config.pacs == DicomNode("PACS1", "pacs.local", 104)
    assert config.destination == DicomNode("ARCHIVE", "10.0.0.5", 11112)


def test_config_file_from_environment(tmp_path: Path):
    toml = tmp_path / "c.toml"
    toml.write_text('data_dir = "/var/lib/ctriage"\nallowed_peers = "A@pacs, B@ct1"\n')
    config = load_config(environ={"CTRIAGE_CONFIG": str(toml)})
    assert config.data_dir == Path("/var/lib/ctriage") and config.allowed_peers == ("A@pacs", "B@ct1")


@pytest.mark.parametrize(
    ("values", "message"),
    [({"dicom_prot": 1}, "unknown setting"), ({"pacs": "PACS@host"}, "AE_TITLE@host:port"),
     ({"retrieve_method": "ftp"}, "retrieve_method"), ({"allowed_peers": "PACS1"}, "AE_TITLE@host")],
)
def test_bad_settings_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=values, environ={})
