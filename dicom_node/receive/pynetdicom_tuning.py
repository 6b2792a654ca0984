"""pynetdicom settings scoped to the node's own associations (the fast paths).

* :func:`stream_to_disk`: pynetdicom streams a C-STORE data set to a temporary
  file only when ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` is true, a
  process-wide flag. Instead of setting it, the ``_config`` module's class is
  given a property that answers true in the threads of our servers'
  associations and pynetdicom's own (still settable) value everywhere else, so
  other receivers in the same process keep in-memory data sets.
* :func:`tune_association`: per association, unbind pynetdicom's standard
  PDU/DIMSE log handlers (unless the ``pynetdicom`` logger is at DEBUG; they
  build an event per PDU). The DUL reactor's idle poll (pynetdicom: 1 ms) is
  left alone: shortening it made no difference beyond the noise for an SCP and
  made a requestor slower (GIL contention; docs/PERFORMANCE.md).
"""
from __future__ import annotations

import logging
import threading
import types
import weakref
from typing import Any

from pynetdicom import _config, _handlers, evt

__all__ = ["stream_to_disk", "stop_streaming", "tune_association"]

logger = logging.getLogger(__name__)

_STANDARD_LOG_HANDLERS = (
    (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
    (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler))
_STREAMING_SERVERS: "weakref.WeakSet[Any]" = weakref.WeakSet()
_SCOPE_LOCK = threading.Lock()


def _streams_here() -> bool:
    """True in a thread of an association of one of our servers (DUL or association thread)."""
    thread = threading.current_thread()
    assoc = getattr(thread, "assoc", thread)  # the DUL thread knows its association
    server = getattr(assoc, "_server", None)
    return server is not None and server in _STREAMING_SERVERS


class _ScopedConfig(types.ModuleType):
    """``pynetdicom._config`` with ``STORE_RECV_CHUNKED_DATASET`` answered per thread:
    True for our associations, pynetdicom's own (settable) value everywhere else."""

    @property
    def STORE_RECV_CHUNKED_DATASET(self) -> bool:  # noqa: N802 - pynetdicom's name
        return _streams_here() or bool(self.__dict__.get("_rtfsyn_chunked_default", False))

    @STORE_RECV_CHUNKED_DATASET.setter
    def STORE_RECV_CHUNKED_DATASET(self, value: bool) -> None:  # noqa: N802
        self.__dict__["_rtfsyn_chunked_default"] = bool(value)


def _install() -> None:
    """Give pynetdicom's ``_config`` module the per-thread properties (once)."""
    with _SCOPE_LOCK:
        if not isinstance(_config, _ScopedConfig):
            recv = bool(_config.__dict__.pop("STORE_RECV_CHUNKED_DATASET", False))
            _config.__class__ = _ScopedConfig
            _config.STORE_RECV_CHUNKED_DATASET = recv


def stream_to_disk(server: Any) -> None:
    """Make pynetdicom stream C-STORE data sets to a temporary file for ``server``'s
    associations only (instead of setting the process-wide flag)."""
    _install()
    with _SCOPE_LOCK:
        _STREAMING_SERVERS.add(server)


def tune_association(assoc: Any) -> None:
    """Cheaper per-PDU work for one association (see the module docstring)."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        for event, handler in _STANDARD_LOG_HANDLERS:
            assoc.unbind(event, handler)


def stop_streaming(server: Any) -> None:
    """``server`` no longer streams (it stopped)."""
    with _SCOPE_LOCK:
        _STREAMING_SERVERS.discard(server)
