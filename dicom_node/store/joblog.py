"""Operations on the job log that the SCP, the scheduler and the CLI share.

Each method is one short transaction (``BEGIN IMMEDIATE`` on SQLite), so every
state change is atomic and survives a crash: after a restart
:meth:`dicom_node.store.jobqueue.JobQueue.recover` puts interrupted work back in the
queue. Objects handed out are frozen snapshots, never live ORM rows.

On a database that several node processes share (PostgreSQL), the rows a
method changes are locked first (``SELECT ... FOR UPDATE``; ``SKIP LOCKED``
where another process may take the row instead), so two receivers recording
instances of one series, or two schedulers completing it, never lose an
update or route it twice. SQLite has one writer at a time and ignores these
clauses.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import os
import secrets
import socket
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import (Association, AssociationState, DeliveryStatus, Instance, Job,
                                 JobState, Series, SeriesState, check_transition, database_url,
                                 get_engine, sqlite_path, utcnow)
from dicom_node.store.joblog_fast import writer_for

__all__ = ["DATABASE_ERRORS", "InstanceRecord", "PlannedJob", "JobSpec", "DeliveryOutcome",
           "JobLog", "UnknownJob", "InstanceConflict", "REOPENABLE", "job_spec", "new_node_id"]

logger = logging.getLogger(__name__)
REOPENABLE = (SeriesState.ROUTED, SeriesState.IGNORED, SeriesState.NOT_ELIGIBLE)
# What a job-log operation raises when the database fails (ORM paths, raw sqlite3 hot path).
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, sqlite3.Error)



def new_node_id() -> str:
    """An id for this node process, unique across hosts and restarts: host, pid, random."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(4)}"


class UnknownJob(LookupError):
    """No job with the given id."""


class InstanceConflict(ValueError):
    """A SOP Instance UID that is already recorded under another series or study arrived
    again: a UID collision, refused so that no series ever takes another's data."""


