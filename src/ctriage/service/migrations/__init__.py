"""Alembic migrations of the service database on PostgreSQL (SQLite, one box, creates its tables itself).

``upgrade`` runs at every start of ``ctriage serve`` / ``ctriage worker``; a transaction-scoped advisory lock
makes the front ends and workers that start together migrate one after the other. After a change to the models
in ``db.py``, write the next revision with ``alembic.command.revision(config(connection), "what changed",
autogenerate=True)`` over a connection to a PostgreSQL at the previous revision (``ctriage.testing.servers.
postgres_server`` starts a scratch one, ``upgrade`` brings it there), and review the generated file; the
distributed tests fail while the models and the migrations differ.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

MIGRATION_LOCK = 0x6374726961676501  # pg_advisory_xact_lock key of the migration ("ctriage" + 1)


def config(connection: Connection) -> Config:
    """Alembic settings for this folder's revisions over ``connection``."""
    settings = Config()
    settings.set_main_option("script_location", str(Path(__file__).parent))
    settings.attributes["connection"] = connection
    return settings


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest revision, one process at a time."""
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        command.upgrade(config(connection), "head")
