"""The storage SCP: C-ECHO and C-STORE into the spool and the job log.

* Every standard storage SOP class is accepted, with uncompressed, deflated
  and the common compressed transfer syntaxes; MR Image and Enhanced MR Image
  instances are *eligible*, any other class is stored and recorded as not
  eligible (reason ``"SOP class not eligible"``).
* Received data sets are streamed by pynetdicom to a temporary file (bounded
  memory) and moved atomically into the spool as they were sent. Streaming is
  switched on for this server's associations only
  (:func:`~dicom_node.dimse_tuning.stream_to_disk`); other pynetdicom receivers
  in the process keep pynetdicom's setting.
* The C-STORE success status is sent only once the instance is durable and
  recorded: the data set is renamed into the spool, then the file fsync, the
  folder fsync (group-committed across associations) and the job-log insert
  run at the same time (two pool threads and the handler), and the status
  waits for all three (docs/PERFORMANCE.md has the measurements).
* Per association, pynetdicom's PDU/DIMSE debug-log handlers are unbound
  unless ``pynetdicom`` logs at DEBUG (:mod:`dicom_node.dimse_tuning`).
* Associations are recorded (open -> released | aborted | rejected). Callers
  outside ``allowed_calling_aets`` and requests for another called AE title
  are rejected by pynetdicom; when the data folder's file system is at or
  above ``disk_watermark_percent`` new associations are rejected (transient,
  local limit exceeded) and C-STOREs answer *out of resources*.
* Handlers never raise: every failure becomes a named DICOM status and a log
  line with UIDs and AE titles only (never patient data).
"""
from __future__ import annotations

import io
import logging
import shutil
import threading
import time
import weakref
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydicom import dcmread
from pydicom.uid import (MRImageStorage, UID, DeflatedExplicitVRLittleEndian,
                         ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEGLSNearLossless,
                         RLELossless)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.config import Config
from dicom_node.db import AssociationState
from dicom_node.dimse_tuning import stream_to_disk, stop_streaming, tune_association
from dicom_node.joblog import InstanceConflict, InstanceRecord, JobLog
from dicom_node.spool import Placed, Spool, SpoolError

__all__ = ["StorageSCP", "DiskGuard", "Receiver", "SUCCESS", "OUT_OF_RESOURCES",
           "DATASET_DOES_NOT_MATCH_SOP_CLASS", "CANNOT_UNDERSTAND", "PROCESSING_FAILURE",
           "ELIGIBLE_SOP_CLASSES", "TRANSFER_SYNTAXES", "NOT_ELIGIBLE_REASON"]

logger = logging.getLogger(__name__)

# C-STORE response statuses (PS3.4 B.2.3 and PS3.7 C.4)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111  # the UID is already recorded under another series
# A-ASSOCIATE-RJ: transient, service provider (presentation), local limit exceeded
REJECT_TRANSIENT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
_REJECT_REASONS = {(0x01, 0x01, 0x03): "calling AE title not recognized",
                   (0x01, 0x01, 0x07): "called AE title not recognized",
                   (0x02, 0x03, 0x02): "local limit exceeded (too many associations)",
                   (0x02, 0x02, 0x01): "user identity not accepted"}

EnhancedMRImageStorage = UID("1.2.840.10008.5.1.4.1.1.4.1")
ELIGIBLE_SOP_CLASSES = frozenset({MRImageStorage, EnhancedMRImageStorage})
NOT_ELIGIBLE_REASON = "SOP class not eligible"
TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                     DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit,
                     JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                     JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]
