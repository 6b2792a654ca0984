"""The node: storage SCP + job log + scheduler, started and stopped as one object.

    with Node(load_config("config/node.toml")) as node:   # start() ... stop()
        node.wait()                                         # until stop() from a signal

:meth:`Node.start` is non-blocking: it records spool files the job log lacks
(:mod:`dicom_node.receive.spool_recovery`), recovers work a previous run left
unfinished, starts the scheduler threads, then listens. :meth:`Node.stop`
refuses new associations, lets open ones finish (a grace period), and stops
the threads; a job still being synthesized stays in the log and is re-queued
at the next start. The ``Synthesizer`` is loaded once per process, on the
first job (or passed in); the rest of the pipeline warms up in the background
at start-up (:meth:`dicom_node.process.processor.SynthesisProcessor.warm_up`).

With ``[node] roles`` a process does only part of this: ``receive`` (the SCP,
spool recovery, series completion and routing) or ``process`` (synthesis and
delivery). Such processes share a job log on a database server (``[database]
url``) and a spool on shared storage; each registers in the log's ``nodes``
table, and at start-up takes back only what expired leases left
(:mod:`dicom_node.store.nodes`, :meth:`dicom_node.store.jobqueue.JobQueue.recover`).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from dicom_node.config import Config, startup_warnings
from dicom_node.store.jobqueue import Recovery
from dicom_node.store.joblog import DATABASE_ERRORS, JobLog
from dicom_node.process.processor import SynthesisProcessor, freeze_start_up_objects
from dicom_node.schedule.scheduler import Scheduler
from dicom_node.schedule.work import Processor
from dicom_node.receive.disk_guard import DiskGuard
from dicom_node.receive.scp import StorageSCP
from dicom_node.store.nodes import node_stopped, register_node
from dicom_node.store.spool import Spool
from dicom_node.receive.spool_recovery import SpoolRecovery, recover_spool

__all__ = ["Node"]

logger = logging.getLogger(__name__)
SHARED_SPOOL_AGE_SECONDS = 3600.0  # shared spool: younger unrecorded/partial files may be live


class Node:
    """The whole service for one configuration.

    ``processor`` replaces the synthesis pipeline (tests); ``synthesizer`` is
    handed to the default pipeline instead of loading ``[model]``;
    ``disk`` replaces the disk-usage guard (tests).
    """

    def __init__(self, config: Config, *, processor: Processor | None = None,
                 synthesizer: Any = None, disk: DiskGuard | None = None) -> None:
        self.config = config
        config.node.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = JobLog(config.database_url)
        self.spool = Spool(config.spool_dir)
        self.processor = processor or SynthesisProcessor(config, synthesizer)
        if isinstance(self.processor, SynthesisProcessor):
            self.processor.log = self.log  # where it finds a second source of the same study
        self.scheduler = Scheduler(config, self.log, self.processor)
        self.scp = StorageSCP(config, self.log, self.spool, disk=disk)
        self._stopped = threading.Event()
        self._running = False
        self.recovery: Recovery | None = None
        self.spool_recovery: SpoolRecovery | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the SCP listens on (only with the ``receive`` role)."""
        return self.scp.address

    @property
    def receives(self) -> bool:
        """True when this process has the ``receive`` role (runs the storage SCP)."""
        return "receive" in self.config.node.roles

    def start(self) -> "Node":
        """Recover, start the scheduler, then listen (returns at once)."""
        if self._running:
            raise RuntimeError("the node is already running")
        node = self.config.node
        processes = "process" in node.roles
        if processes and isinstance(self.processor, SynthesisProcessor):
            self.processor.preflight()
            threading.Thread(target=self.processor.warm_up, name="rtfsyn-warm-up",
                             daemon=True).start()
        register_node(self.log, node.roles)
        if self.receives:
            age = SHARED_SPOOL_AGE_SECONDS if self.log.shared else 0.0
            self.spool.remove_stale_parts(node.data_dir / "tmp", older_than_seconds=age)
            self.spool_recovery = recover_spool(self.log, self.spool, min_age_seconds=age)
        self.recovery = self.scheduler.queue.recover()
        self.scheduler.start(node.roles)
        try:
            if self.receives:
                self.scp.start()
        except Exception:
            self.scheduler.stop()
            node_stopped(self.log)
            raise
        self._running = True
        self._stopped.clear()
        if not processes:
            freeze_start_up_objects()
        for warning in startup_warnings(self.config):
            logger.warning("%s", warning)
        logger.info("node %s running (%s, id %s): data in %s, job log %s, %d route(s), "
                    "%d worker(s)", node.ae_title, "+".join(node.roles), self.log.node_id,
                    node.data_dir, self.log.where, len(self.config.routes),
                    node.workers if processes else 0)
        return self

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let associations finish, stop the threads (idempotent)."""
        if not self._running:
            return
        self._running = False
        self.scp.stop(grace_seconds)
        self.scheduler.stop(timeout=max(grace_seconds, 1.0))
        try:
            if self.log.shared and self.scheduler.queue.release_claims():
                logger.info("claims of unfinished jobs released to the other node processes")
            node_stopped(self.log)
        except DATABASE_ERRORS as exc:  # the database is gone: its heartbeat simply ends
            logger.warning("cannot record the node's stop in the job log: %s",
                           type(exc).__name__)
        self._stopped.set()
        logger.info("node %s stopped", self.config.node.ae_title)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` (e.g. from a signal handler); True if stopped."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
