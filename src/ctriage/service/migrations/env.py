"""Alembic environment: the connection comes from ``ctriage.service.migrations.config``."""

from alembic import context

from ctriage.service.db import Base

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
