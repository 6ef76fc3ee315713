"""DICOM over TLS with a self-signed certificate made at test time (openssl): the listener accepts TLS associations
from peers presenting a trusted certificate, refuses plain DICOM and TLS without a client certificate, a silent
client does not block it, and ctriage's own outgoing associations (sends, queries) use TLS with ``tls_outgoing``."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from ctriage.service import pacs, tls
from ctriage.service.config import DicomNode, load_config
from ctriage.service.db import Study, open_db
from ctriage.service.scp import start_listener
from ctriage.service.store import StudyStore
from tests.service.conftest import audit_lines


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost and its key (the peers' CA is the certificate itself)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian package 'openssl'; .ci/run installs it)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_listener(config, certificate):
    """A TLS-only listener requiring client certificates, accepting SCANNER1 from 127.0.0.1."""
    cert, key = certificate
    config = replace(config, allowed_peers=("SCANNER1@127.0.0.1",), tls_certificate=cert, tls_private_key=key,
                     tls_ca_certificates=cert)
    config.data_dir.mkdir(parents=True)
    sessions = open_db(config.db_url)
    server = start_listener(config, StudyStore(config.studies_dir, sessions))
    yield config, sessions
    server.shutdown()


def _echo(config, tls_args=None) -> bool:
    """Whether a C-ECHO association as SCANNER1 is established (plain DICOM without ``tls_args``)."""
    ae = AE(ae_title="SCANNER1")
    ae.connection_timeout = 30
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", config.dicom_port, ae_title=config.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return False
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return True


def test_tls_association_accepted_plain_refused(tls_listener, ct_series: Path):
    config, sessions = tls_listener
    client = replace(config, ae_title="SCANNER1", tls_outgoing=True)
    node = DicomNode(config.ae_title, "127.0.0.1", config.dicom_port)
    assert _echo(config, tls.client_args(client, node))
    assert not _echo(config)  # plain DICOM on the TLS port
    anonymous = replace(client, tls_certificate=None, tls_private_key=None)  # TLS without a client certificate
    assert not _echo(config, tls.client_args(anonymous, node))

    first = pydicom.dcmread(sorted(ct_series.iterdir())[0])
    first.decompress()  # sends offer uncompressed transfer syntaxes (ctriage's results are uncompressed)
    pacs.send_datasets(client, node, [first])  # ctriage's own client side (sends, queries) over TLS
    with sessions() as session:
        assert session.scalars(select(Study)).one().n_instances == 1
    details = [line[3] for line in audit_lines(sessions, 2) if line[0] == "dicom-association"]
    assert details == ["0 instances stored, released, TLS", "1 instances stored, released, TLS"]


def test_a_silent_client_does_not_block_the_listener(tls_listener, certificate, monkeypatch):
    config, _ = tls_listener
    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT_S", 0.5)
    client = replace(config, ae_title="SCANNER1", tls_outgoing=True)
    with socket.create_connection(("127.0.0.1", config.dicom_port)):  # connects, never says anything
        assert _echo(config, tls.client_args(client, DicomNode(config.ae_title, "127.0.0.1", config.dicom_port)))


def test_tls_settings(certificate):
    cert, key = certificate
    config = load_config(overrides={"tls_certificate": str(cert), "tls_private_key": str(key)}, environ={})
    assert config.tls and tls.listener_context(config) is not None
    assert tls.client_args(config, DicomNode("PACS", "pacs", 104)) is None  # outgoing stays plain unless asked
    with pytest.raises(ValueError, match="go together"):
        load_config(overrides={"tls_certificate": str(cert)}, environ={})
    with pytest.raises(ValueError, match="tls_ca_certificates"):
        load_config(overrides={"tls_outgoing": True}, environ={})
