"""C-STORE export of a derived series: one association, every status checked.

:func:`send_files` sends the files to one destination and returns a
:class:`~dicom_node.store.joblog.DeliveryOutcome` with the status of each instance:
``ok`` when every instance was stored (success or warning), ``partial`` when
the destination refused some, ``failed`` when no association could be made
or nothing was stored. Retries, back-off and the attempt log are the
scheduler's (:mod:`dicom_node.schedule.scheduler`); this module makes one attempt.

The association is the node's own requestor (:mod:`dicom_node.net.requestor`):
blocking I/O in the calling thread. Each file's data set is sent as it is
encoded when the destination accepted the file's transfer syntax, else decoded
and re-encoded in the (uncompressed little endian) syntax it accepted.
"""
from __future__ import annotations

import logging
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.dicom.status import classify_status
from dicom_node.store.db import DeliveryStatus
from dicom_node.store.joblog import DeliveryOutcome
from dicom_node.net.requestor import (AcceptedContext, AssociationRejected, Requestor,
                                      RequestorError)

__all__ = ["Endpoint", "send_files", "classify_status"]

logger = logging.getLogger(__name__)
_MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association
_CONVERTIBLE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # re-encoded when needed
_GROUP_LENGTH = struct.Struct("<HH2sHI")  # (0002,0000) UL, explicit VR little endian


@dataclass(frozen=True)
class Endpoint:
    """Where to send: AE title, host, port; ``tls`` an SSL context (or None)."""

    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


def _read_headers(files: Sequence[Path]) -> list[tuple[Path, str, str, str]]:
    """(path, SOP class, SOP instance, transfer syntax) of each file."""
    out = []
    for path in files:
        meta = dcmread(path, stop_before_pixels=True,
                       specific_tags=["SOPClassUID", "SOPInstanceUID"])
        out.append((Path(path), str(meta.SOPClassUID), str(meta.SOPInstanceUID),
                    str(meta.file_meta.TransferSyntaxUID)))
    return out


def _proposed_contexts(headers: list[tuple[Path, str, str, str]]
                       ) -> list[tuple[str, list[str]]]:
    """One presentation context per SOP class: the files' transfer syntaxes first (a
    destination that takes the requestor's order then gets the files as they are), then
    the two uncompressed little endian ones."""
    contexts: dict[str, set[str]] = {}
    for _path, sop_class, _uid, syntax in headers:
        contexts.setdefault(sop_class, set()).add(syntax)
    if len(contexts) > _MAX_CONTEXTS:
        raise ValueError(f"a derived series may use at most {_MAX_CONTEXTS} SOP classes. "
                         f"Found {len(contexts)}.")
    return [(sop_class, sorted(syntaxes) + [s for s in _CONVERTIBLE if s not in syntaxes])
            for sop_class, syntaxes in contexts.items()]


def _associate(endpoint: Endpoint, calling_aet: str,
               contexts: list[tuple[str, list[str]]],
               timeout: float) -> tuple[Requestor | None, str | None]:
    """The established association, or None and why not."""
    try:
        return Requestor.associate(endpoint.host, endpoint.port, calling_ae_title=calling_aet,
                                   called_ae_title=endpoint.ae_title, contexts=contexts,
                                   timeout=timeout, ssl_context=endpoint.tls), None
    except AssociationRejected as exc:
        return None, f"association with {endpoint} rejected ({exc})"
    except ssl.SSLError as exc:  # e.g. the destination's certificate is not trusted
        return None, f"cannot connect to {endpoint}: {type(exc).__name__}"
    except (OSError, RequestorError) as exc:
        detail = str(exc) if isinstance(exc, RequestorError) else type(exc).__name__
        return None, f"association with {endpoint} aborted or unreachable ({detail})"


