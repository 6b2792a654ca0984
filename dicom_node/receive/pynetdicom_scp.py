"""The storage SCP on pynetdicom's ``AE.start_server`` (``[node] receiver = "pynetdicom"``).

Thin adapters from pynetdicom's events to the shared logic of
:mod:`dicom_node.receive.receiver` (association bookkeeping,
:func:`~dicom_node.receive.c_store.store_instance`):

* Received data sets are streamed by pynetdicom to a temporary file (bounded
  memory); streaming is switched on for this server's associations only
  (:func:`~dicom_node.receive.pynetdicom_tuning.stream_to_disk`), other pynetdicom receivers
  in the process keep pynetdicom's setting.
* Per association, pynetdicom's PDU/DIMSE debug-log handlers are unbound
  unless ``pynetdicom`` logs at DEBUG (:mod:`dicom_node.receive.pynetdicom_tuning`).
* Callers outside ``allowed_calling_aets``, requests for another called AE
  title and associations over ``max_associations`` are rejected by pynetdicom
  itself (its ACSE), then recorded here.
* Guards against what the fuzz suite found (tests/net/test_fuzz.py,
  docs/NETWORK.md): every socket read is bounded by the network timeout, ARTIM is
  ``artim_timeout_seconds`` (pynetdicom: a fixed 30 s), and the temporary file of a
  data set left unfinished by an abort or a lost connection is deleted (pynetdicom
  leaves it behind). A truncated data set is refused by the shared store
  (:func:`~dicom_node.receive.c_store.store_instance`). What cannot be guarded from outside
  pynetdicom (threads that die on garbage command sets, idle connections that take
  association slots, whole PDUs held in memory) makes this receiver one for trusted
  networks only.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt

from dicom_node.config import Config
from dicom_node.dicom.status import Status
from dicom_node.receive.c_store import StoreRequest, store_instance
from dicom_node.receive.pynetdicom_tuning import stop_streaming, stream_to_disk, tune_association
from dicom_node.receive.receiver import (ABORTED_REASON, Peer, Receiver, association_ended,
                                         association_rejected, association_requested,
                                         supported_contexts)
from dicom_node.store.db import AssociationState

__all__ = ["PynetdicomServer", "discard_partial_data_set", "handle_requested", "handle_released",
           "handle_aborted", "handle_rejected", "handle_conn_close", "handle_conn_open",
           "handle_echo", "handle_store"]

logger = logging.getLogger(__name__)

CLOSE_SETTLE_SECONDS = 5.0  # wait for the association's own end event after a close


def _peer(assoc: Any) -> Peer:
    rq = assoc.requestor.primitive
    calling = str(getattr(rq, "calling_ae_title", "") or "").strip()
    called = str(getattr(rq, "called_ae_title", "") or "").strip()
    return Peer(calling, called, assoc.requestor.address, assoc.requestor.port)


def handle_requested(event: Any, rx: Receiver) -> None:
    """A-ASSOCIATE-RQ: record it; refuse it when the disk is above the watermark."""
    tune_association(event.assoc)
    rejection = association_requested(rx, event.assoc, _peer(event.assoc))
    if rejection is not None:
        event.assoc.acse.send_reject(*rejection)
        event.assoc.kill()


def handle_released(event: Any, rx: Receiver) -> None:
    """A-RELEASE: the association's instances now count towards series completion."""
    discard_partial_data_set(event.assoc)  # a release in the middle of a data set
    association_ended(rx, event.assoc, _peer(event.assoc), AssociationState.RELEASED, None)


def discard_partial_data_set(assoc: Any) -> None:
    """Delete the temporary file of a data set pynetdicom was streaming when the
    association ended (pynetdicom leaves it behind); never raises."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    path = getattr(message, "_data_set_path", None)
    if path is None:
        return
    try:
        data_file = getattr(message, "_data_set_file", None)
        if data_file is not None:
            data_file.close()
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("cannot delete an unfinished data set's temporary file: %s",
                       exc.strerror)


def handle_aborted(event: Any, rx: Receiver) -> None:
    """A-ABORT / A-P-ABORT: recorded; the association's instances trigger nothing."""
    discard_partial_data_set(event.assoc)
    association_ended(rx, event.assoc, _peer(event.assoc), AssociationState.ABORTED,
                      ABORTED_REASON)


