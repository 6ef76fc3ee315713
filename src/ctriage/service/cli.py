"""`ctriage serve` and `ctriage pull`: the triage service and a one-shot PACS query/retrieve."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from ctriage.service.config import ServiceConfig, load_config

app = typer.Typer(help="Triage service: DICOM listener, workers, REST API and web UI.", no_args_is_help=True)
users_app = typer.Typer(help="Web UI users (radiologist or admin), kept in the service database.", no_args_is_help=True)
app.add_typer(users_app, name="users")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file (or $CTRIAGE_CONFIG).")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Folder for the database, received studies and results.")]
AeOpt = Annotated[str | None, typer.Option("--ae-title", help="Our DICOM AE title.")]
DicomPortOpt = Annotated[int | None, typer.Option(help="DICOM listener port.")]
PacsOpt = Annotated[str | None, typer.Option(help="PACS to query / retrieve from, AE@host:port.")]


def _config(config: Path | None, **overrides: Any) -> ServiceConfig:
    try:
        return load_config(config, overrides)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _logging(verbose: bool, log_format: str = "text") -> None:
    """Log to standard error as text lines, or (``log_format`` "json") one JSON object a line with the time,
    level, logger, process and message, for a log collector."""
    handler = logging.StreamHandler()
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        fields = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
        handler.setFormatter(JsonFormatter(fields, rename_fields={"levelname": "level", "asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("pynetdicom").setLevel(logging.INFO if verbose else logging.WARNING)


@app.command()
def serve(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    ae_title: AeOpt = None,
    dicom_port: DicomPortOpt = None,
    dicom_host: Annotated[str | None, typer.Option(help="DICOM listener bind address.")] = None,
    http_host: Annotated[str | None, typer.Option(help="HTTP bind address (0.0.0.0 for all).")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port of the web UI and API.")] = None,
    allowed_peers: Annotated[
        str | None, typer.Option(help="Comma-separated AE@host allowed to send (empty: this machine only).")
    ] = None,
    pacs: PacsOpt = None,
    destination: Annotated[str | None, typer.Option(help="Where SEG / SR go, AE@host:port.")] = None,
    quiet_period_s: Annotated[float | None, typer.Option(help="Seconds without new instances = complete.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel analysis jobs.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the listener, the analysis workers and the web UI until interrupted."""
    import uvicorn

    from ctriage.io.decode import start_workers
    from ctriage.service.api import create_app
    from ctriage.service.runtime import Service

    start_workers()  # forked now, before the listener and job threads start
    settings = _config(
        config,
        data_dir=data_dir,
        ae_title=ae_title,
        dicom_port=dicom_port,
        dicom_host=dicom_host,
        http_host=http_host,
        http_port=http_port,
        allowed_peers=allowed_peers,
        pacs=pacs,
        destination=destination,
        quiet_period_s=quiet_period_s,
        workers=workers,
    )
    _logging(verbose, settings.log_format)
    service = Service.create(settings)
    service.start()
    typer.echo(
        f"ctriage: DICOM {settings.ae_title} on port {settings.dicom_port}, "
        f"web UI on http://{settings.http_host}:{settings.http_port}/, data in {settings.data_dir.resolve()}"
    )
    try:
        uvicorn.run(
            create_app(service),
            host=settings.http_host,
            port=settings.http_port,
            log_level="info" if verbose else "warning",
        )
    finally:
        service.stop()


