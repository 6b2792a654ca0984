"""Series completion, routing, synthesis workers and the export queue.

Four kinds of threads share the job log (the first with the ``receive`` role,
workers and sender with ``process``; ``[node] roles``):

* the **scheduler loop** marks a ``receiving`` series ``complete`` after
  ``stable_seconds`` without new instances (only instances that came on
  cleanly released associations count; a series whose instances all came on
  aborted associations becomes ``partial`` and triggers nothing), then applies
  the routes (jobs, or ``ignored`` / ``not_eligible`` with a reason);
* **workers** (``[node] workers``) claim queued jobs and run the processor
  (assemble -> condition -> synthesize -> encode), so receiving never waits
  for synthesis;
* the **sender** delivers finished jobs, retrying with exponential back-off
  up to ``[export] max_attempts``; every attempt is a ``deliveries`` row;
* the **lease keeper** beats the heartbeat of this process's claims every third
  of ``[node] lease_seconds`` and, on a shared job log, takes back the work of
  processes whose lease expired (:meth:`~dicom_node.store.jobqueue.JobQueue.recover`).

A job's derived Series Instance UID is fixed when the job is created, so a job
processed again after a crash produces the same series and a destination
de-duplicates what it already has. Each processing attempt writes into its own
folder, ``out/job-<id>/attempt-<n>``: a worker that lost its claim never writes
into the folder of the one that took the job over, and its result is discarded
(:class:`~dicom_node.store.jobqueue.LostClaim`).
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydicom import dcmread

from dicom_node.config import ROLES, Config
from dicom_node.store.db import DeliveryStatus, SeriesState
from dicom_node.errors import RejectedSeries
from dicom_node.store.jobqueue import JobQueue, LostClaim
from dicom_node.store.joblog import DeliveryOutcome, JobLog, JobSpec
from dicom_node.schedule.routes import plan_routes
from dicom_node.send.destinations import job_endpoint
from dicom_node.send.sender import send_files

__all__ = ["ProcessResult", "Processor", "Scheduler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessResult:
    """What a processor made: the derived files (inside the job folder) and the prompt."""

    files: list[Path]
    prompt: str | None = None
    extra: dict = field(default_factory=dict)


# processor(job, source files (released, eligible), empty output folder) -> result
Processor = Callable[[JobSpec, list[Path], Path], ProcessResult]


class Scheduler:
    """Owns the loop, worker and sender threads; :meth:`tick`, :meth:`run_one_job` and
    :meth:`send_due` are also callable directly (tests, tools)."""

    def __init__(self, config: Config, log: JobLog, processor: Processor) -> None:
        self.config, self.log, self.processor = config, log, processor
        self.queue = JobQueue(log, config.node.lease_seconds)
        self.poll_seconds = min(1.0, max(0.05, config.node.stable_seconds / 5.0))
        self._stop = threading.Event()
        self._work = threading.Event()
        self._sendable = threading.Event()  # a job was processed: deliver it now
        self._threads: list[threading.Thread] = []

    # -- threads --------------------------------------------------------------------------
    def start(self, roles: tuple[str, ...] = ROLES) -> None:
        """Start the threads of ``roles``: the loop (``receive``), ``[node] workers``
        worker threads and the sender (``process``), and the lease keeper."""
        if self._threads:
            raise RuntimeError("the scheduler is already running")
        self._stop.clear()
        targets = [("rtfsyn-lease", self._lease_loop)]
        if "receive" in roles:
            targets.append(("rtfsyn-scheduler", self._loop))
        if "process" in roles:
            targets.append(("rtfsyn-sender", self._sender_loop))
            targets += [(f"rtfsyn-worker-{i}", self._worker_loop)
                        for i in range(self.config.node.workers)]
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> bool:
        """Ask every thread to stop and wait up to ``timeout`` s. A job still being
        synthesized then stays ``running`` in the log and is re-queued at the next
        start. Returns True when every thread ended."""
        self._stop.set()
        self._work.set()
        self._sendable.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            logger.warning("still busy at shutdown (left recoverable): %s", ", ".join(alive))
        self._threads = []
        return not alive

    def _guarded(self, name: str, step: Callable[[], bool]) -> bool:
        """Run one step; a failure is logged and the thread carries on."""
        try:
            return step()
        except Exception:  # a background thread must survive any one bad step
            logger.exception("%s step failed; retrying in %.2f s", name, self.poll_seconds)
            return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._guarded("scheduler", self.tick)
            self._stop.wait(self.poll_seconds)

    def _lease_loop(self) -> None:
        interval = self.config.node.lease_seconds / 3.0
        while not self._stop.wait(interval):
            self._guarded("lease", self.keep_leases)

    def keep_leases(self) -> bool:
        """Beat this process's heartbeat; on a shared job log, take back expired work
        (and wake the workers and the sender for it). True if work was taken back."""
        self.queue.heartbeat()
        if not self.log.shared:
            return False
        recovery = self.queue.recover()
        if recovery.jobs_requeued or recovery.jobs_resending:
            self._work.set()
            self._sendable.set()
            return True
        return False

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            if not self._guarded("worker", self.run_one_job):
                self._work.wait(self.poll_seconds)
                self._work.clear()

    def _sender_loop(self) -> None:
        while not self._stop.is_set():
            self._sendable.clear()
            if not self._guarded("sender", self.send_due):
                self._sendable.wait(self.poll_seconds)

    # -- completion and routing ----------------------------------------------------------
    def tick(self) -> bool:
        """Complete quiet series and route complete ones; True if jobs were created."""
        for uid in self.log.complete_quiet_series(self.config.node.stable_seconds):
            logger.info("series %s complete", uid)
        created = 0
        for series_uid, generation in self.log.series_to_route():
            created += self.route_series(series_uid, generation)
        if created:
            self._work.set()
        return created > 0

    def route_series(self, series_uid: str, generation: int) -> int:
        """Apply the routes to one complete series; returns the number of jobs created."""
        files = self.log.released_instances(series_uid)
        if not files:
            return self.log.apply_routing(series_uid, generation, [], SeriesState.NOT_ELIGIBLE,
                                          "no eligible instance (SOP class not eligible)", [])
        try:
            header = dcmread(files[0], stop_before_pixels=True)
        except Exception as exc:  # a spooled file that cannot be parsed: record, not crash
            return self.log.apply_routing(
                series_uid, generation, [], SeriesState.NOT_ELIGIBLE,
                f"cannot read the series header: {type(exc).__name__}", [])
        cfg = self.config
        decision = plan_routes(header, cfg.routes, destinations=cfg.destinations,
                               callers=cfg.callers, caller=self.log.caller_of(series_uid),
                               is_ours=self.log.is_derived_series)
        created = self.log.apply_routing(series_uid, generation, decision.jobs, decision.state,
                                         decision.reason, decision.routes, decision.failed)
        logger.info("series %s %s%s: %d job(s)", series_uid, decision.state.value,
                    f" ({decision.reason})" if decision.reason else "", created)
        return created

    # -- synthesis ------------------------------------------------------------------------
    def job_dir(self, job_id: int) -> Path:
        """The job's output folder: ``data_dir/out/job-<id>``."""
        return self.config.out_dir / f"job-{job_id}"

    def run_one_job(self) -> bool:
        """Claim and process one queued job; False when the queue was empty."""
        job = self.queue.claim_next()
        if job is None:
            return False
        job_dir = self.job_dir(job.id)
        if job_dir.exists():  # left by an interrupted attempt: rebuild from scratch
            shutil.rmtree(job_dir, ignore_errors=True)
        out_dir = job_dir / f"attempt-{job.attempts}"
        out_dir.mkdir(parents=True)
        files = self.log.released_instances(job.series_uid)
        logger.info("job %d: %s from series %s (%d instances, attempt %d)", job.id, job.target,
                    job.series_uid, len(files), job.attempts)
        started = time.monotonic()
        try:
            if not files:
                raise RejectedSeries("no eligible instance arrived on a released association")
            result = self.processor(job, files, out_dir)
        except RejectedSeries as exc:
            why = exc.reason
            logger.warning("job %d rejected: %s", job.id, why)
            return self._settle(lambda: self.queue.rejected(job.id, why, attempt=job.attempts))
        except Exception as exc:  # any processing error ends this job, not the worker
            logger.exception("job %d failed while processing", job.id)
            reason = f"processing error: {type(exc).__name__}: {str(exc)[:300]}"
            return self._settle(lambda: self.queue.failed(job.id, reason, attempt=job.attempts))
        relative = [str(Path(f).resolve().relative_to(job_dir.resolve()))
                    if Path(f).resolve().is_relative_to(job_dir.resolve()) else str(f)
                    for f in result.files]
        seconds = time.monotonic() - started
        if not self._settle(lambda: self.queue.processed(
                job.id, relative, result.prompt, seconds, result.extra.get("timings"),
                attempt=job.attempts)):
            return True
        self._sendable.set()  # the sender delivers it without waiting for its next poll
        logger.info("job %d: %d derived instance(s) in %.1f s", job.id, len(relative), seconds)
        return True

    @staticmethod
    def _settle(step: Callable[[], None]) -> bool:
        """Record a job's outcome; False (logged) when this process lost the job's claim."""
        try:
            step()
        except LostClaim as exc:
            logger.warning("%s", exc)
            return False
        return True

    # -- delivery -------------------------------------------------------------------------
    def send_due(self) -> bool:
        """Make one delivery attempt for every job that is due; False if none was."""
        jobs = self.queue.due_sends()
        for job in jobs:
            if self._stop.is_set():
                break
            self.deliver(job)
        return bool(jobs)

    def deliver(self, job: JobSpec) -> None:
        """One export attempt of one job, recorded in ``deliveries`` (nothing when another
        process claimed the delivery first or it is no longer due)."""
        endpoint, error = job_endpoint(job, self.config)
        delivery_id = self.queue.begin_delivery(
            job.id, endpoint.ae_title if endpoint else job.dest_ae_title,
            endpoint.host if endpoint else job.dest_host,
            endpoint.port if endpoint else job.dest_port, if_due=True)
        if delivery_id is None:
            return
        if endpoint is None:
            outcome = DeliveryOutcome(DeliveryStatus.FAILED, error=error)
        else:
            out_dir = self.job_dir(job.id)
            files = [out_dir / f for f in job.derived_files]
            outcome = send_files(files, endpoint, calling_aet=self.config.node.ae_title,
                                 timeout=self.config.export.timeout_seconds)
        state = self.queue.finish_delivery(delivery_id, outcome, self.config.export)
        logger.info("job %d delivery: %s -> job %s", job.id, outcome.status.value, state.value)
