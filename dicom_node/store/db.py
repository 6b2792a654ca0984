"""The job log: SQLAlchemy 2.0 models, their states and the legal transitions between them.

By default one SQLite file (``data_dir/joblog.sqlite``, WAL mode) is the single
source of truth for ``rtfsyn status`` and for recovery after a restart; with
``[database] url`` a PostgreSQL database is, shared by several node processes
(:mod:`dicom_node.store.schema` creates and upgrades the tables). Tables:

* ``associations`` - one row per association request (accepted or not);
* ``instances``    - one row per SOP Instance UID (duplicates update the row);
* ``series``       - one row per Series Instance UID;
* ``jobs``         - one row per (series, generation, target, destination);
* ``deliveries``   - one row per C-STORE export attempt of a job;
* ``delivery_instances`` - the status the destination returned per instance;
* ``nodes``        - one row per node process that used the log (roles, heartbeat).

No patient name, ID or birth date is stored here: only UIDs, AE titles,
addresses, counts, states and reasons. The allowed state changes are in
:data:`TRANSITIONS`; :func:`check_transition` refuses any other.
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import (Boolean, DateTime, Enum, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint, create_engine, event)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dicom_node.store.schema import SCHEMA_VERSION, SchemaMismatch

__all__ = [
    "AssociationState", "SeriesState", "JobState", "DeliveryStatus", "TRANSITIONS",
    "IllegalTransition", "check_transition", "Base", "Association", "Instance", "Series", "Job",
    "Delivery", "DeliveryInstance", "Node", "get_engine", "session_factory", "utcnow",
    "SCHEMA_VERSION", "SchemaMismatch", "configure_connection", "database_url", "sqlite_path",
    "NODE_ID_LENGTH",
]

logger = logging.getLogger(__name__)
NODE_ID_LENGTH = 96  # characters of a node process id (host name, pid, random suffix)


def utcnow() -> dt.datetime:
    """Now, as a naive UTC datetime (what the job log stores)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class AssociationState(str, enum.Enum):
    """open: in progress; released: ended cleanly; aborted: ended by A-ABORT or a dropped
    connection (its instances trigger nothing); rejected: refused at negotiation."""

    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class SeriesState(str, enum.Enum):
    """receiving: instances arriving; partial: quiet, but no instance came on a cleanly
    released association; complete: quiet and ready to route; routed: jobs created;
    ignored: no route matched; not_eligible: nothing processable (SOP class, loop guard)."""

    RECEIVING = "receiving"
    PARTIAL = "partial"
    COMPLETE = "complete"
    ROUTED = "routed"
    IGNORED = "ignored"
    NOT_ELIGIBLE = "not_eligible"


class JobState(str, enum.Enum):
    """queued -> running (synthesis) -> sending (export) -> done; sending -> waiting (the
    destination did not take it; ``next_attempt_at`` says when it is tried again, until
    ``retry_until``) -> sending; or rejected (the series cannot be processed, with a reason)
    or failed (an error, or the retry window ran out)."""

    QUEUED = "queued"
    RUNNING = "running"
    SENDING = "sending"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"


class DeliveryStatus(str, enum.Enum):
    """running: attempt in progress; ok: every instance stored (success or warning);
    partial: some instances refused; failed: no association or nothing stored."""

    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"


