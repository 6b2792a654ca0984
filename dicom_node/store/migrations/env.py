"""Alembic environment of the job log: always run on a connection the node hands in.

:func:`dicom_node.store.schema.upgrade` puts an open connection into
``config.attributes["connection"]``; this file only configures the migration
context on it. There is no ``alembic.ini`` and no URL here: the node decides
which database, and its migrations run inside the node's own transaction.
"""
from __future__ import annotations

from alembic import context

from dicom_node.store.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - a misuse, e.g. the alembic CLI without the node
    raise RuntimeError("the job log's migrations run through dicom_node.store.schema, with "
                       "a connection; the alembic command line is not wired to a database")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
