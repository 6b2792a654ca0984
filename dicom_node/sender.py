"""C-STORE export of a derived series: one association, every status checked.

:func:`send_files` sends the files to one destination and returns a
:class:`~dicom_node.joblog.DeliveryOutcome` with the status of each instance:
``ok`` when every instance was stored (success or warning), ``partial`` when
the destination refused some, ``failed`` when no association could be made
or nothing was stored. Retries, back-off and the attempt log are the
scheduler's (:mod:`dicom_node.scheduler`); this module makes one attempt.
"""
from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.db import DeliveryStatus
from dicom_node.dimse_tuning import guard_responses, send_from_file, tune_association
from dicom_node.joblog import DeliveryOutcome

__all__ = ["Endpoint", "send_files", "classify_status"]

logger = logging.getLogger(__name__)
_MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


@dataclass(frozen=True)
class Endpoint:
    """Where to send: AE title, host, port; ``tls`` an SSL context (or None)."""

    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


def classify_status(code: int | None) -> str:
    """``success`` (0x0000), ``warning`` (0x0001, 0xB000-0xBFFF) or ``failure``."""
    if code is None:
        return "failure"
    if code == 0x0000:
        return "success"
    if code == 0x0001 or 0xB000 <= code <= 0xBFFF:
        return "warning"
    return "failure"


def _read_headers(files: Sequence[Path]) -> list[tuple[Path, str, str, str]]:
    """(path, SOP class, SOP instance, transfer syntax) of each file."""
    out = []
    for path in files:
        meta = dcmread(path, stop_before_pixels=True,
                       specific_tags=["SOPClassUID", "SOPInstanceUID"])
        out.append((Path(path), str(meta.SOPClassUID), str(meta.SOPInstanceUID),
                    str(meta.file_meta.TransferSyntaxUID)))
    return out


def _build_ae(calling_aet: str, headers: list[tuple[Path, str, str, str]],
              timeout: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    contexts: dict[str, set[str]] = {}
    for _path, sop_class, _uid, syntax in headers:
        contexts.setdefault(sop_class, set()).add(syntax)
    if len(contexts) > _MAX_CONTEXTS:
        raise ValueError(f"a derived series may use at most {_MAX_CONTEXTS} SOP classes. "
                         f"Found {len(contexts)}.")
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes | {ExplicitVRLittleEndian,
                                                             ImplicitVRLittleEndian}))
    return ae


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
    ae = _build_ae(calling_aet, headers, timeout)
    tls_args = (endpoint.tls, endpoint.host) if endpoint.tls else None
    try:
        assoc = ae.associate(endpoint.host, endpoint.port, ae_title=endpoint.ae_title,
                             tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:  # e.g. TLS handshake failure
        return DeliveryOutcome(DeliveryStatus.FAILED, n_failed=len(headers),
                               error=f"cannot connect to {endpoint}: {type(exc).__name__}")
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted or unreachable"
        return DeliveryOutcome(DeliveryStatus.FAILED, n_failed=len(headers),
                               error=f"association with {endpoint} {why}")
    tune_association(assoc)
    guard_responses(assoc)  # only this thread reads the responses (see dimse_tuning)
    results: list[tuple[str, int | None, str]] = []
    try:
        accepted = _accepted_syntaxes(assoc)
        for path, sop_class, sop_uid, syntax in headers:
            if not assoc.is_established:
                results.append((sop_uid, None, "failure"))
                continue
            try:
                status = _store_one(assoc, path, as_is=syntax in accepted.get(sop_class, ()))
            except (ValueError, RuntimeError) as exc:  # e.g. no accepted presentation context
                logger.warning("cannot send SOP instance %s to %s: %s", sop_uid, endpoint, exc)
                results.append((sop_uid, None, "failure"))
                continue
            code = int(status.Status) if "Status" in status else None
            results.append((sop_uid, code, classify_status(code)))
    finally:
        if assoc.is_established:
            assoc.release()
    return _outcome(results, endpoint)


def _accepted_syntaxes(assoc: Any) -> dict[str, set[str]]:
    """SOP class UID -> transfer syntaxes the destination accepted on this association."""
    out: dict[str, set[str]] = {}
    for context in assoc.accepted_contexts:
        out.setdefault(str(context.abstract_syntax), set()).update(str(t) for t in context.transfer_syntax)
    return out


def _store_one(assoc: Any, path: Path, *, as_is: bool) -> Any:
    """C-STORE one file: its bytes as they are when the destination accepted the file's
    transfer syntax (``as_is``), else decoded and converted by pynetdicom."""
    if as_is:
        with send_from_file():
            return assoc.send_c_store(path)
    return assoc.send_c_store(path)


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
