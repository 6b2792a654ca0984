"""The storage SCP: C-ECHO and C-STORE into the spool and the job log.

Two receivers share everything below the wire (``[node] receiver``):

* ``"native"`` (default): :mod:`dicom_node.net`, blocking sockets and one thread
  per association, no polling; data sets are streamed to ``data_dir/tmp``.
* ``"pynetdicom"``: pynetdicom's ``AE.start_server`` (:mod:`dicom_node.receive.pynetdicom_scp`),
  streaming data sets to the process's temporary folder.

Both call the same functions, through thin adapters: the association
bookkeeping (:mod:`dicom_node.receive.receiver`) and the store
(:func:`~dicom_node.receive.c_store.store_instance`, given a
:class:`~dicom_node.receive.c_store.StoreRequest`).

* Every standard storage SOP class is accepted, with uncompressed, deflated
  and the common compressed transfer syntaxes; MR Image and Enhanced MR Image
  instances are *eligible*, any other class is stored and recorded as not
  eligible (reason ``"SOP class not eligible"``). Data sets are moved
  atomically into the spool as they were sent.
* The C-STORE itself (:mod:`dicom_node.receive.c_store`): the status is sent only
  once the instance is durable (file and folder fsynced) and recorded.
* Associations are recorded (open -> released | aborted | rejected). Callers
  outside ``allowed_calling_aets`` and requests for another called AE title
  are rejected; when the data folder's file system is at or above
  ``disk_watermark_percent`` new associations are rejected (transient, local
  limit exceeded) and C-STOREs answer *out of resources*.
* Handlers never raise: every failure becomes a named DICOM status and a log
  line with UIDs and AE titles only (never patient data).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dicom_node.config import Config
from dicom_node.net import acceptor as ul
from dicom_node.receive.disk_guard import DiskGuard
from dicom_node.receive.engine import ReceiverEngine
from dicom_node.receive.native import NativeHandler, acceptor_settings
from dicom_node.receive.receiver import Receiver
from dicom_node.store.joblog import JobLog
from dicom_node.store.spool import Spool

__all__ = ["StorageSCP"]

logger = logging.getLogger(__name__)


class StorageSCP:
    """The listening AE. ``start()`` returns at once; ``stop()`` ends it cleanly."""

    def __init__(self, config: Config, log: JobLog, spool: Spool, *,
                 disk: DiskGuard | None = None) -> None:
        self.config = config
        self.receiver = Receiver(log=log, spool=spool, disk=disk or DiskGuard(
            config.node.data_dir, config.node.disk_watermark_percent))
        self._server: Any = None  # ul.Acceptor or scp_pynetdicom.PynetdicomServer

    def _native(self, ssl_context: Any) -> ul.Acceptor:
        node = self.config.node
        temp_dir = node.data_dir / "tmp"  # on the spool's file system: an atomic rename
        temp_dir.mkdir(parents=True, exist_ok=True)
        settings = acceptor_settings(self.config, temp_dir, self.receiver.disk)
        return ul.Acceptor((node.host, node.port), settings, NativeHandler(self.receiver),
                           ssl_context)

    def start(self) -> None:
        """Listen on ``[node] host:port`` (TLS when ``[node.tls]`` is set); non-blocking."""
        if self._server is not None:
            raise RuntimeError("the storage SCP is already running")
        node = self.config.node
        ssl_context = None
        if node.tls is not None:
            from dicom_node.net.tls import server_context

            ssl_context = server_context(node.tls)
        rx = self.receiver
        rx.syncer = ThreadPoolExecutor(max_workers=2 * max(1, node.max_associations),
                                       thread_name_prefix="spool-sync")
        try:
            if node.receiver is ReceiverEngine.PYNETDICOM:
                from dicom_node.receive.pynetdicom_scp import PynetdicomServer

                server: Any = PynetdicomServer(self.config, rx, ssl_context)
            else:
                server = self._native(ssl_context)
            server.start()
        except BaseException:
            rx.syncer.shutdown(wait=False)
            rx.syncer = None
            raise
        self._server = server
        logger.info("storage SCP %s listening on %s:%d%s (%s receiver)", node.ae_title,
                    *self.address, " (TLS)" if ssl_context else "", node.receiver)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server is bound to."""
        if self._server is None:
            raise RuntimeError("the storage SCP is not running")
        return self._server.address

    @property
    def active_associations(self) -> int:
        """How many associations (connections) are being served now."""
        return len(self._server.active_associations) if self._server is not None else 0

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting; let open associations finish for ``grace_seconds``, then abort
        them (their instances stay recorded and trigger nothing)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(grace_seconds)
        syncer, self.receiver.syncer = self.receiver.syncer, None
        if syncer is not None:
            syncer.shutdown(wait=True)
        logger.info("storage SCP stopped")