_A, _S, _J, _D = AssociationState, SeriesState, JobState, DeliveryStatus
TRANSITIONS: dict[type[enum.Enum], dict[enum.Enum, frozenset[enum.Enum]]] = {
    AssociationState: {_A.OPEN: frozenset({_A.RELEASED, _A.ABORTED, _A.REJECTED})},
    SeriesState: {
        _S.RECEIVING: frozenset({_S.COMPLETE, _S.PARTIAL}),
        _S.PARTIAL: frozenset({_S.RECEIVING}),
        _S.COMPLETE: frozenset({_S.ROUTED, _S.IGNORED, _S.NOT_ELIGIBLE, _S.RECEIVING}),
        _S.ROUTED: frozenset({_S.RECEIVING, _S.NOT_ELIGIBLE}),
        _S.IGNORED: frozenset({_S.RECEIVING}),
        _S.NOT_ELIGIBLE: frozenset({_S.RECEIVING}),
    },
    JobState: {
        _J.QUEUED: frozenset({_J.RUNNING, _J.FAILED}),
        _J.RUNNING: frozenset({_J.SENDING, _J.REJECTED, _J.FAILED, _J.QUEUED}),
        _J.SENDING: frozenset({_J.DONE, _J.FAILED, _J.WAITING}),
        _J.WAITING: frozenset({_J.SENDING, _J.FAILED}),
        _J.DONE: frozenset({_J.SENDING}),
        _J.FAILED: frozenset({_J.QUEUED, _J.SENDING}),
    },
    DeliveryStatus: {_D.RUNNING: frozenset({_D.OK, _D.PARTIAL, _D.FAILED})},
}


class IllegalTransition(RuntimeError):
    """A state change that :data:`TRANSITIONS` does not allow."""


def check_transition(old: enum.Enum, new: enum.Enum) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is allowed."""
    if type(old) is not type(new):
        raise IllegalTransition(f"cannot change a {type(old).__name__} into a "
                                f"{type(new).__name__}: {old.value!r} -> {new.value!r}.")
    allowed = TRANSITIONS[type(old)].get(old, frozenset())
    if new not in allowed:
        names = ", ".join(sorted(s.value for s in allowed)) or "none (final state)"
        raise IllegalTransition(f"{type(old).__name__} {old.value!r} cannot become "
                                f"{new.value!r}; allowed: {names}.")


def _state(enum_cls: type[enum.Enum]) -> Enum:
    return Enum(enum_cls, native_enum=False, length=16, validate_strings=True,
                values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    """Declarative base of the job log."""


class Association(Base):
    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_aet: Mapped[str | None] = mapped_column(String(16))
    called_aet: Mapped[str | None] = mapped_column(String(16))
    peer_host: Mapped[str | None] = mapped_column(String(64))
    peer_port: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    state: Mapped[AssociationState] = mapped_column(_state(AssociationState), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    receiver: Mapped[str | None] = mapped_column(String(NODE_ID_LENGTH))  # nodes.node_id


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))  # SeriesDescription
    series_number: Mapped[int | None] = mapped_column(Integer)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    state: Mapped[SeriesState] = mapped_column(_state(SeriesState), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    routes_applied: Mapped[str | None] = mapped_column(Text)  # comma-separated route names
    generation: Mapped[int] = mapped_column(Integer, default=1)  # +1 when re-opened
    source_contrast: Mapped[str | None] = mapped_column(String(16))  # from the header rules
    warnings: Mapped[str | None] = mapped_column(Text)  # JSON list: impossible values dropped


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    n_received: Mapped[int] = mapped_column(Integer, default=1)  # > 1: duplicates arrived
    eligible: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_uid", "generation", "target", "destination",
                                       name="one_job_per_series_target_destination"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    route: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(String(64))  # destinations key or "caller"
    dest_ae_title: Mapped[str | None] = mapped_column(String(16))
    dest_host: Mapped[str | None] = mapped_column(String(64))
    dest_port: Mapped[int | None] = mapped_column(Integer)
    output_format: Mapped[str] = mapped_column(String(32))
    series_number_offset: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(_state(JobState), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # processing attempts
    send_attempts: Mapped[int] = mapped_column(Integer, default=0)  # in the current round
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime, index=True)
    retry_until: Mapped[dt.datetime | None] = mapped_column(DateTime)  # end of retry window
    derived_series_uid: Mapped[str] = mapped_column(String(64), index=True)
    derived_files: Mapped[str | None] = mapped_column(Text)  # JSON list, relative to out dir
    prompt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    process_seconds: Mapped[float | None] = mapped_column(Float)
    send_seconds: Mapped[float | None] = mapped_column(Float)  # all attempts together
    stage_seconds: Mapped[str | None] = mapped_column(Text)  # JSON {stage: s}, from the pipeline
    # The node process synthesizing or delivering the job, and until when that claim holds
    # without a heartbeat (None: nobody works on it now).
    claimed_by: Mapped[str | None] = mapped_column(String(NODE_ID_LENGTH))
    processed_by: Mapped[str | None] = mapped_column(String(NODE_ID_LENGTH))  # who synthesized
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, index=True)


class Delivery(Base):
    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)  # 1, 2, ... over the job's whole life
    dest_ae_title: Mapped[str | None] = mapped_column(String(16))
    dest_host: Mapped[str | None] = mapped_column(String(64))
    dest_port: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    status: Mapped[DeliveryStatus] = mapped_column(_state(DeliveryStatus))
    n_sent: Mapped[int] = mapped_column(Integer, default=0)  # success or warning
    n_warning: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    sender: Mapped[str | None] = mapped_column(String(NODE_ID_LENGTH))  # nodes.node_id


class DeliveryInstance(Base):
    __tablename__ = "delivery_instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)  # None: no response
    outcome: Mapped[str] = mapped_column(String(16))  # success | warning | failure


class Node(Base):
    """A node process (``rtfsyn serve``) that used the job log: its roles and heartbeat."""

    __tablename__ = "nodes"
    node_id: Mapped[str] = mapped_column(String(NODE_ID_LENGTH), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    roles: Mapped[str] = mapped_column(String(32))  # comma-separated: receive,process
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


# -- engine: one per database per process ----------------------------------------------
_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def configure_connection(dbapi_connection: Any) -> None:
    """WAL, ``synchronous=FULL``, foreign keys, a busy timeout, and manual transactions
    (so that BEGIN IMMEDIATE works): every connection to a SQLite job log gets these."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns (NORMAL could lose the last commits of an
    # OS crash or power loss, i.e. the rows of instances the node already acknowledged).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    configure_connection(dbapi_connection)