def send_files(files: Sequence[Path], endpoint: Endpoint, *, calling_aet: str,
               timeout: float = 30.0) -> DeliveryOutcome:
    """One export attempt of ``files`` to ``endpoint`` in one association (never raises
    for network or peer failures; they become a ``failed`` outcome)."""
    try:
        headers = _read_headers(files)
    except (OSError, ValueError, AttributeError) as exc:
        return DeliveryOutcome(DeliveryStatus.FAILED, n_failed=len(files),
                               error=f"cannot read the derived files: {type(exc).__name__}")
    if not headers:
        return DeliveryOutcome(DeliveryStatus.FAILED, error="no files to send")
    assoc, error = _associate(endpoint, calling_aet, _proposed_contexts(headers), timeout)
    if assoc is None:
        return DeliveryOutcome(DeliveryStatus.FAILED, n_failed=len(headers), error=error)
    results: list[tuple[str, int | None, str]] = []
    try:
        for path, sop_class, sop_uid, syntax in headers:
            code = _store_one(assoc, endpoint, path, sop_class, sop_uid, syntax)
            results.append((sop_uid, code, classify_status(code)))
    finally:
        assoc.release()
    return _outcome(results, endpoint)


def _store_one(assoc: Requestor, endpoint: Endpoint, path: Path, sop_class: str,
               sop_uid: str, syntax: str) -> int | None:
    """C-STORE one file; its status, or None when it could not be sent (logged)."""
    if not assoc.is_established:
        return None
    context = assoc.context_for(sop_class, [syntax, *(s for s in _CONVERTIBLE
                                                      if syntax in _CONVERTIBLE)])
    if context is None:
        logger.warning("cannot send SOP instance %s to %s: no accepted presentation context "
                       "for %s in %s", sop_uid, endpoint, sop_class, syntax)
        return None
    try:
        data_set = _data_set(path, syntax, context)
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("cannot send SOP instance %s to %s: cannot read %s (%s)", sop_uid,
                       endpoint, path.name, type(exc).__name__)
        return None
    try:
        return assoc.c_store(context, sop_uid, data_set)
    except RequestorError as exc:
        logger.warning("cannot send SOP instance %s to %s: %s", sop_uid, endpoint, exc)
        return None


def _data_set(path: Path, syntax: str, context: AcceptedContext) -> bytes:
    """The file's data set in the context's transfer syntax: its bytes after the file meta
    information as they are when the syntax is the file's, else re-encoded."""
    data = path.read_bytes()
    if context.transfer_syntax == syntax:
        offset = _data_set_offset(data)
        if offset is not None:
            return data[offset:]
    ds = dcmread(path)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = context.transfer_syntax == ImplicitVRLittleEndian
    write_dataset(out, ds)
    return out.getvalue()


def _data_set_offset(data: bytes) -> int | None:
    """Where the data set starts in a Part 10 file: after the preamble, ``DICM`` and the
    file meta group its group length (0002,0000) measures; None if it has none."""
    if len(data) < 132 + _GROUP_LENGTH.size or data[128:132] != b"DICM":
        return None
    group, element, vr, length, value = _GROUP_LENGTH.unpack_from(data, 132)
    if (group, element, vr, length) != (0x0002, 0x0000, b"UL", 4):
        return None
    offset = 132 + _GROUP_LENGTH.size + value
    return offset if offset <= len(data) else None


def _outcome(results: list[tuple[str, int | None, str]], endpoint: Endpoint) -> DeliveryOutcome:
    n_warning = sum(1 for r in results if r[2] == "warning")
    n_ok = sum(1 for r in results if r[2] == "success") + n_warning
    n_failed = len(results) - n_ok
    if n_failed == 0:
        status, error = DeliveryStatus.OK, None
    else:
        codes = sorted({f"0x{r[1]:04X}" if r[1] is not None else "no response"
                        for r in results if r[2] == "failure"})
        status = DeliveryStatus.PARTIAL if n_ok else DeliveryStatus.FAILED
        error = (f"{endpoint} refused {n_failed} of {len(results)} instance(s) "
                 f"(status {', '.join(codes)})")
    logger.info("delivery to %s: %d sent (%d with warning), %d failed", endpoint, n_ok,
                n_warning, n_failed)
    return DeliveryOutcome(status, n_sent=n_ok, n_warning=n_warning, n_failed=n_failed,
                           error=error, instances=tuple(results))
