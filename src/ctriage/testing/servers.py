"""Throw-away Redis and PostgreSQL servers in a temporary folder, for the distributed-mode tests and the load test.

Each starts the Debian binaries (``redis-server``; ``initdb`` / ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``) on a
free loopback port and stops them afterwards; nothing is installed or left behind. PostgreSQL refuses to run as
root, so as root its folder is handed to the ``postgres`` system user (created by the Debian package) and the
server runs as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 60.0


class ServerUnavailableError(RuntimeError):
    """The server's binaries are not installed (the message says which and how to get them)."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    """Return once ``port`` accepts connections; RuntimeError if ``process`` exits or START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT_S:.0f} s")


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis server without persistence on a free port; yields its URL (``redis://127.0.0.1:PORT/0``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailableError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    try:
        _wait_for_port(port, process, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


def postgres_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL's ``initdb`` and ``pg_ctl`` (None when not installed)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    return Path(folders[-1]) if folders else None


def _as_postgres_user(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` system user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster (trust authentication, loopback only, fsync off) on a free port, in a temporary
    folder removed afterwards; yields its SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise ServerUnavailableError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with tempfile.TemporaryDirectory(prefix="ctriage-pg-") as name:
        folder = Path(name)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerUnavailableError("as root this needs the postgres user (apt-get postgresql)") from exc
            os.chown(folder, user.pw_uid, user.pw_gid)
        with _postgres_running(bin_dir, folder) as url:
            yield url


@contextmanager
def _postgres_running(bin_dir: Path, folder: Path) -> Iterator[str]:
    data = folder / "pgdata"
    port = free_port()
    subprocess.run(
        _as_postgres_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200"
    process = subprocess.Popen(
        _as_postgres_user([str(bin_dir / "postgres"), "-D", str(data), *options.split()]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, "postgres")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast", "-w"]
        subprocess.run(_as_postgres_user(stop), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process.wait(timeout=60)
