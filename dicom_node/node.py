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
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from dicom_node.config import Config
from dicom_node.store.jobqueue import Recovery
from dicom_node.store.joblog import JobLog
from dicom_node.process.processor import SynthesisProcessor
from dicom_node.schedule.scheduler import Processor, Scheduler
from dicom_node.receive.disk_guard import DiskGuard
from dicom_node.receive.scp import StorageSCP
from dicom_node.store.spool import Spool
from dicom_node.receive.spool_recovery import SpoolRecovery, recover_spool

__all__ = ["Node"]

logger = logging.getLogger(__name__)


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
        self.log = JobLog(config.database_path)
        self.spool = Spool(config.spool_dir)
        self.processor = processor or SynthesisProcessor(config, synthesizer)
        self.scheduler = Scheduler(config, self.log, self.processor)
        self.scp = StorageSCP(config, self.log, self.spool, disk=disk)
        self._stopped = threading.Event()
        self._running = False
        self.recovery: Recovery | None = None
        self.spool_recovery: SpoolRecovery | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the SCP listens on."""
        return self.scp.address

    def start(self) -> "Node":
        """Recover, start the scheduler, then listen (returns at once)."""
        if self._running:
            raise RuntimeError("the node is already running")
        if isinstance(self.processor, SynthesisProcessor):
            self.processor.preflight()
            threading.Thread(target=self.processor.warm_up, name="rtfsyn-warm-up",
                             daemon=True).start()
        self.spool.remove_stale_parts(self.config.node.data_dir / "tmp")
        self.spool_recovery = recover_spool(self.log, self.spool)
        self.recovery = self.scheduler.queue.recover()
        self.scheduler.start()
        try:
            self.scp.start()
        except Exception:
            self.scheduler.stop()
            raise
        self._running = True
        self._stopped.clear()
        node = self.config.node
        logger.info("node %s running: data in %s, %d route(s), %d worker(s)", node.ae_title,
                    node.data_dir, len(self.config.routes), node.workers)
        return self

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let associations finish, stop the threads (idempotent)."""
        if not self._running:
            return
        self._running = False
        self.scp.stop(grace_seconds)
        self.scheduler.stop(timeout=max(grace_seconds, 1.0))
        self._stopped.set()
        logger.info("node %s stopped", self.config.node.ae_title)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` (e.g. from a signal handler); True if stopped."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
