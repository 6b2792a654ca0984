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
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from dicom_node.config import Config
from dicom_node.dicom.status import Status
from dicom_node.net import acceptor as ul
from dicom_node.receive.c_store import StoreRequest, store_instance
from dicom_node.receive.engine import ReceiverEngine
from dicom_node.receive.receiver import (ABORTED_REASON, Peer, Receiver, association_ended,
                                         association_rejected, association_requested,
                                         supported_contexts)
from dicom_node.store.db import AssociationState
from dicom_node.store.joblog import JobLog
from dicom_node.store.spool import Spool

__all__ = ["StorageSCP", "DiskGuard", "NativeHandler", "acceptor_settings"]

logger = logging.getLogger(__name__)


class DiskGuard:
    """Is the file system holding ``path`` at or above ``watermark_percent`` used?

    ``usage`` returns ``(total, used, free)`` bytes (default
    :func:`shutil.disk_usage`); the answer is cached for ``cache_seconds``.
    """

    def __init__(self, path: Path, watermark_percent: float, *,
                 usage: Callable[[Path], Any] = shutil.disk_usage,
                 cache_seconds: float = 1.0) -> None:
        self.path, self.watermark = Path(path), float(watermark_percent)
        self._usage, self._cache_seconds = usage, cache_seconds
        self._checked, self._total, self._used = -1e9, 0, 0
        self._lock = threading.Lock()

    def _sizes(self) -> tuple[int, int]:
        """(total, used) bytes of the file system (cached)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self._cache_seconds:
                self._total, self._used = (int(v) for v in self._usage(self.path)[:2])
                self._checked = now
            return self._total, self._used

    def percent_used(self) -> float:
        """Used space of the file system, percent (cached)."""
        total, used = self._sizes()
        return 100.0 * used / total if total else 100.0

    def is_short(self) -> bool:
        """True when new data must be refused."""
        return self.percent_used() >= self.watermark

    def room(self, n_bytes: int) -> bool:
        """May ``n_bytes`` more be written without reaching the watermark?"""
        total, used = self._sizes()
        return bool(total) and 100.0 * (used + n_bytes) / total < self.watermark


# -- the native receiver's adapter ------------------------------------------------------------
class NativeHandler:
    """:class:`dicom_node.net.interface.AssociationHandler` for the node: the shared bookkeeping
    and store, keyed by the native association object."""

    def __init__(self, rx: Receiver) -> None:
        self.rx = rx

    @staticmethod
    def _peer(assoc: ul.Association) -> Peer:
        return Peer(assoc.calling_ae_title, assoc.called_ae_title, assoc.peer_host,
                    assoc.peer_port)

    def requested(self, assoc: ul.Association) -> tuple[int, int, int] | None:
        """Record the request; the disk-watermark rejection, if any."""
        return association_requested(self.rx, assoc, self._peer(assoc))

    def rejected(self, assoc: ul.Association, rejection: tuple[int, int, int]) -> None:
        """Record the rejection with its reason."""
        association_rejected(self.rx, assoc, self._peer(assoc), rejection)

    def released(self, assoc: ul.Association) -> None:
        """A-RELEASE: the association's instances now count towards series completion."""
        association_ended(self.rx, assoc, self._peer(assoc), AssociationState.RELEASED, None)

    def aborted(self, assoc: ul.Association, cause: ul.AbortCause, detail: str) -> None:
        """Recorded as aborted; the association's instances trigger nothing."""
        if cause in (ul.AbortCause.PEER_ABORT, ul.AbortCause.CONNECTION_LOST):
            reason = ABORTED_REASON
        else:
            reason = f"{cause.value}: {detail}" if detail else cause.value
        association_ended(self.rx, assoc, self._peer(assoc), AssociationState.ABORTED, reason)

    def echo(self, assoc: ul.Association) -> int:
        """C-ECHO: always success."""
        return Status.SUCCESS

    def store(self, assoc: ul.Association, instance: ul.ReceivedInstance) -> int:
        """C-STORE: the shared store, with the association's job-log id."""
        return store_instance(self.rx, StoreRequest(
            instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax,
            path=instance.path, association_id=self.rx.assoc_id(assoc), size=instance.size,
            head=instance.head, head_complete=instance.head_complete,
            data_offset=instance.data_offset))


# -- the server ------------------------------------------------------------------------------
def acceptor_settings(config: Config, temp_dir: Path,
                      disk: DiskGuard | None = None) -> ul.AcceptorSettings:
    """The native acceptor's settings from ``[node]``: AE title, contexts, maximum PDU,
    associations, timeouts (network, ARTIM, association), data-set size limit and the disk
    watermark (``disk``, default: a guard on ``data_dir``) checked while data sets stream."""
    node = config.node
    disk = disk or DiskGuard(node.data_dir, node.disk_watermark_percent)
    return ul.AcceptorSettings(
        ae_title=node.ae_title,
        supported={k: frozenset(v) for k, v in supported_contexts().items()},
        max_pdu=node.max_pdu, max_associations=node.max_associations,
        network_timeout=node.network_timeout_seconds,
        artim_timeout=node.artim_timeout_seconds,
        association_timeout=node.association_timeout_seconds,
        max_dataset_bytes=node.max_dataset_megabytes << 20, disk_room=disk.room,
        called_aet_check=node.called_aet_check,
        allowed_calling_aets=tuple(node.allowed_calling_aets), temp_dir=temp_dir)


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