@app.command()
def pull(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    ae_title: AeOpt = None,
    dicom_port: DicomPortOpt = None,
    pacs: PacsOpt = None,
    method: Annotated[str | None, typer.Option(help="Retrieve with 'move' (to our listener) or 'get'.")] = None,
    days: Annotated[int | None, typer.Option(help="Look back N days (study date) for new CT series.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Query the PACS once for new CT studies and retrieve them; the next `serve` analyses them.

    For C-MOVE this starts our listener, so run it while `serve` is stopped; a running service pulls by itself
    (setting pull_interval_s) or on POST /api/pull.
    """
    from ctriage.service.pacs import DicomNetworkError
    from ctriage.service.runtime import Service

    settings = _config(
        config,
        data_dir=data_dir,
        ae_title=ae_title,
        dicom_port=dicom_port,
        pacs=pacs,
        retrieve_method=method,
        pull_days=days,
    )
    _logging(verbose, settings.log_format)
    if settings.pacs is None:
        typer.echo("error: no PACS configured (--pacs AE@host:port or 'pacs' in the config)", err=True)
        raise typer.Exit(2)
    service = Service.create(settings)
    service.start(listen=settings.retrieve_method == "move", work=False, periodic_pull=False)
    try:
        fetched = service.pull()
    except DicomNetworkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        service.stop()
    typer.echo(f"retrieved {len(fetched)} new study(ies)" + "".join(f"\n  {uid}" for uid in fetched))


@app.command()
def worker(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    concurrency: Annotated[int | None, typer.Option(help="Analyses at a time (processes); default: workers.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Analyse studies queued by `ctriage serve` front ends (distributed mode: broker_url, a PostgreSQL
    database_url and a data_dir shared with the front ends), until interrupted. Run it on as many machines as
    needed; see docs/deployment.md."""
    settings = _config(config, data_dir=data_dir, workers=concurrency, metrics_port=metrics_port)
    if not settings.distributed:
        typer.echo("error: no broker_url: `ctriage worker` is for distributed mode (docs/deployment.md)", err=True)
        raise typer.Exit(2)
    _logging(verbose, settings.log_format)
    if settings.metrics_port:  # before the metrics are created: one set of files for all the worker's processes
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="ctriage-metrics-"))
    from ctriage.service.worker import run_worker

    run_worker(settings)


SitesOpt = Annotated[
    str | None, typer.Option(help="Comma-separated sites whose studies a radiologist sees (\"\": all sites).")
]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input.")
]


def _user_db(config: Path | None, data_dir: Path | None) -> Any:
    """Session factory of the service database named by the settings."""
    from ctriage.service.db import open_db

    settings = _config(config, data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_db(settings.db_url)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _user_change(action: str, config: Path | None, data_dir: Path | None, username: str, **change: Any) -> None:
    """Apply ``auth.add_user`` (action "user-added") or ``auth.change_user``, audit it, or exit 2 with the reason."""
    from ctriage.service import audit, auth

    sessions = _user_db(config, data_dir)
    try:
        if action == "user-added":
            auth.add_user(sessions, username, **change)
        else:
            auth.change_user(sessions, username, **change)
    except auth.AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    said = ", ".join(f"{k}={v}" for k, v in change.items() if k != "password" and v is not None)
    detail = f"{username}: {said}" + (", new password" if change.get("password") else "")
    audit.record(sessions, action, user="command line", detail=detail)
    typer.echo(f"{action}: {detail}")


@users_app.command("add")
def users_add(
    username: str,
    role: Annotated[str, typer.Option(help="radiologist (review) or admin (also retry, send, delete, audit).")],
    sites: SitesOpt = None,
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a user (the first admin too: there is no default account); asks for the password."""
    password = _password(password_stdin)
    _user_change("user-added", config, data_dir, username, password=password, role=role, sites=sites or None)


@users_app.command("set")
def users_set(
    username: str,
    password: Annotated[bool, typer.Option("--password", help="Set a new password (asked for).")] = False,
    password_stdin: PasswordStdinOpt = False,
    role: Annotated[str | None, typer.Option(help="New role.")] = None,
    active: Annotated[bool | None, typer.Option("--enable/--disable", help="Allow or refuse logins.")] = None,
    sites: SitesOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Change a user's password, role, sites or whether they may log in; their open sessions end."""
    new_password = _password(password_stdin) if password or password_stdin else None
    change = {"password": new_password, "role": role, "active": active, "sites": sites}
    _user_change("user-changed", config, data_dir, username, **change)


@users_app.command("list")
def users_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print the users: name, role, active or disabled."""
    from ctriage.service.auth import list_users

    for name, role, active, sites in list_users(_user_db(config, data_dir)):
        typer.echo(f"{name}\t{role}\t{'active' if active else 'disabled'}" + (f"\tsites {sites}" if sites else ""))