def handle_rejected(event: Any, rx: Receiver) -> None:
    """A-ASSOCIATE-RJ sent by pynetdicom (AE title checks, association limit)."""
    rsp = event.assoc.acceptor.primitive
    key = (getattr(rsp, "result", None), getattr(rsp, "result_source", None),
           getattr(rsp, "diagnostic", None))
    association_rejected(rx, event.assoc, _peer(event.assoc), key)


def handle_conn_close(event: Any, rx: Receiver) -> None:
    """The fallback for a connection that ends with no release, abort or reject.

    pynetdicom may report the closed connection (DUL thread) a moment before
    the association thread marks the association released, aborted or
    rejected and fires that event, so wait for one of those flags first.
    """
    assoc = event.assoc
    discard_partial_data_set(assoc)
    deadline = time.monotonic() + CLOSE_SETTLE_SECONDS
    while time.monotonic() < deadline:
        if assoc.is_released or assoc.is_aborted or assoc.is_rejected:
            return
        time.sleep(0.01)
    association_ended(rx, assoc, _peer(assoc), AssociationState.ABORTED,
                      "connection closed without A-RELEASE")


def handle_conn_open(event: Any, timeout: float, artim: float = 30.0) -> None:
    """A new connection: bound every socket read by the network timeout, so a peer that
    stalls inside a PDU cannot hold its reader thread and socket forever; ARTIM as
    configured."""
    dul = event.assoc.dul
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is not None:
        sock.settimeout(timeout)
    timer = getattr(dul, "artim_timer", None)
    if timer is not None:
        timer.timeout = artim


def handle_echo(event: Any, rx: Receiver) -> int:
    """C-ECHO: always success."""
    return Status.SUCCESS


def _chunked_path(event: Any) -> Path | None:
    """The temporary file pynetdicom streamed the data set into (None: held in memory)."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path else None


def handle_store(event: Any, rx: Receiver) -> int:
    """C-STORE: the shared store (:func:`~dicom_node.receive.c_store.store_instance`); never
    raises."""
    try:
        path = _chunked_path(event)
        request = StoreRequest(
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            sop_instance_uid=str(getattr(event.request, "AffectedSOPInstanceUID", "") or ""),
            transfer_syntax=str(event.context.transfer_syntax), path=path,
            encoded=None if path else event.encoded_dataset(include_meta=True),
            association_id=rx.assoc_id(event.assoc))
    except Exception:  # the boundary: nothing may escape into the association
        logger.exception("unexpected error reading a C-STORE request")
        return Status.PROCESSING_FAILURE
    return store_instance(rx, request)


class PynetdicomServer:
    """pynetdicom's threaded server with the node's handlers; the interface of
    :class:`dicom_node.net.acceptor.Acceptor` (``start``, ``address``, ``active_associations``,
    ``stop``)."""

    def __init__(self, config: Config, rx: Receiver, ssl_context: Any = None) -> None:
        self.config, self.rx, self.ssl_context = config, rx, ssl_context
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
        for abstract, syntaxes in supported_contexts().items():
            ae.add_supported_context(abstract, syntaxes)
        return ae

    def start(self) -> None:
        """Listen (non-blocking); data sets streamed to disk for this server only."""
        rx, node = self.rx, self.config.node
        handlers = [(evt.EVT_REQUESTED, handle_requested, [rx]),
                    (evt.EVT_RELEASED, handle_released, [rx]),
                    (evt.EVT_ABORTED, handle_aborted, [rx]),
                    (evt.EVT_REJECTED, handle_rejected, [rx]),
                    (evt.EVT_CONN_CLOSE, handle_conn_close, [rx]),
                    (evt.EVT_CONN_OPEN, handle_conn_open, [node.network_timeout_seconds,
                                                           node.artim_timeout_seconds]),
                    (evt.EVT_C_ECHO, handle_echo, [rx]),
                    (evt.EVT_C_STORE, handle_store, [rx])]
        self._server = self._build_ae().start_server(
            (node.host, node.port), block=False, evt_handlers=handlers,
            ssl_context=self.ssl_context)
        stream_to_disk(self._server)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server is bound to."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def active_associations(self) -> list[Any]:
        """pynetdicom's live associations of this server."""
        return list(self._server.active_associations) if self._server is not None else []

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting; wait up to ``grace_seconds`` for open associations, then abort."""
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