CLOSE_SETTLE_SECONDS = 5.0  # wait for the association's own end event after a close
_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                "Modality", "SeriesDescription", "SeriesNumber"]


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
        self._checked, self._percent = -1e9, 0.0
        self._lock = threading.Lock()

    def percent_used(self) -> float:
        """Used space of the file system, percent (cached)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self._cache_seconds:
                total, used, _free = self._usage(self.path)[:3]
                self._percent = 100.0 * used / total if total else 100.0
                self._checked = now
            return self._percent

    def is_short(self) -> bool:
        """True when new data must be refused."""
        return self.percent_used() >= self.watermark


@dataclass
class Receiver:
    """What the handlers need: the log, the spool, the disk guard, open association ids."""

    log: JobLog
    spool: Spool
    disk: DiskGuard
    syncer: Executor | None = None  # runs the spool fsyncs (None: in the handler thread)
    assoc_ids: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def assoc_id(self, assoc: Any) -> int | None:
        """The job-log id of a live association (None if unknown)."""
        with self.lock:
            return self.assoc_ids.get(assoc)


def _peer(assoc: Any) -> tuple[str, str, str | None, int | None]:
    rq = assoc.requestor.primitive
    calling = str(getattr(rq, "calling_ae_title", "") or "").strip()
    called = str(getattr(rq, "called_ae_title", "") or "").strip()
    return calling, called, assoc.requestor.address, assoc.requestor.port


# -- association handlers ---------------------------------------------------------------
def handle_requested(event: Any, rx: Receiver) -> None:
    """A-ASSOCIATE-RQ: record it; refuse it when the disk is above the watermark."""
    tune_association(event.assoc)
    try:
        calling, called, host, port = _peer(event.assoc)
        assoc_id = rx.log.open_association(calling, called, host, port)
        with rx.lock:
            rx.assoc_ids[event.assoc] = assoc_id
        if rx.disk.is_short():
            reason = (f"disk {rx.disk.percent_used():.1f}% used, at or above the watermark "
                      f"{rx.disk.watermark:g}%")
            logger.warning("rejecting association from %s (%s): %s", calling, host, reason)
            rx.log.end_association(assoc_id, AssociationState.REJECTED, reason)
            event.assoc.acse.send_reject(*REJECT_TRANSIENT_LOCAL_LIMIT)
            event.assoc.kill()
    except (SQLAlchemyError, OSError) as exc:
        logger.error("cannot record association request: %s", type(exc).__name__)


def _end(event: Any, rx: Receiver, state: AssociationState, reason: str | None) -> None:
    assoc_id = rx.assoc_id(event.assoc)
    if assoc_id is None:
        return
    try:
        if rx.log.end_association(assoc_id, state, reason):
            calling, _called, host, _port = _peer(event.assoc)
            log = logger.info if state == AssociationState.RELEASED else logger.warning
            log("association %d from %s (%s) %s%s", assoc_id, calling, host, state.value,
                f": {reason}" if reason else "")
    except SQLAlchemyError as exc:
        logger.error("cannot record the end of association %d: %s", assoc_id,
                     type(exc).__name__)


def handle_released(event: Any, rx: Receiver) -> None:
    """A-RELEASE: the association's instances now count towards series completion."""
    _end(event, rx, AssociationState.RELEASED, None)


def handle_aborted(event: Any, rx: Receiver) -> None:
    """A-ABORT / A-P-ABORT: recorded; the association's instances trigger nothing."""
    _end(event, rx, AssociationState.ABORTED, "A-ABORT (or the connection was lost)")


def handle_rejected(event: Any, rx: Receiver) -> None:
    """A-ASSOCIATE-RJ sent by pynetdicom (AE title checks, association limit)."""
    rsp = event.assoc.acceptor.primitive
    key = (getattr(rsp, "result", None), getattr(rsp, "result_source", None),
           getattr(rsp, "diagnostic", None))
    calling, called, _host, _port = _peer(event.assoc)
    reason = _REJECT_REASONS.get(key, f"rejected (result, source, diagnostic) = {key}")
    reason = f"{reason}: calling {calling!r}, called {called!r}"
    _end(event, rx, AssociationState.REJECTED, reason)


