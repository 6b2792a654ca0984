"""What both receivers share above the wire: the :class:`Receiver` (job log, spool, disk limit,
open associations), the association bookkeeping (:func:`association_requested`,
:func:`association_rejected`, :func:`association_ended`) and the presentation contexts the
node accepts. The engines (:mod:`dicom_node.receive.scp` on :mod:`dicom_node.net`,
:mod:`dicom_node.receive.pynetdicom_scp`) are thin adapters onto these and
:func:`dicom_node.receive.c_store.store_instance`.

Handlers never raise: every failure becomes a DICOM status and a log line with UIDs and AE
titles only (never patient data).
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.uid import (DeflatedExplicitVRLittleEndian,
                         ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEGLSNearLossless,
                         RLELossless)
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicom_node.errors import refused
from dicom_node.store.db import AssociationState
from dicom_node.store.joblog import DATABASE_ERRORS, JobLog
from dicom_node.store.spool import Spool

__all__ = ["Receiver", "Peer", "DiskLimit", "TRANSFER_SYNTAXES", "ABORTED_REASON",
           "supported_contexts", "association_requested", "association_rejected",
           "association_ended"]

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: transient, service provider (presentation), local limit exceeded
REJECT_TRANSIENT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
_REJECT_REASONS = {(0x01, 0x01, 0x03): "calling AE title not recognized",
                   (0x01, 0x01, 0x07): "called AE title not recognized",
                   (0x02, 0x03, 0x02): "local limit exceeded (too many associations)",
                   (0x02, 0x02, 0x01): "user identity not accepted"}
ABORTED_REASON = "A-ABORT (or the connection was lost)"

TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                     DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit,
                     JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                     JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]


def supported_contexts() -> dict[str, list[str]]:
    """Abstract syntax -> transfer syntaxes the node accepts (both receivers): every storage
    SOP class with :data:`TRANSFER_SYNTAXES`, Verification uncompressed or deflated."""
    storage = [str(ts) for ts in TRANSFER_SYNTAXES]
    out = {str(cx.abstract_syntax): storage for cx in AllStoragePresentationContexts}
    out[str(Verification)] = storage[:3]
    return out


class DiskLimit(Protocol):
    """What the receivers ask of the disk guard (:class:`dicom_node.receive.scp.DiskGuard`)."""

    watermark: float

    def percent_used(self) -> float: ...

    def is_short(self) -> bool: ...


@dataclass
class Receiver:
    """What the handlers need: the log, the spool, the disk guard, open association ids
    (keyed by the receiver's association object); ``answered`` counts the C-STORE
    statuses sent since start (read by the metrics)."""

    log: JobLog
    spool: Spool
    disk: DiskLimit
    syncer: Executor | None = None  # runs the spool fsyncs (None: in the handler thread)
    assoc_ids: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: Counter[int] = field(default_factory=Counter)

    def count_status(self, status: int) -> None:
        """Count one C-STORE response status."""
        with self.lock:
            self.answered[status] += 1

    def assoc_id(self, assoc: Any) -> int | None:
        """The job-log id of a live association (None if unknown)."""
        with self.lock:
            try:
                return self.assoc_ids.get(assoc)
            except TypeError:  # not weakly referenceable: never recorded
                return None


@dataclass(frozen=True)
class Peer:
    """Who asked for an association (AE titles stripped)."""

    calling: str
    called: str
    host: str | None
    port: int | None


# -- association bookkeeping (both receivers) -------------------------------------------------
def association_requested(rx: Receiver, key: Any, peer: Peer) -> tuple[int, int, int] | None:
    """A-ASSOCIATE-RQ: record it under ``key``; the rejection to send (already recorded)
    when the disk is above the watermark, else None."""
    try:
        assoc_id = rx.log.open_association(peer.calling, peer.called, peer.host, peer.port)
        with rx.lock:
            rx.assoc_ids[key] = assoc_id
        if rx.disk.is_short():
            reason = (f"disk {rx.disk.percent_used():.1f}% used, at or above the watermark "
                      f"{rx.disk.watermark:g}%")
            logger.warning("rejecting association from %s (%s): %s", peer.calling, peer.host,
                           reason)
            rx.log.end_association(assoc_id, AssociationState.REJECTED, reason)
            refused(f"association from {peer.host}:{peer.port} (calling {peer.calling!r}): "
                    f"{reason}")
            return REJECT_TRANSIENT_LOCAL_LIMIT
    except (*DATABASE_ERRORS, OSError) as exc:
        logger.error("cannot record association request: %s", type(exc).__name__)
    return None


def association_ended(rx: Receiver, key: Any, peer: Peer, state: AssociationState,
                      reason: str | None) -> None:
    """Record the end of the association known under ``key`` (once; later calls no-op)."""
    assoc_id = rx.assoc_id(key)
    if assoc_id is None:
        return
    try:
        if rx.log.end_association(assoc_id, state, reason):
            log = logger.info if state == AssociationState.RELEASED else logger.warning
            log("association %d from %s (%s) %s%s", assoc_id, peer.calling, peer.host,
                state.value, f": {reason}" if reason else "")
    except DATABASE_ERRORS as exc:
        logger.error("cannot record the end of association %d: %s", assoc_id,
                     type(exc).__name__)


def association_rejected(rx: Receiver, key: Any, peer: Peer,
                         rejection: tuple[Any, Any, Any]) -> None:
    """Record an A-ASSOCIATE-RJ (result, source, diagnostic) with its reason in words."""
    reason = _REJECT_REASONS.get(rejection, f"rejected (result, source, diagnostic) = "
                                            f"{rejection}")
    reason = f"{reason}: calling {peer.calling!r}, called {peer.called!r}"
    association_ended(rx, key, peer, AssociationState.REJECTED, reason)
    refused(f"association from {peer.host}:{peer.port}: {reason}")
