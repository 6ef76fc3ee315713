"""`ctriage serve` starts with built-in defaults only (SQLite file and folders under ./ctriage-data)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from typer.testing import CliRunner

from ctriage.service.cli import app
from tests.service.conftest import free_port

START_TIMEOUT_S = 120.0


def test_serve_runs_with_defaults_and_stops_cleanly(tmp_path: Path):
    http_port, dicom_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRIAGE_")}
    process = subprocess.Popen(
        [sys.executable, "-c", "from ctriage.cli import app; app()", "serve", "--http-port", str(http_port),
         "--dicom-port", str(dicom_port),
         "--dicom-host", "127.0.0.1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        health = None
        while health is None and time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{http_port}/api/health").json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None, process.stdout.read() if process.poll() is not None else "no answer"
        assert health == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{http_port}/api/studies").status_code == 401  # no login yet
        ae = AE(ae_title="ANYONE")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="CTRIAGE")
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert (tmp_path / "ctriage-data" / "ctriage.db").is_file()
    assert (tmp_path / "ctriage-data" / "studies").is_dir()


def test_pull_without_a_pacs_says_so(tmp_path: Path):
    result = CliRunner().invoke(app, ["pull", "--data-dir", str(tmp_path)], env={"CTRIAGE_CONFIG": ""})
    assert result.exit_code == 2
    assert "no PACS configured" in result.output