def _on_begin(connection: Any) -> None:
    # Take the write lock at the start: no deadlock when a reader later upgrades to a writer.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def database_url(location: str | Path) -> URL:
    """The SQLAlchemy URL of a job log given as a SQLite file path or a URL
    (``sqlite:///...`` or ``postgresql+psycopg://...``); a SQLite path is made absolute."""
    if isinstance(location, Path) or "://" not in str(location):
        return URL.create("sqlite", database=str(Path(location).resolve()))
    url = make_url(str(location))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=str(Path(url.database).resolve()))
    return url


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite job log (None for another database)."""
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database)


def _create_engine(url: URL) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Many threads (one per association, scheduler, workers, sender) share it.
        engine = create_engine(url, pool_size=8, max_overflow=56,
                               connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)
        return engine
    # A server database: a connection per busy thread, checked before use (a restarted
    # server or a dropped connection costs one retry, not a failed C-STORE).
    return create_engine(url, pool_size=8, max_overflow=24, pool_pre_ping=True)


def get_engine(location: str | Path) -> Engine:
    """The process-wide engine of the job log at ``location`` (a SQLite file path or a
    database URL); on first use its tables are created or upgraded
    (:func:`dicom_node.store.schema.upgrade`). Raises :class:`SchemaMismatch`."""
    from dicom_node.store.schema import upgrade

    url = database_url(location)
    key = url.render_as_string(hide_password=False)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _create_engine(url)
            path = sqlite_path(url)
            where = str(path) if path else url.render_as_string(hide_password=True)
            try:
                upgrade(engine, repr(where))
            except BaseException:
                engine.dispose()
                raise
            _ENGINES[key] = engine
            logger.debug("job log opened at %s", where)
        return engine


def session_factory(location: str | Path) -> Callable[[], Session]:
    """A session factory bound to :func:`get_engine` (objects stay usable after commit)."""
    return sessionmaker(bind=get_engine(location), expire_on_commit=False)
