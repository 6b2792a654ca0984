"""The job log's hot path: recording a new instance of a receiving series, on raw sqlite3.

:meth:`dicom_node.store.joblog.JobLog.record_instance` runs once per received
instance, before the C-STORE is answered. Its common case — a new SOP Instance
UID in a series that is ``receiving`` — is three statements in one
``BEGIN IMMEDIATE`` transaction; through SQLAlchemy (pool checkout, events,
statement cache, result objects) it cost several times what SQLite itself
does. :class:`InstanceWriter` runs it on one plain ``sqlite3`` connection per
database file and process, with the pragmas of every job-log connection
(:func:`dicom_node.store.db.configure_connection`) but one: ``synchronous=NORMAL``.
A lock serializes the callers (SQLite has one writer at a time anyway; waiting
on a lock wakes up at once, SQLite's busy handler sleeps).

Durability. When :meth:`InstanceWriter.record_new` returns, the row is
committed: every connection sees it and a crash of the process (SIGKILL
included) cannot lose it. Only the fsync of the write-ahead log is left out:
with ``synchronous=FULL`` it cost 1.5-3 ms per instance on this machine's
shared disk, on top of the spool's own fsyncs (``bench/fsync.py``), and it
was the largest cost of an acknowledgement. What an OS crash or power loss can
therefore lose is the *last* instance rows committed here since the WAL was
last synced: every other job-log write is ``FULL``, its fsync covers every
earlier frame of the log (SQLite recovers a prefix of the WAL), and a
checkpoint syncs the WAL first. In particular an association's release is
recorded after its instances, so a durable release implies durable instance
rows. The spool file itself is durable before the C-STORE is acknowledged, so
nothing acknowledged is lost: at start-up :func:`dicom_node.receive.spool_recovery.recover_spool`
records every spool file that the job log lacks, under an *aborted* association
(its release, if any, was lost with it), so it triggers nothing by itself.

Every other case (a new series, a duplicate, a series in another state) is
left to the ORM path (``FULL``), which the writer reports by returning False
with nothing written. Values are stored as SQLAlchemy stores them
(``DateTime`` as ``YYYY-MM-DD HH:MM:SS.ffffff``, ``Boolean`` as 0/1, states as
their values), so both paths read the same rows.

On a server database (PostgreSQL) :class:`CoreInstanceWriter` is the same
path on SQLAlchemy Core: one transaction, its first statement an ``UPDATE ...
WHERE state = 'receiving' RETURNING id`` that both checks the series and locks
its row (a scheduler completing the series waits, or makes this writer give
the instance to the ORM path), then an ``INSERT ... ON CONFLICT DO NOTHING`` of
the instance (a duplicate rolls the transaction back). Its commit is durable
(PostgreSQL's default ``synchronous_commit``).
"""
from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import bindparam, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from dicom_node.store.db import (Association, Instance, Series, SeriesState,
                                 configure_connection, sqlite_path)

__all__ = ["InstanceWriter", "CoreInstanceWriter", "NewInstanceWriter", "writer_for",
           "sql_datetime"]

logger = logging.getLogger(__name__)

_RECEIVING_SERIES = ("SELECT id, state, EXISTS (SELECT 1 FROM instances "
                     "WHERE sop_instance_uid = ?) FROM series WHERE series_uid = ?")
_INSERT_INSTANCE = ("INSERT INTO instances (sop_instance_uid, sop_class_uid, "
                    "transfer_syntax_uid, series_uid, study_uid, path, size_bytes, "
                    "association_id, received_at, n_received, eligible, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)")
_COUNT_IN_SERIES = ("UPDATE series SET n_instances = n_instances + 1, last_received_at = ? "
                    "WHERE id = ?")
_COUNT_IN_ASSOCIATION = "UPDATE associations SET n_instances = n_instances + 1 WHERE id = ?"
_RECEIVING = SeriesState.RECEIVING.value


def sql_datetime(value: dt.datetime) -> str:
    """A naive UTC datetime as SQLAlchemy's SQLite ``DateTime`` stores it."""
    return value.isoformat(sep=" ", timespec="microseconds")


