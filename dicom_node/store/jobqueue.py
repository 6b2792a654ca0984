"""The job queue on top of the job log: claim, finish, deliver, recover, re-send.

Every change goes through :func:`dicom_node.store.db.check_transition`. Work that a
crash interrupts stays visible in the log and :meth:`JobQueue.recover` puts it
back: jobs left ``running`` are queued again (their output folder is rebuilt,
their derived Series Instance UID kept), deliveries left ``running`` are marked
failed and their jobs re-sent, associations left ``open`` become ``aborted``.

Claims and leases. A worker claims a job (``queued`` -> ``running``) and a
sender claims a delivery in one transaction that locks the job row (``FOR
UPDATE SKIP LOCKED`` on PostgreSQL: two processes never take the same job, and
neither waits for the other). A claim names the node process
(``jobs.claimed_by``) and holds until ``jobs.lease_expires_at``, which the
process's heartbeat (:meth:`JobQueue.heartbeat`) pushes forward while it
synthesizes or sends. Every finishing step checks that the claim is still
its own (:class:`LostClaim` otherwise), so a process that lost its lease never
overwrites the work of the one that took the job over. On a job log of its own
(SQLite, one process) :meth:`JobQueue.recover` at start-up takes back
everything; on a shared one it takes back only what an expired lease or a
stopped receiver left (run periodically by every process).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, true, update
from sqlalchemy.orm import Session

from dicom_node.config import ExportConfig
from dicom_node.store.db import (Association, AssociationState, Delivery, DeliveryInstance,
                                 DeliveryStatus, Job, JobState, Series, SeriesState,
                                 check_transition, utcnow)
from dicom_node.store.joblog import DeliveryOutcome, JobLog, JobSpec, UnknownJob, job_spec
from dicom_node.store.nodes import live_nodes, touch_node

__all__ = ["JobQueue", "Recovery", "LostClaim", "MAX_PROCESSING_ATTEMPTS",
           "DEFAULT_LEASE_SECONDS"]

logger = logging.getLogger(__name__)
MAX_PROCESSING_ATTEMPTS = 3  # a job interrupted this often is failed, not retried forever
DEFAULT_LEASE_SECONDS = 30.0
_DELIVERABLE = (JobState.SENDING, JobState.WAITING)  # states the sender picks up when due


class LostClaim(RuntimeError):
    """The job is no longer this process's: its lease expired and it was taken back."""


@dataclass(frozen=True)
class Recovery:
    """What :meth:`JobQueue.recover` found and did at start-up."""

    associations_aborted: int = 0
    jobs_requeued: int = 0
    jobs_failed: int = 0
    deliveries_interrupted: int = 0
    jobs_resending: int = 0


def duration(seconds: float) -> str:
    """A duration for people: ``24 h``, ``90 min``, ``100 s`` (3 significant digits)."""
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _move(job: Job, new: JobState, reason: str | None) -> None:
    check_transition(job.state, new)
    job.state = new
    job.reason = reason