@dataclass(frozen=True)
class InstanceRecord:
    """What the SCP learnt about one received instance (no patient data)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    series_uid: str
    study_uid: str
    path: Path
    size_bytes: int
    association_id: int | None
    eligible: bool
    reason: str | None = None
    modality: str | None = None
    description: str | None = None
    series_number: int | None = None


@dataclass(frozen=True)
class PlannedJob:
    """A job that routing decided on; the endpoint is resolved at planning time."""

    route: str
    target: str
    destination: str
    dest_ae_title: str | None
    dest_host: str | None
    dest_port: int | None
    output_format: str
    series_number_offset: int


@dataclass(frozen=True)
class JobSpec(PlannedJob):
    """A snapshot of a job, as workers and the sender see it: its plan and its row."""

    id: int
    series_uid: str
    generation: int
    derived_series_uid: str
    attempts: int
    send_attempts: int
    derived_files: tuple[str, ...]  # relative to the job's output folder


@dataclass(frozen=True)
class DeliveryOutcome:
    """One export attempt. ``instances``: (SOP Instance UID, status code or None, outcome)."""

    status: DeliveryStatus
    n_sent: int = 0
    n_warning: int = 0
    n_failed: int = 0
    error: str | None = None
    instances: tuple[tuple[str, int | None, str], ...] = ()


def job_spec(job: Job) -> JobSpec:
    """A frozen snapshot of a job row."""
    plan = {f.name: getattr(job, f.name) for f in dataclasses.fields(PlannedJob)}
    return JobSpec(**plan, id=job.id, series_uid=job.series_uid, generation=job.generation,
                   derived_series_uid=job.derived_series_uid, attempts=job.attempts,
                   send_attempts=job.send_attempts,
                   derived_files=tuple(json.loads(job.derived_files or "[]")))


def _set(row: Series | Job | Association, new: enum.Enum, reason: str | None = None) -> None:
    """Change ``row.state`` (checked against the transition table) and its reason."""
    check_transition(row.state, new)
    row.state = new
    row.reason = reason


class JobLog:
    """The job log at ``database``: a SQLite file path or a database URL (engine shared
    process-wide). ``node_id`` names this process in the rows it claims or writes
    (default: :func:`new_node_id`, one per :class:`JobLog`)."""

    def __init__(self, database: str | Path, node_id: str | None = None) -> None:
        self.url = database_url(database)
        self.engine = get_engine(self.url)  # creates or upgrades the tables first
        self.path = sqlite_path(self.url)  # None on a server database
        self.shared = self.path is None  # other node processes may use it at the same time
        self.where = str(self.path) if self.path else \
            self.url.render_as_string(hide_password=True)
        self.node_id = node_id or new_node_id()
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._writer = writer_for(self.engine)

    def session(self) -> Session:
        """A new session (use ``with log.session() as s, s.begin(): ...``)."""
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One committed transaction (rolled back on error)."""
        with self._sessions() as s, s.begin():
            yield s

    # -- associations ------------------------------------------------------------------
    def open_association(self, calling: str, called: str, host: str | None,
                         port: int | None) -> int:
        """Record an association request; returns its id."""
        with self.transaction() as s:
            row = Association(calling_aet=calling, called_aet=called, peer_host=host,
                              peer_port=port, state=AssociationState.OPEN,
                              receiver=self.node_id)
            s.add(row)
            s.flush()
            return row.id

    def end_association(self, assoc_id: int, state: AssociationState,
                        reason: str | None = None) -> bool:
        """Close an open association as released/aborted/rejected; False if already closed."""
        with self.transaction() as s:
            row = s.get(Association, assoc_id)
            if row is None or row.state != AssociationState.OPEN:
                return False
            _set(row, state, reason)
            row.ended_at = utcnow()
            return True

    # -- instances and series --------------------------------------------------------------
    def record_instance(self, rec: InstanceRecord) -> bool:
        """Record a received instance; True if new, False for a duplicate SOP Instance UID.

        A duplicate updates the file and, unless the earlier copy came on a
        cleanly released association, the association it counts for. New
        instances re-open a routed series (next generation); duplicates do not.
        Raises :class:`InstanceConflict` when the UID is recorded under another
        series or study (nothing is changed), one of :data:`DATABASE_ERRORS` when the
        database fails. Committed when it returns; on disk too, except a new instance of
        a receiving series, whose row an OS crash can still lose until the log's next
        sync (the spool is then the record: :mod:`dicom_node.store.joblog_fast`).
        """
        now = utcnow()
        if self._record_new_instance(rec, now):
            return True
        try:
            return self._record_in_full(rec, now)
        except IntegrityError:  # another receiver recorded the same UID meanwhile: now a duplicate
            return self._record_in_full(rec, now)

    def _record_in_full(self, rec: InstanceRecord, now: dt.datetime) -> bool:
        """:meth:`record_instance` on the ORM, the series row locked."""
        with self.transaction() as s:
            inst = s.scalar(select(Instance).where(
                Instance.sop_instance_uid == rec.sop_instance_uid).with_for_update())
            if inst is not None and (inst.series_uid, inst.study_uid) != (rec.series_uid,
                                                                          rec.study_uid):
                raise InstanceConflict(
                    f"SOP Instance UID {rec.sop_instance_uid} is already recorded in series "
                    f"{inst.series_uid} (study {inst.study_uid}); a second instance with that "
                    f"UID in series {rec.series_uid} (study {rec.study_uid}) is refused")
            series = self._locked_series(s, rec, now)
            if inst is None:
                s.add(Instance(sop_instance_uid=rec.sop_instance_uid,
                               sop_class_uid=rec.sop_class_uid,
                               transfer_syntax_uid=rec.transfer_syntax_uid,
                               series_uid=rec.series_uid, study_uid=rec.study_uid,
                               path=str(rec.path), size_bytes=rec.size_bytes,
                               association_id=rec.association_id, received_at=now,
                               eligible=rec.eligible, reason=rec.reason))
                series.n_instances += 1
                if series.state in REOPENABLE:
                    series.generation += 1
                    _set(series, SeriesState.RECEIVING, "re-opened: new instances arrived")
                elif series.state in (SeriesState.COMPLETE, SeriesState.PARTIAL):
                    _set(series, SeriesState.RECEIVING)
            else:
                self._duplicate(s, inst, rec, series, now)
            if series.state == SeriesState.RECEIVING:
                series.last_received_at = now
            if rec.association_id is not None:
                assoc = s.get(Association, rec.association_id)
                if assoc is not None:
                    assoc.n_instances += 1
            s.flush()
            return inst is None

    @staticmethod
    def _locked_series(s: Session, rec: InstanceRecord, now: dt.datetime) -> Series:
        """The instance's series row, created if new, locked until the transaction ends (a
        receiver that creates the same series at the same time waits, then finds it)."""
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        s.execute(insert(Series).values(
            series_uid=rec.series_uid, study_uid=rec.study_uid, modality=rec.modality,
            description=rec.description, series_number=rec.series_number, n_instances=0,
            generation=1, state=SeriesState.RECEIVING, first_received_at=now,
            last_received_at=now).on_conflict_do_nothing(index_elements=["series_uid"]))
        return s.scalars(select(Series).where(Series.series_uid == rec.series_uid)
                         .with_for_update()).one()

    def _record_new_instance(self, rec: InstanceRecord, now: dt.datetime) -> bool:
        """The common case, a new instance of a series that is receiving (no state change),
        on raw sqlite3 (:mod:`dicom_node.store.joblog_fast`). False, with nothing written, for
        every other case, which :meth:`record_instance` then handles in full."""
        return self._writer.record_new(rec, now)

    @staticmethod
    def _duplicate(s: Session, inst: Instance, rec: InstanceRecord, series: Series,
                   now: dt.datetime) -> None:
        inst.n_received += 1
        inst.path, inst.size_bytes, inst.received_at = str(rec.path), rec.size_bytes, now
        previous = s.get(Association, inst.association_id) if inst.association_id else None
        if previous is None or previous.state != AssociationState.RELEASED:
            inst.association_id = rec.association_id
        if series.state == SeriesState.PARTIAL:
            _set(series, SeriesState.RECEIVING)

    def instance_uids(self, series_uid: str) -> set[str]:
        """SOP Instance UIDs recorded in a series (spool recovery compares them with the
        files of its folder)."""
        with self.transaction() as s:
            return set(s.scalars(select(Instance.sop_instance_uid)
                                 .where(Instance.series_uid == series_uid)))

    def complete_quiet_series(self, stable_seconds: float) -> list[str]:
        """Move quiet ``receiving`` series to ``complete`` (or ``partial``); returns the UIDs
        that became complete. A series with an instance on an open association waits."""
        cutoff = utcnow() - dt.timedelta(seconds=stable_seconds)
        completed = []
        with self.transaction() as s:
            quiet = s.scalars(select(Series).where(Series.state == SeriesState.RECEIVING,
                                                   Series.last_received_at <= cutoff)
                              .with_for_update(skip_locked=True)).all()
            for series in quiet:
                counts = dict(s.execute(
                    select(Association.state, func.count(Instance.id))
                    .join(Association, Instance.association_id == Association.id)
                    .where(Instance.series_uid == series.series_uid)
                    .group_by(Association.state)).all())
                if counts.get(AssociationState.OPEN):
                    continue
                if counts.get(AssociationState.RELEASED):
                    _set(series, SeriesState.COMPLETE)
                    series.completed_at = utcnow()
                    completed.append(series.series_uid)
                else:
                    aborted = counts.get(AssociationState.ABORTED, 0)
                    _set(series, SeriesState.PARTIAL,
                         f"no instance arrived on a cleanly released association "
                         f"({aborted} from aborted associations); nothing triggered")
                    logger.warning("series %s is partial: %d instance(s), all from aborted "
                                   "associations", series.series_uid, aborted)
        return completed

    def series_to_route(self) -> list[tuple[str, int]]:
        """(Series Instance UID, generation) of every ``complete`` series."""
        with self.transaction() as s:
            return [(r.series_uid, r.generation) for r in s.scalars(
                select(Series).where(Series.state == SeriesState.COMPLETE)
                .order_by(Series.completed_at))]

    def released_instances(self, series_uid: str, *, eligible_only: bool = True) -> list[Path]:
        """Spool paths of the series' instances that came on released associations."""
        with self.transaction() as s:
            query = (select(Instance.path)
                     .join(Association, Instance.association_id == Association.id)
                     .where(Instance.series_uid == series_uid,
                            Association.state == AssociationState.RELEASED))
            if eligible_only:
                query = query.where(Instance.eligible.is_(True))
            return sorted(Path(p) for p in s.scalars(query))

    def caller_of(self, series_uid: str) -> tuple[str | None, str | None]:
        """(calling AE title, peer host) of the latest released association of the series."""
        with self.transaction() as s:
            row = s.execute(
                select(Association.calling_aet, Association.peer_host)
                .join(Instance, Instance.association_id == Association.id)
                .where(Instance.series_uid == series_uid,
                       Association.state == AssociationState.RELEASED)
                .order_by(Association.id.desc()).limit(1)).first()
            return (row[0], row[1]) if row else (None, None)

    def study_companions(self, series_uid: str) -> list[tuple[str, SeriesState]]:
        """The other series of ``series_uid``'s study, newest first: (Series Instance UID, state)."""
        with self.transaction() as s:
            study = s.scalar(select(Series.study_uid).where(Series.series_uid == series_uid))
            if study is None:
                return []
            rows = s.execute(select(Series.series_uid, Series.state)
                             .where(Series.study_uid == study, Series.series_uid != series_uid)
                             .order_by(Series.last_received_at.desc(), Series.id.desc()))
            return [(uid, state) for uid, state in rows]

    def is_derived_series(self, series_uid: str) -> bool:
        """True when a job of this node produced (or will produce) that series UID."""
        with self.transaction() as s:
            return s.scalar(select(func.count(Job.id)).where(
                Job.derived_series_uid == series_uid)) > 0

    def apply_routing(self, series_uid: str, generation: int, jobs: Sequence[PlannedJob],
                      state: SeriesState, reason: str | None, routes_applied: Sequence[str],
                      failed: Mapping[int, str] | None = None, *,
                      source_contrast: str | None = None,
                      warnings: Sequence[str] = ()) -> int:
        """Atomically create ``jobs`` and set the series state; returns the jobs created.

        ``source_contrast`` and ``warnings`` (impossible protocol values that were
        dropped) are recorded on the series. ``failed`` maps a job's index to the reason
        it cannot run (created
        ``failed``, visible and re-sendable once the configuration is fixed).
        Does nothing if the series changed meanwhile (re-opened or already
        routed); a job that exists for the same (series, generation, target,
        destination) is not created twice.
        """
        failed = failed or {}
        created = 0
        with self.transaction() as s:
            series = s.scalar(select(Series).where(Series.series_uid == series_uid)
                              .with_for_update())
            if series is None or series.state != SeriesState.COMPLETE \
                    or series.generation != generation:
                return 0
            for index, plan in enumerate(jobs):
                exists = s.scalar(select(func.count(Job.id)).where(
                    Job.series_uid == series_uid, Job.generation == generation,
                    Job.target == plan.target, Job.destination == plan.destination))
                if exists:
                    continue
                s.add(Job(series_uid=series_uid, generation=generation, route=plan.route,
                          target=plan.target, destination=plan.destination,
                          dest_ae_title=plan.dest_ae_title, dest_host=plan.dest_host,
                          dest_port=plan.dest_port, output_format=plan.output_format,
                          series_number_offset=plan.series_number_offset,
                          state=JobState.FAILED if index in failed else JobState.QUEUED,
                          reason=failed.get(index), derived_series_uid=generate_uid()))
                created += 1
            _set(series, state, reason)
            series.routes_applied = ",".join(routes_applied) or None
            series.source_contrast = source_contrast
            series.warnings = json.dumps(list(warnings)) if warnings else None
        return created
