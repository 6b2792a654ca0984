"""pynetdicom settings scoped to the node's own associations (the fast paths).

* :func:`stream_to_disk`: pynetdicom streams a C-STORE data set to a temporary
  file only when ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` is true, a
  process-wide flag. Instead of setting it, the ``_config`` module's class is
  given a property that answers true in the threads of our servers'
  associations and pynetdicom's own (still settable) value everywhere else, so
  other receivers in the same process keep in-memory data sets.
* :func:`tune_association`: per association, unbind pynetdicom's standard
  PDU/DIMSE log handlers (unless the ``pynetdicom`` logger is at DEBUG; they
  build an event per PDU). It can also shorten the DUL reactor's idle poll
  (pynetdicom: 1 ms); measured in the node that made no difference beyond the
  noise for an SCP and made a requestor slower (GIL contention), so by default
  the poll is left alone (docs/PERFORMANCE.md).
* :func:`guard_responses`: an association we request only sends requests, so its
  own reactor thread must never take a message off the DIMSE queue. pynetdicom
  pauses that reactor around each ``send_c_store`` with a check-then-act on a
  flag, and a reactor thread that loses the GIL at the wrong moment can still
  take the C-STORE response ("Received unexpected C-STORE service message"),
  leaving the sender to wait for the DIMSE timeout. The faster the round trip,
  the likelier: the guard makes the reactor see an empty queue.
* :func:`send_from_file`: within the ``with`` block, in the calling thread only,
  ``send_c_store(path)`` sends the file's encoded data set as it is
  (``STORE_SEND_CHUNKED_DATASET``) instead of decoding and re-encoding it.
"""
from __future__ import annotations

import logging
import threading
import types
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from pynetdicom import _config, _handlers, evt

__all__ = ["stream_to_disk", "stop_streaming", "tune_association", "guard_responses",
           "send_from_file"]

logger = logging.getLogger(__name__)

_STANDARD_LOG_HANDLERS = (
    (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
    (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler))
_STREAMING_SERVERS: "weakref.WeakSet[Any]" = weakref.WeakSet()
_SCOPE_LOCK = threading.Lock()
_SENDING = threading.local()  # .from_file: True inside send_from_file() in this thread


def _streams_here() -> bool:
    """True in a thread of an association of one of our servers (DUL or association thread)."""
    thread = threading.current_thread()
    assoc = getattr(thread, "assoc", thread)  # the DUL thread knows its association
    server = getattr(assoc, "_server", None)
    return server is not None and server in _STREAMING_SERVERS


class _ScopedConfig(types.ModuleType):
    """``pynetdicom._config`` with ``STORE_RECV_CHUNKED_DATASET`` and
    ``STORE_SEND_CHUNKED_DATASET`` answered per thread: True for our associations,
    pynetdicom's own (settable) values everywhere else."""

    @property
    def STORE_RECV_CHUNKED_DATASET(self) -> bool:  # noqa: N802 - pynetdicom's name
        return _streams_here() or bool(self.__dict__.get("_rtfsyn_chunked_default", False))

    @STORE_RECV_CHUNKED_DATASET.setter
    def STORE_RECV_CHUNKED_DATASET(self, value: bool) -> None:  # noqa: N802
        self.__dict__["_rtfsyn_chunked_default"] = bool(value)

    @property
    def STORE_SEND_CHUNKED_DATASET(self) -> bool:  # noqa: N802 - pynetdicom's name
        return bool(getattr(_SENDING, "from_file", False)) or bool(
            self.__dict__.get("_rtfsyn_send_chunked_default", False))

    @STORE_SEND_CHUNKED_DATASET.setter
    def STORE_SEND_CHUNKED_DATASET(self, value: bool) -> None:  # noqa: N802
        self.__dict__["_rtfsyn_send_chunked_default"] = bool(value)


def _install() -> None:
    """Give pynetdicom's ``_config`` module the per-thread properties (once)."""
    with _SCOPE_LOCK:
        if not isinstance(_config, _ScopedConfig):
            recv = bool(_config.__dict__.pop("STORE_RECV_CHUNKED_DATASET", False))
            send = bool(_config.__dict__.pop("STORE_SEND_CHUNKED_DATASET", False))
            _config.__class__ = _ScopedConfig
            _config.STORE_RECV_CHUNKED_DATASET = recv
            _config.STORE_SEND_CHUNKED_DATASET = send


def stream_to_disk(server: Any) -> None:
    """Make pynetdicom stream C-STORE data sets to a temporary file for ``server``'s
    associations only (instead of setting the process-wide flag)."""
    _install()
    with _SCOPE_LOCK:
        _STREAMING_SERVERS.add(server)


def tune_association(assoc: Any, poll_delay_s: float | None = None) -> None:
    """Cheaper per-PDU work for one association (see the module docstring); with a
    ``poll_delay_s`` the DUL reactor polls that often when idle (pynetdicom: 1 ms)."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        for event, handler in _STANDARD_LOG_HANDLERS:
            assoc.unbind(event, handler)
    dul = getattr(assoc, "dul", None)
    if poll_delay_s is not None and dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = poll_delay_s


def stop_streaming(server: Any) -> None:
    """``server`` no longer streams (it stopped)."""
    with _SCOPE_LOCK:
        _STREAMING_SERVERS.discard(server)


def guard_responses(assoc: Any) -> None:
    """Keep ``assoc``'s own reactor thread off its DIMSE message queue (a requestor that
    never serves requests from the peer); every other thread reads it as before."""
    dimse = assoc.dimse
    original = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if threading.current_thread() is assoc:
            return None, None
        return original(block=block)

    dimse.get_msg = get_msg


@contextmanager
def send_from_file() -> Iterator[None]:
    """In this thread, ``send_c_store(path)`` sends the file's bytes without re-encoding
    (the accepted transfer syntax must then be the file's: pynetdicom raises
    ``ValueError`` otherwise, before anything is sent)."""
    _install()
    previous = getattr(_SENDING, "from_file", False)
    _SENDING.from_file = True
    try:
        yield
    finally:
        _SENDING.from_file = previous
