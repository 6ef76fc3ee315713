"""Service settings: defaults < TOML file < CTRIAGE_* environment variables < CLI flags.

Everything has a default, so ``ctriage serve`` runs with no set-up: an SQLite file and the received studies
live under ``data_dir`` (``./ctriage-data``), the DICOM listener answers as CTRIAGE on port 11112 and the web
UI is on http://127.0.0.1:8080.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "CTRIAGE_"
TLS_FILES = ("tls_certificate", "tls_private_key", "tls_ca_certificates")


@dataclass(frozen=True)
class DicomNode:
    """A remote DICOM application entity: AE title, host name or IP address, port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: str | dict[str, Any]) -> DicomNode:
        """Read ``AE@host:port`` or a ``{ae_title, host, port}`` table."""
        if isinstance(value, dict):
            return cls(str(value["ae_title"]), str(value["host"]), int(value["port"]))
        ae_title, _, address = value.partition("@")
        host, _, port = address.rpartition(":")
        if not ae_title or not host or not port.isdigit():
            raise ValueError(f"{value!r}: expected AE_TITLE@host:port")
        return cls(ae_title, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ServiceConfig:
    """All settings of ``ctriage serve``; see docs/deployment.md for what each one is for."""

    data_dir: Path = Path("ctriage-data")
    database_url: str = ""  # default: sqlite file <data_dir>/ctriage.db
    ae_title: str = "CTRIAGE"
    dicom_host: str = "127.0.0.1"  # "0.0.0.0" to receive from the PACS (with allowed_peers)
    dicom_port: int = 11112
    allowed_peers: tuple[str, ...] = ()  # "AE@host" that may associate; empty: only this machine (loopback)
    tls_certificate: Path | None = None  # PEM certificate (chain) of ctriage; with tls_private_key: DICOM over TLS
    tls_private_key: Path | None = None  # PEM private key of tls_certificate
    tls_ca_certificates: Path | None = None  # PEM CAs whose certificates peers must present (mutual TLS)
    tls_outgoing: bool = False  # queries, retrieves and sends to pacs / destination over TLS too
    min_free_disk_mb: float = 2048.0  # refuse new DICOM associations below this much free space on data_dir's disk
    retention_days: float = 30.0  # delete received studies and their results this long after arrival; 0: never
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    quiet_period_s: float = 30.0
    workers: int = 1
    poll_interval_s: float = 1.0
    triage_policy: str = "combined"
    pacs: DicomNode | None = None  # queried by C-FIND and asked for C-MOVE / C-GET in pull mode
    retrieve_method: str = "move"  # "move" or "get"
    pull_interval_s: float = 0.0  # 0: no periodic pull (``ctriage service pull`` still works)
    pull_days: int = 7  # look-back window: CT studies dated today and the pull_days - 1 days before
    destination: DicomNode | None = None  # receives SEG / SR (and secondary capture) by C-STORE
    send_secondary_capture: bool = True
    secure_cookies: bool = True  # session cookie only over HTTPS (the reverse proxy's TLS); false: plain-HTTP tests
    session_hours: float = 12.0  # a login lasts this long
    sites: dict[str, str] = field(default_factory=dict)  # calling AE title -> site (hospital); unlisted: the AE title
    log_format: str = "text"  # "json": one JSON object per log line (for a log collector)
    # distributed mode (docs/deployment.md): set broker_url (and a PostgreSQL database_url, a shared data_dir) and
    # `serve` only receives and queues, `ctriage worker` processes on any machines analyse
    broker_url: str = ""  # Celery broker, e.g. redis://broker:6379/0; empty: one box, in-process workers
    lease_s: float = 120.0  # a running analysis whose worker sent no heartbeat for this long is queued again
    visibility_timeout_s: float = 3600.0  # Redis broker: an unacknowledged task is delivered again after this
    max_attempts: int = 3  # analyses that crash are retried until this many attempts, then dead-lettered
    retry_backoff_s: float = 30.0  # wait before the n-th retry: retry_backoff_s * 2 ** (n - 1)
    metrics_port: int = 0  # `ctriage worker`: Prometheus metrics on this port; 0: none

    @property
    def distributed(self) -> bool:
        """Whether analyses run in `ctriage worker` processes fed by the broker rather than in `serve`."""
        return bool(self.broker_url)

    def site_of(self, calling_ae: str) -> str:
        """The site (hospital) of studies sent by ``calling_ae``: from ``sites``, else the AE title itself."""
        return self.sites.get(calling_ae, calling_ae)

    @property
    def tls(self) -> bool:
        """Whether the DICOM listener accepts TLS connections only (a certificate and its key are set)."""
        return self.tls_certificate is not None and self.tls_private_key is not None

    @property
    def db_url(self) -> str:
        """SQLAlchemy URL of the job database."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'ctriage.db').resolve()}"

    @property
    def studies_dir(self) -> Path:
        """Received instances, one folder per StudyInstanceUID; deleted after ``retention_days``."""
        return self.data_dir / "studies"

    @property
    def results_dir(self) -> Path:
        """Analysis outputs, one folder per study id and attempt."""
        return self.data_dir / "results"


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML / environment / CLI value into the type of field ``name``."""
    if value is None:
        return None
    if name == "data_dir":
        return Path(value)
    if name in TLS_FILES:
        return None if value in ("", "none") else Path(value)
    if name in ("pacs", "destination"):
        return None if value in ("", "none") else DicomNode.parse(value)
    if name == "allowed_peers":
        items = value.split(",") if isinstance(value, str) else value
        peers = tuple(str(v).strip() for v in items if str(v).strip())
        for peer in peers:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+", peer):
                raise ValueError(f"allowed_peers: {peer!r}: expected AE_TITLE@host (IP address, network or name)")
        return peers
    if name == "sites":
        return dict(value) if isinstance(value, dict) else _pairs(value)
    if name in ("dicom_port", "http_port", "workers", "pull_days", "max_attempts", "metrics_port"):
        return int(value)
    if name in (
        "quiet_period_s", "poll_interval_s", "pull_interval_s", "session_hours", "min_free_disk_mb", "retention_days",
        "lease_s", "visibility_timeout_s", "retry_backoff_s",
    ):
        return float(value)
    if name in ("send_secondary_capture", "secure_cookies", "tls_outgoing"):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    return str(value)


def _pairs(value: str) -> dict[str, str]:
    """``"AE1=site a,AE2=site b"`` as a dict (the environment / command-line form of the ``sites`` table)."""
    pairs = [item.partition("=") for item in value.split(",") if item.strip()]
    if any(not key.strip() or not sep for key, sep, _ in pairs):
        raise ValueError(f"sites: {value!r}: expected AE_TITLE=site,AE_TITLE=site")
    return {key.strip(): site.strip() for key, _, site in pairs}


def _known(values: dict[str, Any], origin: str) -> dict[str, Any]:
    names = {f.name for f in fields(ServiceConfig)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{origin}: unknown setting(s) {', '.join(sorted(unknown))}")
    return {k: _coerce(k, v) for k, v in values.items()}


def from_toml(path: Path) -> dict[str, Any]:
    """Settings from a TOML file; a ``[service]`` table is read if present, else the top level."""
    data = tomllib.loads(Path(path).read_text())
    return _known(data.get("service", data), str(path))


def from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings from ``CTRIAGE_<NAME>`` environment variables (e.g. ``CTRIAGE_AE_TITLE``)."""
    environ = dict(os.environ if environ is None else environ)
    names = {f.name for f in fields(ServiceConfig)}
    values = {n: environ[ENV_PREFIX + n.upper()] for n in names if ENV_PREFIX + n.upper() in environ}
    return _known(values, "environment")


def load_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> ServiceConfig:
    """Defaults < TOML (``path`` or ``$CTRIAGE_CONFIG``) < environment < ``overrides`` (CLI; None = unset)."""
    env = dict(os.environ if environ is None else environ)
    path = path or (Path(env["CTRIAGE_CONFIG"]) if env.get("CTRIAGE_CONFIG") else None)
    values: dict[str, Any] = {}
    if path is not None:
        values.update(from_toml(path))
    values.update(from_env(env))
    values.update(_known({k: v for k, v in (overrides or {}).items() if v is not None}, "command line"))
    config = replace(ServiceConfig(), **values)
    if config.retrieve_method not in ("move", "get"):
        raise ValueError(f"retrieve_method must be 'move' or 'get', not {config.retrieve_method!r}")
    if (config.tls_certificate is None) != (config.tls_private_key is None):
        raise ValueError("tls_certificate and tls_private_key go together")
    if config.tls_outgoing and config.tls_ca_certificates is None:
        raise ValueError("tls_outgoing needs tls_ca_certificates to verify the PACS's certificate")
    if config.log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', not {config.log_format!r}")
    if config.broker_url and config.db_url.startswith("sqlite"):
        raise ValueError("broker_url (distributed mode) needs a shared database_url (postgresql+psycopg://...)")
    if config.pull_days < 1:
        raise ValueError(f"pull_days must be at least 1, not {config.pull_days}")
    return config
