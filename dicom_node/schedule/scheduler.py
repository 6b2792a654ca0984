"""The scheduler: the threads that move work along the job log, each running one step in a
loop (the steps live in :mod:`dicom_node.schedule.completion`, :mod:`dicom_node.schedule.work`
and :mod:`dicom_node.send.delivery`).

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
import threading
import time
from pathlib import Path
from typing import Callable

from dicom_node.config import ROLES, Config
from dicom_node.schedule.completion import complete_and_route, route_series
from dicom_node.schedule.work import Processor, job_dir, run_one_job
from dicom_node.send.delivery import deliver
from dicom_node.store.jobqueue import JobQueue
from dicom_node.store.joblog import JobLog, JobSpec

__all__ = ["Scheduler"]

logger = logging.getLogger(__name__)


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

    # -- the steps (each also callable directly) -------------------------------------------
    def tick(self) -> bool:
        """Complete quiet series and route complete ones; True if jobs were created."""
        created = complete_and_route(self.log, self.config)
        if created:
            self._work.set()
        return created > 0

    def route_series(self, series_uid: str, generation: int) -> int:
        """Apply the routes to one complete series; returns the number of jobs created."""
        return route_series(self.log, self.config, series_uid, generation)

    def job_dir(self, job_id: int) -> Path:
        """The job's output folder: ``data_dir/out/job-<id>``."""
        return job_dir(self.config.out_dir, job_id)

    def run_one_job(self) -> bool:
        """Claim and process one queued job; False when the queue was empty."""
        # once processed, the sender delivers it without waiting for its next poll
        return run_one_job(self.queue, self.log, self.processor, self.config.out_dir,
                           on_processed=self._sendable.set)

    def send_due(self) -> bool:
        """Make one delivery attempt for every job that is due; False if none was."""
        jobs = self.queue.due_sends()
        for job in jobs:
            if self._stop.is_set():
                break
            self.deliver(job)
        return bool(jobs)

    def deliver(self, job: JobSpec) -> None:
        """One export attempt of one job, recorded in ``deliveries``."""
        deliver(job, self.queue, self.config, self.job_dir(job.id))
