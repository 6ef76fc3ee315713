"""`ctriage worker` processes and small phantom studies, for the distributed-mode tests and the load test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ctriage.io.nifti import save_nifti
from ctriage.service.config import ServiceConfig
from ctriage.testing.phantom import chest_phantom

PHANTOM_SHAPE = (32, 96, 96)  # voxels (z, y, x): analysed in about a second and a half on one core


def phantom_nifti(shape: tuple[int, int, int] = PHANTOM_SHAPE) -> bytes:
    """A small chest phantom as gzipped NIfTI bytes (what an upload of a NIfTI study sends)."""
    phantom = chest_phantom(shape=shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_nifti(phantom.volume.hu.astype(np.int16), phantom.volume.affine, Path(tmp) / "phantom.nii.gz")
        return path.read_bytes()


def start_worker(config: ServiceConfig, log: Path) -> subprocess.Popen:
    """A `ctriage worker` process (one analysis at a time) with ``config``'s broker, database, data folder, lease
    and back-off, logging to ``log``; in its own process group, so that :func:`kill_worker` is a power cut."""
    env = {
        **os.environ,
        "CTRIAGE_CONFIG": "",
        "CTRIAGE_BROKER_URL": config.broker_url,
        "CTRIAGE_DATABASE_URL": config.database_url,
        "CTRIAGE_DATA_DIR": str(config.data_dir),
        "CTRIAGE_LEASE_S": str(config.lease_s),
        "CTRIAGE_RETRY_BACKOFF_S": str(config.retry_backoff_s),
        "CTRIAGE_LOG_FORMAT": config.log_format,
        "CTRIAGE_WORKERS": "1",
    }
    command = [str(Path(sys.executable).parent / "ctriage"), "worker"]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_worker(process: subprocess.Popen) -> None:
    """kill -9 the worker and everything it started, as a power cut would, and reap it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