def handle_conn_close(event: Any, rx: Receiver) -> None:
    """The fallback for a connection that ends with no release, abort or reject.

    pynetdicom may report the closed connection (DUL thread) a moment before
    the association thread marks the association released, aborted or
    rejected and fires that event, so wait for one of those flags first.
    """
    assoc = event.assoc
    deadline = time.monotonic() + CLOSE_SETTLE_SECONDS
    while time.monotonic() < deadline:
        if assoc.is_released or assoc.is_aborted or assoc.is_rejected:
            return
        time.sleep(0.01)
    _end(event, rx, AssociationState.ABORTED, "connection closed without A-RELEASE")


def handle_conn_open(event: Any, timeout: float) -> None:
    """A new connection: bound every socket read by the network timeout, so a peer that
    stalls inside a PDU cannot hold its reader thread and socket forever."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.settimeout(timeout)


def handle_echo(event: Any, rx: Receiver) -> int:
    """C-ECHO: always success."""
    return SUCCESS


# -- C-STORE ---------------------------------------------------------------------------------
def handle_store(event: Any, rx: Receiver) -> int:
    """Spool and record one instance; returns a C-STORE status, never raises."""
    sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    try:
        return _store(event, rx, sop_uid)
    except Exception:  # the boundary: nothing may escape into the association
        logger.exception("unexpected error storing SOP instance %s", sop_uid)
        return PROCESSING_FAILURE


def _chunked_path(event: Any) -> Path | None:
    """The temporary file pynetdicom streamed the data set into (None: held in memory)."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path else None


