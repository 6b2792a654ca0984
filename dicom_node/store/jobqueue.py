"""The job queue on top of the job log: claim, finish, deliver, recover, re-send.

Every change goes through :func:`dicom_node.store.db.check_transition`. Work that a
crash interrupts stays visible in the log and :meth:`JobQueue.recover` puts it
back: jobs left ``running`` are queued again (their output folder is rebuilt,
their derived Series Instance UID kept), deliveries left ``running`` are marked
failed and their jobs re-sent, associations left ``open`` become ``aborted``.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.config import ExportConfig
from dicom_node.store.db import (Association, AssociationState, Delivery, DeliveryInstance,
                                 DeliveryStatus, Job, JobState, check_transition, utcnow)
from dicom_node.store.joblog import DeliveryOutcome, JobLog, JobSpec, UnknownJob, job_spec

__all__ = ["JobQueue", "Recovery", "MAX_PROCESSING_ATTEMPTS"]

logger = logging.getLogger(__name__)
MAX_PROCESSING_ATTEMPTS = 3  # a job interrupted this often is failed, not retried forever


@dataclass(frozen=True)
class Recovery:
    """What :meth:`JobQueue.recover` found and did at start-up."""

    associations_aborted: int = 0
    jobs_requeued: int = 0
    jobs_failed: int = 0
    deliveries_interrupted: int = 0
    jobs_resending: int = 0


def _move(job: Job, new: JobState, reason: str | None) -> None:
    check_transition(job.state, new)
    job.state = new
    job.reason = reason


class JobQueue:
    """Queue operations on a :class:`~dicom_node.store.joblog.JobLog`."""

    def __init__(self, log: JobLog) -> None:
        self.log = log

    # -- synthesis ------------------------------------------------------------------------
    def claim_next(self) -> JobSpec | None:
        """Take the oldest ``queued`` job (-> ``running``); None when the queue is empty."""
        with self.log.transaction() as s:
            job = s.scalar(select(Job).where(Job.state == JobState.QUEUED)
                           .order_by(Job.id).limit(1))
            if job is None:
                return None
            _move(job, JobState.RUNNING, None)
            job.attempts += 1
            job.started_at = utcnow()
            return job_spec(job)

    def processed(self, job_id: int, files: list[str], prompt: str | None, seconds: float,
                  stage_seconds: dict[str, float] | None = None) -> None:
        """Synthesis done: ``files`` (relative to the job folder) wait for delivery;
        ``stage_seconds`` maps pipeline stages (assembly, synthesis, ...) to seconds."""
        with self.log.transaction() as s:
            job = self._get(s, job_id)
            _move(job, JobState.SENDING, None)
            job.derived_files = json.dumps(list(files))
            job.prompt = prompt
            job.processed_at = job.next_attempt_at = utcnow()
            job.process_seconds = seconds
            job.stage_seconds = json.dumps(stage_seconds) if stage_seconds else None
            job.send_attempts = 0

    def rejected(self, job_id: int, reason: str) -> None:
        """The series cannot be processed (reason is patient-free)."""
        self._finish(job_id, JobState.REJECTED, reason)

    def failed(self, job_id: int, reason: str) -> None:
        """Processing failed with an error."""
        self._finish(job_id, JobState.FAILED, reason)

    def _finish(self, job_id: int, state: JobState, reason: str) -> None:
        with self.log.transaction() as s:
            job = self._get(s, job_id)
            _move(job, state, reason)
            job.finished_at = utcnow()

    # -- delivery -------------------------------------------------------------------------
    def due_sends(self, limit: int = 10) -> list[JobSpec]:
        """Jobs in ``sending`` whose next attempt is due, oldest first."""
        with self.log.transaction() as s:
            rows = s.scalars(select(Job).where(Job.state == JobState.SENDING,
                                               Job.next_attempt_at <= utcnow())
                             .order_by(Job.next_attempt_at).limit(limit))
            return [job_spec(j) for j in rows]

    def begin_delivery(self, job_id: int, ae_title: str | None, host: str | None,
                       port: int | None) -> int:
        """Record the start of an export attempt; returns the delivery id."""
        with self.log.transaction() as s:
            attempt = 1 + s.scalar(select(func.count(Delivery.id))
                                   .where(Delivery.job_id == job_id))
            row = Delivery(job_id=job_id, attempt=attempt, dest_ae_title=ae_title,
                           dest_host=host, dest_port=port, status=DeliveryStatus.RUNNING)
            s.add(row)
            s.flush()
            return row.id

    def finish_delivery(self, delivery_id: int, outcome: DeliveryOutcome,
                        export: ExportConfig) -> JobState:
        """Record an attempt's outcome and move its job on: ``done``, another try
        after the back-off, or ``failed`` after ``export.max_attempts``."""
        now = utcnow()
        with self.log.transaction() as s:
            delivery = s.get(Delivery, delivery_id)
            if delivery is None:
                raise UnknownJob(f"no delivery with id {delivery_id}")
            check_transition(delivery.status, outcome.status)
            delivery.status, delivery.ended_at = outcome.status, now
            delivery.n_sent, delivery.n_warning = outcome.n_sent, outcome.n_warning
            delivery.n_failed, delivery.error = outcome.n_failed, outcome.error
            s.add_all(DeliveryInstance(delivery_id=delivery_id, sop_instance_uid=uid,
                                       status_code=code, outcome=result)
                      for uid, code, result in outcome.instances)
            job = self._get(s, delivery.job_id)
            job.send_attempts += 1
            spent = (now - delivery.started_at).total_seconds()
            job.send_seconds = (job.send_seconds or 0.0) + spent
            if outcome.status == DeliveryStatus.OK:
                _move(job, JobState.DONE, None)
                job.finished_at, job.next_attempt_at = now, None
            elif job.send_attempts >= export.max_attempts:
                _move(job, JobState.FAILED, f"delivery failed after {job.send_attempts} "
                                            f"attempt(s): {outcome.error}")
                job.finished_at, job.next_attempt_at = now, None
            else:
                wait = export.backoff(job.send_attempts)
                job.next_attempt_at = now + dt.timedelta(seconds=wait)
                job.reason = (f"attempt {job.send_attempts} of {export.max_attempts} failed "
                              f"({outcome.error}); next in {wait:g} s")
            return job.state

    # -- recovery and admin ---------------------------------------------------------------
    def recover(self) -> Recovery:
        """Put work interrupted by a crash or a stop back in order (run before serving)."""
        now = utcnow()
        counts = dict.fromkeys(Recovery.__dataclass_fields__, 0)
        with self.log.transaction() as s:
            for assoc in s.scalars(select(Association)
                                   .where(Association.state == AssociationState.OPEN)):
                check_transition(assoc.state, AssociationState.ABORTED)
                assoc.state, assoc.ended_at = AssociationState.ABORTED, now
                assoc.reason = "node stopped during the association"
                counts["associations_aborted"] += 1
            for delivery in s.scalars(select(Delivery)
                                      .where(Delivery.status == DeliveryStatus.RUNNING)):
                delivery.status, delivery.ended_at = DeliveryStatus.FAILED, now
                delivery.error = "interrupted: node stopped during the delivery"
                counts["deliveries_interrupted"] += 1
            for job in s.scalars(select(Job).where(Job.state == JobState.RUNNING)):
                if job.attempts >= MAX_PROCESSING_ATTEMPTS:
                    _move(job, JobState.FAILED, f"processing interrupted {job.attempts} times "
                                                "(node stopped while synthesizing)")
                    job.finished_at = now
                    counts["jobs_failed"] += 1
                else:
                    _move(job, JobState.QUEUED, "requeued: node stopped while synthesizing")
                    counts["jobs_requeued"] += 1
            for job in s.scalars(select(Job).where(Job.state == JobState.SENDING)):
                job.next_attempt_at = now
                counts["jobs_resending"] += 1
        recovery = Recovery(**counts)
        if any(counts.values()):
            logger.info("recovery after restart: %s", recovery)
        return recovery

    def requeue(self, job_id: int) -> JobState:
        """Admin re-send: a failed or done job is delivered again (or re-processed when it
        has no output); a sending job is retried now. Returns the job's new state."""
        with self.log.transaction() as s:
            job = self._get(s, job_id)
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                return job.state
            if job.state == JobState.REJECTED:
                raise ValueError(f"job {job_id} was rejected ({job.reason}); a rejected series "
                                 "is not re-sent.")
            has_output = bool(json.loads(job.derived_files or "[]"))
            if job.state != JobState.SENDING:
                new = JobState.SENDING if has_output else JobState.QUEUED
                _move(job, new, "re-send requested")
                job.finished_at = None
            job.send_attempts = 0
            job.next_attempt_at = utcnow()
            return job.state

    def failed_jobs(self) -> list[int]:
        """Ids of every ``failed`` job."""
        with self.log.transaction() as s:
            return list(s.scalars(select(Job.id).where(Job.state == JobState.FAILED)
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