class JobQueue:
    """Queue operations on a :class:`~dicom_node.store.joblog.JobLog`."""

    def __init__(self, log: JobLog, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.log = log
        self.lease = dt.timedelta(seconds=lease_seconds)

    @property
    def worker(self) -> str:
        """The node process id that this queue's claims carry."""
        return self.log.node_id

    # -- synthesis ------------------------------------------------------------------------
    def claim_next(self) -> JobSpec | None:
        """Take the oldest ``queued`` job (-> ``running``, claimed by this process for one
        lease); None when the queue is empty. Jobs other processes are claiming at the
        same moment are skipped, not waited for."""
        now = utcnow()
        with self.log.transaction() as s:
            job = s.scalar(select(Job).where(Job.state == JobState.QUEUED)
                           .order_by(Job.id).limit(1).with_for_update(skip_locked=True))
            if job is None:
                return None
            _move(job, JobState.RUNNING, None)
            job.attempts += 1
            job.started_at = now
            job.claimed_by, job.lease_expires_at = self.worker, now + self.lease
            return job_spec(job)

    def _claimed(self, s: Session, job_id: int, attempt: int | None) -> Job:
        """The job row, locked, if this process still holds its ``running`` claim (of
        processing attempt ``attempt``, when given); else :class:`LostClaim`."""
        job = s.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
        if job is None:
            raise UnknownJob(f"no job with id {job_id}")
        if job.state != JobState.RUNNING or (attempt is not None and job.attempts != attempt) \
                or job.claimed_by not in (None, self.worker):
            raise LostClaim(f"job {job_id} is no longer claimed by {self.worker} (now "
                            f"{job.state.value}, attempt {job.attempts}, claimed by "
                            f"{job.claimed_by}); its result is discarded")
        job.lease_expires_at, job.processed_by = None, self.worker
        return job

    def processed(self, job_id: int, files: list[str], prompt: str | None, seconds: float,
                  stage_seconds: dict[str, float] | None = None, *,
                  attempt: int | None = None) -> None:
        """Synthesis done: ``files`` (relative to the job folder) wait for delivery;
        ``stage_seconds`` maps pipeline stages (assembly, synthesis, ...) to seconds.
        Raises :class:`LostClaim` when the claim (of ``attempt``) is gone."""
        with self.log.transaction() as s:
            job = self._claimed(s, job_id, attempt)
            _move(job, JobState.SENDING, None)
            job.derived_files = json.dumps(list(files))
            job.prompt = prompt
            job.processed_at = job.next_attempt_at = utcnow()
            job.process_seconds = seconds
            job.stage_seconds = json.dumps(stage_seconds) if stage_seconds else None
            job.send_attempts = 0
            job.retry_until = None  # the window opens at the first failed attempt

    def rejected(self, job_id: int, reason: str, *, attempt: int | None = None) -> None:
        """The series cannot be processed (reason is patient-free); :class:`LostClaim`.
        When every job of the series (this generation) is rejected, the series becomes
        ``not_eligible`` with the reason, so that it never shows ``routed`` with nothing
        coming."""
        with self.log.transaction() as s:
            job = self._claimed(s, job_id, attempt)
            _move(job, JobState.REJECTED, reason)
            job.finished_at = utcnow()
            states = set(s.scalars(select(Job.state).where(
                Job.series_uid == job.series_uid, Job.generation == job.generation)))
            series = s.scalar(select(Series).where(Series.series_uid == job.series_uid))
            if states == {JobState.REJECTED} and series is not None \
                    and series.state == SeriesState.ROUTED \
                    and series.generation == job.generation:
                check_transition(series.state, SeriesState.NOT_ELIGIBLE)
                series.state, series.reason = SeriesState.NOT_ELIGIBLE, reason

    def failed(self, job_id: int, reason: str, *, attempt: int | None = None) -> None:
        """Processing failed with an error; :class:`LostClaim` as :meth:`processed`."""
        self._finish(job_id, JobState.FAILED, reason, attempt)

    def _finish(self, job_id: int, state: JobState, reason: str, attempt: int | None) -> None:
        with self.log.transaction() as s:
            job = self._claimed(s, job_id, attempt)
            _move(job, state, reason)
            job.finished_at = utcnow()

    # -- delivery -------------------------------------------------------------------------
    @staticmethod
    def _unclaimed(now: dt.datetime) -> Any:
        return or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)

    def due_sends(self, limit: int = 10) -> list[JobSpec]:
        """Jobs ``sending`` or ``waiting`` whose next attempt is due and that no process is
        delivering, oldest first (a hint: :meth:`begin_delivery` claims)."""
        now = utcnow()
        with self.log.transaction() as s:
            rows = s.scalars(select(Job).where(Job.state.in_(_DELIVERABLE),
                                               Job.next_attempt_at <= now, self._unclaimed(now))
                             .order_by(Job.next_attempt_at).limit(limit))
            return [job_spec(j) for j in rows]

    def begin_delivery(self, job_id: int, ae_title: str | None, host: str | None,
                       port: int | None, *, if_due: bool = False) -> int | None:
        """Claim the job's delivery for one lease and record the start of an export
        attempt (a ``waiting`` job becomes ``sending``); returns the delivery id, or None
        when the job is neither ``sending`` nor ``waiting``, another process is delivering
        it, or (``if_due``) its next attempt is not due."""
        now = utcnow()
        with self.log.transaction() as s:
            query = select(Job).where(Job.id == job_id, Job.state.in_(_DELIVERABLE),
                                      self._unclaimed(now))
            if if_due:
                query = query.where(Job.next_attempt_at <= now)
            job = s.scalar(query.with_for_update(skip_locked=True))
            if job is None:
                return None
            if job.state == JobState.WAITING:
                _move(job, JobState.SENDING, job.reason)
            # a delivery still running has lost its sender (the lease ran out before any
            # recovery ended it): end it here, atomically with taking the job over
            self._interrupt_deliveries(s, job, now, self._gone())
            job.claimed_by, job.lease_expires_at = self.worker, now + self.lease
            attempt = 1 + s.scalar(select(func.count(Delivery.id))
                                   .where(Delivery.job_id == job_id))
            row = Delivery(job_id=job_id, attempt=attempt, dest_ae_title=ae_title,
                           dest_host=host, dest_port=port, status=DeliveryStatus.RUNNING,
                           sender=self.worker, started_at=now)
            s.add(row)
            s.flush()
            return row.id

    def finish_delivery(self, delivery_id: int, outcome: DeliveryOutcome,
                        export: ExportConfig) -> JobState:
        """Record an attempt's outcome and move its job on: ``done``; ``waiting`` for the
        next try after the back-off; ``failed`` once the retry window (from the first
        failed attempt) has passed, or after ``export.max_attempts`` when that is set."""
        now = utcnow()
        with self.log.transaction() as s:
            delivery = s.get(Delivery, delivery_id)
            if delivery is None:
                raise UnknownJob(f"no delivery with id {delivery_id}")
            job = s.scalars(select(Job).where(Job.id == delivery.job_id)
                            .with_for_update()).one()
            if delivery.status != DeliveryStatus.RUNNING:  # given up: the lease expired
                logger.warning("delivery %d of job %d ended (%s) after it was given up as "
                               "interrupted; job left %s", delivery_id, job.id,
                               outcome.status.value, job.state.value)
                return job.state
            check_transition(delivery.status, outcome.status)
            delivery.status, delivery.ended_at = outcome.status, now
            delivery.n_sent, delivery.n_warning = outcome.n_sent, outcome.n_warning
            delivery.n_failed, delivery.error = outcome.n_failed, outcome.error
            s.add_all(DeliveryInstance(delivery_id=delivery_id, sop_instance_uid=uid,
                                       status_code=code, outcome=result)
                      for uid, code, result in outcome.instances)
            if job.claimed_by == delivery.sender:
                job.lease_expires_at = None
            job.send_attempts += 1
            spent = (now - delivery.started_at).total_seconds()
            job.send_seconds = (job.send_seconds or 0.0) + spent
            if outcome.status == DeliveryStatus.OK:
                _move(job, JobState.DONE, None)
                job.finished_at, job.next_attempt_at = now, None
                return job.state
            if job.retry_until is None:
                job.retry_until = delivery.started_at + dt.timedelta(
                    seconds=export.retry_window_seconds)
            wait = export.backoff(job.send_attempts)
            next_at = now + dt.timedelta(seconds=wait)
            limit = export.max_attempts
            if (limit is not None and job.send_attempts >= limit) or next_at > job.retry_until:
                why = (f"export.max_attempts = {limit} reached" if limit is not None
                       and job.send_attempts >= limit else f"the retry window of "
                       f"{duration(export.retry_window_seconds)} ends before the next attempt")
                _move(job, JobState.FAILED, f"delivery failed after {job.send_attempts} "
                                            f"attempt(s): {outcome.error} ({why})")
                job.finished_at, job.next_attempt_at = now, None
            else:
                _move(job, JobState.WAITING,
                      f"waiting for destination {job.destination}: attempt "
                      f"{job.send_attempts} failed ({outcome.error}); next attempt at "
                      f"{next_at.isoformat(timespec='seconds')}Z (in {wait:g} s), retrying "
                      f"until {job.retry_until.isoformat(timespec='seconds')}Z")
                job.next_attempt_at = next_at
            return job.state

    # -- recovery and admin ---------------------------------------------------------------
    def recover(self) -> Recovery:
        """Put interrupted work back in order. On a job log of its own (SQLite; run before
        serving) everything left running or open; on a shared one only the work of
        processes whose lease expired, and the open associations of receivers that
        stopped (run at start-up and then periodically)."""
        now = utcnow()
        counts = dict.fromkeys(Recovery.__dataclass_fields__, 0)
        shared = self.log.shared
        gone = self._gone()
        with self.log.transaction() as s:
            assocs = select(Association).where(Association.state == AssociationState.OPEN)
            if shared:
                assocs = assocs.where(Association.receiver.not_in(live_nodes(now, self.lease)))
            for assoc in s.scalars(assocs.with_for_update(skip_locked=True)):
                check_transition(assoc.state, AssociationState.ABORTED)
                assoc.state, assoc.ended_at = AssociationState.ABORTED, now
                assoc.reason = ("receiver stopped during the association" if shared else
                                "node stopped during the association")
                counts["associations_aborted"] += 1
            expired = and_(Job.lease_expires_at.is_not(None), Job.lease_expires_at < now) \
                if shared else true()
            for job in s.scalars(select(Job).where(Job.state.in_([JobState.RUNNING,
                                                                  JobState.SENDING]), expired)
                                 .with_for_update(skip_locked=True)):
                self._take_back(s, job, now, gone, counts)
        recovery = Recovery(**counts)
        if any(counts.values()):
            logger.info("recovery (%s): %s", "expired leases" if shared else "after restart",
                        recovery)
        return recovery

    def _take_back(self, s: Session, job: Job, now: dt.datetime, gone: str,
                   counts: dict[str, int]) -> None:
        """Requeue (or fail) an interrupted synthesis; end an interrupted delivery and send
        the job again now."""
        who = f" ({job.claimed_by})" if job.claimed_by and self.log.shared else ""
        if job.state == JobState.SENDING:
            counts["deliveries_interrupted"] += self._interrupt_deliveries(s, job, now, gone)
            job.next_attempt_at = now
            counts["jobs_resending"] += 1
        elif job.attempts >= MAX_PROCESSING_ATTEMPTS:
            _move(job, JobState.FAILED, f"processing interrupted {job.attempts} times "
                                        f"({gone} while synthesizing{who})")
            job.finished_at = now
            counts["jobs_failed"] += 1
        else:
            _move(job, JobState.QUEUED, f"requeued: {gone} while synthesizing{who}")
            counts["jobs_requeued"] += 1
        job.lease_expires_at = None

    def _gone(self) -> str:
        """Why work of another process is taken back, for reasons and errors."""
        return "its lease expired" if self.log.shared else "node stopped"

    def _interrupt_deliveries(self, s: Session, job: Job, now: dt.datetime,
                              gone: str) -> int:
        """Mark the job's deliveries still ``running`` failed as interrupted (their
        sender is gone; the caller holds the job row's lock); returns how many."""
        who = f" ({job.claimed_by})" if job.claimed_by and self.log.shared else ""
        stale = list(s.scalars(select(Delivery).where(
            Delivery.job_id == job.id, Delivery.status == DeliveryStatus.RUNNING)))
        for delivery in stale:
            check_transition(delivery.status, DeliveryStatus.FAILED)
            delivery.status, delivery.ended_at = DeliveryStatus.FAILED, now
            delivery.error = f"interrupted: {gone} during the delivery{who}"
        return len(stale)

    def heartbeat(self) -> int:
        """Extend the lease of every job this process is synthesizing or delivering, and
        mark the process alive; returns how many leases were extended."""
        now = utcnow()
        with self.log.transaction() as s:
            extended = s.execute(
                update(Job).where(Job.claimed_by == self.worker,
                                  Job.lease_expires_at.is_not(None),
                                  Job.state.in_([JobState.RUNNING, JobState.SENDING]))
                .values(lease_expires_at=now + self.lease)
                .execution_options(synchronize_session=False)).rowcount
            touch_node(s, self.worker, now)
        return int(extended or 0)

    def release_claims(self) -> int:
        """End the leases of this process's claims now (at a clean stop): on a shared job
        log another process takes the work over at its next recovery instead of after a
        lease; a result this process still records is then discarded (:class:`LostClaim`).
        Returns how many claims were released."""
        now = utcnow()
        with self.log.transaction() as s:
            released = s.execute(
                update(Job).where(Job.claimed_by == self.worker, Job.lease_expires_at > now)
                .values(lease_expires_at=now)
                .execution_options(synchronize_session=False)).rowcount
        return int(released or 0)

    def requeue(self, job_id: int) -> JobState:
        """Admin re-send: a failed or done job is delivered again (or re-processed when it
        has no output); a sending or waiting job is retried now. The retry window starts
        afresh. Returns the job's new state."""
        with self.log.transaction() as s:
            job = self._get(s, job_id)
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                return job.state
            if job.state == JobState.REJECTED:
                raise ValueError(f"job {job_id} was rejected ({job.reason}); a rejected series "
                                 "is not re-sent.")
            has_output = bool(json.loads(job.derived_files or "[]"))
            if job.state != JobState.SENDING:
                new = JobState.SENDING if has_output or job.state == JobState.WAITING \
                    else JobState.QUEUED
                _move(job, new, "re-send requested")
                job.finished_at = None
            job.send_attempts = 0
            job.retry_until = None
            job.next_attempt_at = utcnow()
            return job.state

    def failed_jobs(self) -> list[int]:
        """Ids of every ``failed`` job."""
        return self.jobs_in(JobState.FAILED)

    def jobs_in(self, *states: JobState) -> list[int]:
        """Ids of every job in one of ``states``, oldest first."""
        with self.log.transaction() as s:
            return list(s.scalars(select(Job.id).where(Job.state.in_(states))
                                  .order_by(Job.id)))

    def job(self, job_id: int) -> JobSpec:
        """A snapshot of one job; raises :class:`~dicom_node.store.joblog.UnknownJob`."""
        with self.log.transaction() as s:
            return job_spec(self._get(s, job_id))

    @staticmethod
    def _get(s: Session, job_id: int) -> Job:
        job = s.get(Job, job_id)
        if job is None:
            raise UnknownJob(f"no job with id {job_id}")
        return job
