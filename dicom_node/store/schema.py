"""Create and upgrade the job log's tables with Alembic (``dicom_node/store/migrations``).

:func:`upgrade` runs when a node opens its job log:

* a new database gets every migration, ``0001_baseline`` first;
* a SQLite job log written by an earlier version (tables, ``PRAGMA user_version``
  1, no ``alembic_version`` table) is stamped with the baseline, then upgraded:
  its rows are kept, new columns start empty;
* a database already at the newest revision is left alone; one at a revision
  this node does not know (written by a newer node) is refused with
  :class:`SchemaMismatch`, as is a SQLite log of another ``user_version``.

On SQLite, ``PRAGMA user_version`` is set to :data:`SCHEMA_VERSION` after an
upgrade, so that a node of an earlier version refuses the upgraded file
instead of misreading it. On PostgreSQL an advisory lock makes processes that
start together migrate one after the other.
"""
from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

__all__ = ["SchemaMismatch", "upgrade", "head_revision", "SCHEMA_VERSION", "BASELINE"]

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"  # the schema of PRAGMA user_version 1 (every job log before Alembic)
LEGACY_USER_VERSION = 1
SCHEMA_VERSION = 2  # PRAGMA user_version of an upgraded SQLite job log
_ADVISORY_LOCK = 0x7274_6673  # "rtfs": serializes migrations of processes starting together


class SchemaMismatch(RuntimeError):
    """The job log was written by a node with a schema this node cannot read or upgrade."""


def _alembic_config(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this node knows."""
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def _legacy_sqlite(conn: Connection, where: str) -> bool:
    """True for a SQLite job log of an earlier version (to be stamped); raises
    :class:`SchemaMismatch` for one with tables but another ``user_version``."""
    if conn.dialect.name != "sqlite" or not inspect(conn).has_table("jobs"):
        return False
    version = conn.exec_driver_sql("PRAGMA user_version").scalar()
    if version != LEGACY_USER_VERSION:
        raise SchemaMismatch(f"the job log {where} has tables but schema version {version} "
                             f"and no migration record; this node upgrades version "
                             f"{LEGACY_USER_VERSION}. Move it aside (keep it for the record) "
                             "and start again.")
    return True


def upgrade(engine: Engine, where: str) -> str:
    """Bring the job log behind ``engine`` to the newest revision (see the module
    docstring); ``where`` names it in messages (no password). Returns the revision."""
    head = head_revision()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
        current = MigrationContext.configure(conn).get_current_revision()
        if current == head:
            return head
        config = _alembic_config(conn)
        if current is None and _legacy_sqlite(conn, where):
            logger.info("job log %s predates migrations: stamped %s", where, BASELINE)
            command.stamp(config, BASELINE)
            current = BASELINE
        elif current is not None and current not in _known_revisions():
            raise SchemaMismatch(f"the job log {where} is at schema revision {current!r}, "
                                 f"written by a newer node; this node knows up to {head!r}.")
        command.upgrade(config, "head")
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        logger.info("job log %s upgraded from %s to %s", where, current or "empty", head)
    return head


def _known_revisions() -> set[str]:
    script = ScriptDirectory(str(MIGRATIONS))
    return {rev.revision for rev in script.walk_revisions()}
