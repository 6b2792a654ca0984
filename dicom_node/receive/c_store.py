"""The C-STORE of both receivers: spool the data set, make it durable, record it, answer.

:func:`store_instance` is what :mod:`dicom_node.receive.scp` (native receiver) and
:mod:`dicom_node.receive.pynetdicom_scp` call for every received data set, given a
:class:`StoreRequest`. It never raises: every failure becomes one of the named
statuses below and a log line with UIDs only.

1. The header attributes the job log keeps come from the data set's first
   bytes, which the native receiver keeps in memory
   (:func:`dicom_node.dicom.header.parse_head`), or from ``dcmread`` of the
   file when those bytes do not settle it.
2. The file is renamed into the spool; then its fsync, its folder's fsync
   (group-committed across associations) and the job-log insert run at the
   same time (two pool threads and this thread), and the status waits for all
   three. The insert is committed; its log sync is left to the next full commit
   (:mod:`dicom_node.store.joblog_fast`), the spool file being the record until then
   (:mod:`dicom_node.receive.spool_recovery`).
3. Before it is spooled, the data set's element structure is walked to its last byte
   (:func:`dicom_node.dicom.dataset_check.data_set_problem`): a truncated data set, or a
   Pixel Data length that lies, is refused with 0xC000 ("cannot understand").
4. An instance refused with 0x0111 (its SOP Instance UID is recorded in another
   series) is removed from the spool again.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from dicom_node.dicom.dataset_check import data_set_problem
from dicom_node.dicom.header import StoreHeader, parse_head, read_header
from dicom_node.dicom.status import Status
from dicom_node.receive.receiver import Receiver
from dicom_node.receive.record import instance_record
from dicom_node.store.joblog import DATABASE_ERRORS, InstanceConflict
from dicom_node.store.spool import Placed, SpoolError

__all__ = ["StoreRequest", "store_instance"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE: the request's affected SOP class and instance, the accepted
    transfer syntax, and the data set behind its file meta, either streamed to ``path``
    (``size`` bytes, when the receiver counted them) or ``encoded`` in memory;
    ``association_id`` is the job-log row it belongs to. ``head``: the data set's first
    bytes, when the receiver kept them (all of it when ``head_complete``); ``data_offset``:
    where the data set starts in the file (None: after its file meta group)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path | None = None
    encoded: bytes | None = None
    association_id: int | None = None
    size: int | None = None
    head: bytes = b""
    head_complete: bool = False
    data_offset: int | None = None


def store_instance(rx: Receiver, request: StoreRequest) -> int:
    """Spool and record one instance; returns a C-STORE status, never raises."""
    try:
        status = _store(rx, request)
    except Exception:  # the boundary: nothing may escape into the association
        logger.exception("unexpected error storing SOP instance %s", request.sop_instance_uid)
        status = Status.PROCESSING_FAILURE
    rx.count_status(status)
    return status


def _header(rq: StoreRequest) -> StoreHeader:
    """The header attributes: from the data set's first bytes when the receiver kept them
    and they settle it, else from the file (or the encoded bytes); raises for non-DICOM."""
    if rq.head:
        header = parse_head(rq.head, rq.transfer_syntax, complete=rq.head_complete)
        if header is not None:
            return header
    return read_header(rq.path if rq.path else io.BytesIO(rq.encoded or b""))


def _store(rx: Receiver, rq: StoreRequest) -> int:
    sop_uid, sop_class = rq.sop_instance_uid, rq.sop_class_uid
    if rx.disk.is_short():
        logger.warning("refusing SOP instance %s: disk above the watermark", sop_uid)
        return Status.OUT_OF_RESOURCES
    try:
        header = _header(rq)
    except Exception as exc:  # arbitrary bytes from the network can fail in any way
        logger.warning("cannot understand SOP instance %s: %s", sop_uid, type(exc).__name__)
        return Status.CANNOT_UNDERSTAND
    study_uid, series_uid = header.study_uid, header.series_uid
    if study_uid is None or series_uid is None:
        logger.warning("cannot understand SOP instance %s: no Study or Series Instance UID",
                       sop_uid)
        return Status.CANNOT_UNDERSTAND
    ds_class = header.sop_class_uid or sop_class
    if ds_class != sop_class:
        logger.warning("SOP instance %s: data set SOP class %s differs from the request's %s",
                       sop_uid, ds_class, sop_class)
        return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    problem = _structure_problem(rq)
    if problem is not None:
        logger.warning("cannot understand SOP instance %s: %s", sop_uid, problem)
        return Status.CANNOT_UNDERSTAND
    try:
        if rq.path:
            placed = rx.spool.place_file(rq.path, study_uid, series_uid, sop_uid, size=rq.size)
        else:
            placed = rx.spool.place_bytes(rq.encoded or b"", study_uid, series_uid, sop_uid)
    except SpoolError as exc:
        logger.warning("SOP instance %s: %s", sop_uid, exc)
        return Status.CANNOT_UNDERSTAND
    except OSError as exc:
        logger.error("cannot spool SOP instance %s: %s", sop_uid, exc.strerror)
        return Status.OUT_OF_RESOURCES
    durable = placed.start_sync(rx.syncer)
    status = _record(rx, rq, header, placed)
    try:
        for future in durable:
            future.result()
    except OSError as exc:
        logger.error("cannot make SOP instance %s durable: %s", sop_uid, exc.strerror)
        return Status.OUT_OF_RESOURCES
    if status == Status.DUPLICATE_SOP_INSTANCE:  # refused: its file must not stay in the spool
        placed.path.unlink(missing_ok=True)
    return status


def _structure_problem(rq: StoreRequest) -> str | None:
    """What makes the data set not whole (truncated, a length that lies); None when whole."""
    try:
        if rq.path is None:
            return data_set_problem(rq.transfer_syntax, encoded=rq.encoded or b"")
        head = rq.head if rq.data_offset is not None else b""
        return data_set_problem(rq.transfer_syntax, path=rq.path, head=head,
                                offset=rq.data_offset, size=rq.size)
    except Exception as exc:  # arbitrary bytes from the network can fail in any way
        return f"the data set cannot be read ({type(exc).__name__})"


def _record(rx: Receiver, rq: StoreRequest, header: StoreHeader, placed: Placed) -> int:
    """Record the spooled instance in the job log; the C-STORE status."""
    sop_uid = rq.sop_instance_uid
    record = instance_record(header, sop_uid, rq.sop_class_uid, rq.transfer_syntax,
                             placed.path, placed.size, rq.association_id)
    try:
        new = rx.log.record_instance(record)
    except InstanceConflict as exc:  # the UID belongs to another series: never mix them
        logger.warning("refusing SOP instance: %s", exc)
        return Status.DUPLICATE_SOP_INSTANCE
    except DATABASE_ERRORS as exc:
        logger.error("cannot record SOP instance %s in the job log: %s", sop_uid,
                     type(exc).__name__)
        return Status.PROCESSING_FAILURE
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("stored SOP instance %s of series %s (%s, %d bytes%s)", sop_uid,
                     record.series_uid, "eligible" if record.eligible else "not eligible",
                     placed.size, "" if new else ", duplicate")
    return Status.SUCCESS