def _store(event: Any, rx: Receiver, sop_uid: str) -> int:
    if rx.disk.is_short():
        logger.warning("refusing SOP instance %s: disk above the watermark", sop_uid)
        return OUT_OF_RESOURCES
    sop_class = str(event.request.AffectedSOPClassUID)
    transfer_syntax = str(event.context.transfer_syntax)
    temp_path = _chunked_path(event)
    encoded = None if temp_path else event.encoded_dataset(include_meta=True)
    try:
        header = dcmread(temp_path if temp_path else io.BytesIO(encoded), force=False,
                         stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        study_uid, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
        ds_class = str(header.get("SOPClassUID", sop_class))
    except Exception as exc:  # arbitrary bytes from the network can fail in any way
        logger.warning("cannot understand SOP instance %s: %s", sop_uid, type(exc).__name__)
        return CANNOT_UNDERSTAND
    if ds_class != sop_class:
        logger.warning("SOP instance %s: data set SOP class %s differs from the request's %s",
                       sop_uid, ds_class, sop_class)
        return DATASET_DOES_NOT_MATCH_SOP_CLASS
    try:
        if temp_path:
            placed = rx.spool.place_file(temp_path, study_uid, series_uid, sop_uid)
        else:
            placed = rx.spool.place_bytes(encoded, study_uid, series_uid, sop_uid)
    except SpoolError as exc:
        logger.warning("SOP instance %s: %s", sop_uid, exc)
        return CANNOT_UNDERSTAND
    except OSError as exc:
        logger.error("cannot spool SOP instance %s: %s", sop_uid, exc.strerror)
        return OUT_OF_RESOURCES
    durable = placed.start_sync(rx.syncer)
    status = _record(event, rx, header, placed, sop_uid, sop_class, transfer_syntax, series_uid,
                     study_uid)
    try:
        for future in durable:
            future.result()
    except OSError as exc:
        logger.error("cannot make SOP instance %s durable: %s", sop_uid, exc.strerror)
        return OUT_OF_RESOURCES
    return status


def _record(event: Any, rx: Receiver, header: Any, placed: Placed, sop_uid: str,
            sop_class: str, transfer_syntax: str, series_uid: str, study_uid: str) -> int:
    """Record the spooled instance in the job log; the C-STORE status."""
    path, size = placed.path, placed.size
    eligible = sop_class in ELIGIBLE_SOP_CLASSES
    number = header.get("SeriesNumber")
    record = InstanceRecord(
        sop_instance_uid=sop_uid, sop_class_uid=sop_class, transfer_syntax_uid=transfer_syntax,
        series_uid=series_uid, study_uid=study_uid, path=path, size_bytes=size,
        association_id=rx.assoc_id(event.assoc), eligible=eligible,
        reason=None if eligible else NOT_ELIGIBLE_REASON,
        modality=str(header.get("Modality", "") or "")[:16] or None,
        description=str(header.get("SeriesDescription", "") or "")[:64] or None,
        series_number=int(number) if number not in (None, "") else None)
    try:
        new = rx.log.record_instance(record)
    except InstanceConflict as exc:  # the UID belongs to another series: never mix them
        logger.warning("refusing SOP instance: %s", exc)
        return DUPLICATE_SOP_INSTANCE
    except SQLAlchemyError as exc:
        logger.error("cannot record SOP instance %s in the job log: %s", sop_uid,
                     type(exc).__name__)
        return PROCESSING_FAILURE
    logger.debug("stored SOP instance %s of series %s (%s, %d bytes%s)", sop_uid, series_uid,
                 "eligible" if eligible else "not eligible", size, "" if new else ", duplicate")
    return SUCCESS


# -- the server ------------------------------------------------------------------------------
class StorageSCP:
    """The listening AE. ``start()`` returns at once; ``stop()`` ends it cleanly."""

    def __init__(self, config: Config, log: JobLog, spool: Spool, *,
                 disk: DiskGuard | None = None) -> None:
        self.config = config
        self.receiver = Receiver(log=log, spool=spool, disk=disk or DiskGuard(
            config.node.data_dir, config.node.disk_watermark_percent))
        self._server: Any = None

    def _build_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu
        ae.maximum_associations = node.max_associations
        ae.network_timeout = node.network_timeout_seconds
        ae.acse_timeout = ae.dimse_timeout = min(30.0, node.network_timeout_seconds)
        ae.require_called_aet = node.called_aet_check
        ae.require_calling_aet = list(node.allowed_calling_aets)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
        return ae

    def start(self) -> None:
        """Listen on ``[node] host:port`` (TLS when ``[node.tls]`` is set); non-blocking."""
        if self._server is not None:
            raise RuntimeError("the storage SCP is already running")
        ssl_context = None
        if self.config.node.tls is not None:
            from dicom_node.security import server_context

            ssl_context = server_context(self.config.node.tls)
        rx = self.receiver
        handlers = [(evt.EVT_REQUESTED, handle_requested, [rx]),
                    (evt.EVT_RELEASED, handle_released, [rx]),
                    (evt.EVT_ABORTED, handle_aborted, [rx]),
                    (evt.EVT_REJECTED, handle_rejected, [rx]),
                    (evt.EVT_CONN_CLOSE, handle_conn_close, [rx]),
                    (evt.EVT_CONN_OPEN, handle_conn_open,
                     [self.config.node.network_timeout_seconds]),
                    (evt.EVT_C_ECHO, handle_echo, [rx]),
                    (evt.EVT_C_STORE, handle_store, [rx])]
        node = self.config.node
        rx.syncer = ThreadPoolExecutor(max_workers=2 * max(1, node.max_associations),
                                       thread_name_prefix="spool-sync")
        try:
            self._server = self._build_ae().start_server(
                (node.host, node.port), block=False, evt_handlers=handlers,
                ssl_context=ssl_context)
        except BaseException:
            rx.syncer.shutdown(wait=False)
            rx.syncer = None
            raise
        # Stream received data sets to a temporary file instead of holding them in memory.
        stream_to_disk(self._server)
        logger.info("storage SCP %s listening on %s:%d%s", node.ae_title, *self.address,
                    " (TLS)" if ssl_context else "")

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server is bound to."""
        if self._server is None:
            raise RuntimeError("the storage SCP is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting; let open associations finish for ``grace_seconds``, then abort
        them (their instances stay recorded and trigger nothing)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace_seconds
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            logger.warning("aborting association from %s at shutdown",
                           assoc.requestor.ae_title)
            assoc.abort()
        stop_streaming(server)
        syncer, self.receiver.syncer = self.receiver.syncer, None
        if syncer is not None:
            syncer.shutdown(wait=True)
        logger.info("storage SCP stopped")