class InstanceWriter:
    """One sqlite3 connection to the job log at ``path``, for :meth:`record_new`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
        configure_connection(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
        self._lock = threading.Lock()

    def record_new(self, rec: Any, now: dt.datetime) -> bool:
        """Record ``rec`` (an :class:`~dicom_node.store.joblog.InstanceRecord`) if it is a new
        instance of a ``receiving`` series, and commit (``synchronous=NORMAL``); False,
        with nothing written, in every other case. Raises ``sqlite3.Error``."""
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(_RECEIVING_SERIES,
                                   (rec.sop_instance_uid, rec.series_uid)).fetchone()
                if row is None or row[1] != _RECEIVING or row[2]:
                    conn.execute("ROLLBACK")
                    return False
                stamp = sql_datetime(now)
                conn.execute(_INSERT_INSTANCE, (
                    rec.sop_instance_uid, rec.sop_class_uid, rec.transfer_syntax_uid,
                    rec.series_uid, rec.study_uid, str(rec.path), rec.size_bytes,
                    rec.association_id, stamp, 1 if rec.eligible else 0, rec.reason))
                conn.execute(_COUNT_IN_SERIES, (stamp, row[0]))
                if rec.association_id is not None:
                    conn.execute(_COUNT_IN_ASSOCIATION, (rec.association_id,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return True


class CoreInstanceWriter:
    """:meth:`InstanceWriter.record_new` on SQLAlchemy Core, for a server database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._count = (update(Series).where(Series.series_uid == bindparam("uid"),
                                            Series.state == SeriesState.RECEIVING)
                       .values(n_instances=Series.n_instances + 1,
                               last_received_at=bindparam("now"))
                       .returning(Series.id))

    def record_new(self, rec: Any, now: dt.datetime) -> bool:
        """As :meth:`InstanceWriter.record_new` (raises ``sqlalchemy.exc.SQLAlchemyError``)."""
        with self.engine.connect() as conn, conn.begin() as transaction:
            if conn.execute(self._count, {"uid": rec.series_uid, "now": now}).first() \
                    is None:
                transaction.rollback()
                return False
            inserted = conn.execute(pg_insert(Instance).values(
                sop_instance_uid=rec.sop_instance_uid, sop_class_uid=rec.sop_class_uid,
                transfer_syntax_uid=rec.transfer_syntax_uid, series_uid=rec.series_uid,
                study_uid=rec.study_uid, path=str(rec.path), size_bytes=rec.size_bytes,
                association_id=rec.association_id, received_at=now, n_received=1,
                eligible=bool(rec.eligible), reason=rec.reason)
                .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
                .returning(Instance.id)).first()
            if inserted is None:  # a duplicate: the full path records it
                transaction.rollback()
                return False
            if rec.association_id is not None:
                conn.execute(update(Association).where(Association.id == rec.association_id)
                             .values(n_instances=Association.n_instances + 1))
        return True


class NewInstanceWriter(Protocol):
    """What :class:`~dicom_node.store.joblog.JobLog` needs of a hot-path writer."""

    def record_new(self, rec: Any, now: dt.datetime) -> bool: ...


_WRITERS: dict[Any, NewInstanceWriter] = {}
_WRITERS_LOCK = threading.Lock()


def writer_for(job_log: str | Path | Engine) -> NewInstanceWriter:
    """The process-wide hot-path writer of a job log: an :class:`InstanceWriter` for a
    SQLite file (given by path or engine), a :class:`CoreInstanceWriter` for a server
    database's engine. The tables must exist (:func:`dicom_node.store.db.get_engine` ran)."""
    path = sqlite_path(job_log.url) if isinstance(job_log, Engine) else Path(job_log)
    key: Any = path.resolve() if path is not None else job_log
    with _WRITERS_LOCK:
        writer = _WRITERS.get(key)
        if writer is None:
            writer = _WRITERS[key] = (InstanceWriter(key) if path is not None
                                      else CoreInstanceWriter(job_log))  # type: ignore[arg-type]
        return writer
