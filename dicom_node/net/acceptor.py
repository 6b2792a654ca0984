"""A native DICOM upper-layer acceptor: the node's storage SCP without pynetdicom's reactors.

One listening socket, one accept thread, and one thread per association with
blocking, timed socket reads (as dcmtk ``storescp`` does): nothing polls or
sleeps on the receive path. What the node does with an association is left to
an :class:`AssociationHandler` (:mod:`dicom_node.receive.scp` records it in the job log
and spools the instances); this module speaks the protocol:

* PS3.8 association establishment: the A-ASSOCIATE-RQ is checked and answered
  with an A-ASSOCIATE-RJ (unsupported protocol version 1/2/2, calling AE title
  not allowed 1/1/3, called AE title not ours 1/1/7, too many associations
  2/3/2, or whatever the handler refuses) or an A-ASSOCIATE-AC: per context the
  first transfer syntax *in the requestor's order* that is supported, the
  node's maximum PDU length and implementation, an asynchronous operations
  window of 1/1, the SCU role only.
* P-DATA-TF: command sets are collected (at most 64 KiB) and decoded; C-ECHO
  is answered, a C-STORE data set is streamed fragment by fragment into a
  temporary file behind a DICOM file meta header (bounded memory, whatever the
  instance size; :mod:`dicom_node.net.incoming`), its first 64 KiB also kept in
  memory, then handed to the handler, whose status is sent back.
  Requests of other services get "unrecognized operation" (0x0211).
* A-RELEASE-RQ is answered and ends the association; A-ABORT, a closed
  connection, a malformed or unexpected PDU, a PDV for a context that was not
  accepted, or a peer silent for ``network_timeout`` seconds (every read is
  bounded by it; the TLS handshake too, in the association's thread) abort it.
  An unexpected error aborts that association only and is logged.

Where each part lives: this module is the acceptor (listening socket, accept
thread, one thread per association, shutdown) and re-exports the public names;
:mod:`dicom_node.net.interface` the settings, handler interface and codes,
:mod:`dicom_node.net.association` one connection's thread and its PDU loop,
:mod:`dicom_node.net.negotiation` the A-ASSOCIATE answer,
:mod:`dicom_node.net.exchange` the P-DATA/DIMSE exchange, and
:mod:`dicom_node.net.pdu` / :mod:`dicom_node.net.dimse` / :mod:`dicom_node.net.incoming`
the codecs and the temporary files.

Logs name AE titles, addresses and UIDs only, never patient data.
"""
from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading

from dicom_node.net.association import Association
from dicom_node.net.incoming import TempFiles
from dicom_node.net.interface import (ABORT_INVALID_PARAMETER, ABORT_UNEXPECTED_PDU,
                                      ABORT_UNRECOGNIZED_PDU, IMPLEMENTATION_CLASS_UID,
                                      IMPLEMENTATION_VERSION_NAME, REJECT_APPLICATION_CONTEXT,
                                      REJECT_CALLED_AE, REJECT_CALLING_AE, REJECT_NO_REASON,
                                      REJECT_PROTOCOL_VERSION, REJECT_TOO_MANY, AbortCause,
                                      AcceptorSettings, AssociationHandler, ReceivedInstance)
from dicom_node.net.refuser import Refuser

__all__ = ["Acceptor", "AcceptorSettings", "Association", "AssociationHandler", "AbortCause",
           "ReceivedInstance", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME",
           "REJECT_PROTOCOL_VERSION", "REJECT_CALLING_AE", "REJECT_CALLED_AE",
           "REJECT_TOO_MANY", "REJECT_NO_REASON", "REJECT_APPLICATION_CONTEXT",
           "ABORT_INVALID_PARAMETER", "ABORT_UNEXPECTED_PDU", "ABORT_UNRECOGNIZED_PDU"]

logger = logging.getLogger(__name__)


class Acceptor:
    """Listen on ``address``; serve every connection in its own thread.

    ``start()`` returns once it listens; ``stop(grace_seconds)`` stops accepting,
    lets open associations finish for the grace period, aborts the rest and
    joins every thread it started.
    """

    def __init__(self, address: tuple[str, int], settings: AcceptorSettings,
                 handler: AssociationHandler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings, self.handler, self.ssl_context = settings, handler, ssl_context
        self._address = address
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._threads: dict[Association, threading.Thread] = {}
        self._changed = threading.Condition()
        self._counter = 0
        self._slots_used = 0  # established associations (or being answered with an AC)
        self.temp_files = TempFiles(settings.temp_dir)
        self._max_connections = settings.max_connections or max(64, 4 * settings.max_associations)
        self._refuser = Refuser(settings.artim_timeout)

    def start(self) -> None:
        """Bind and listen; start the accept thread."""
        host, port = self._address
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        listener = socket.create_server((host, port), family=family, backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name=f"dicom-accept-{self.address[1]}")
        self._accept_thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the listening socket is bound to."""
        if self._listener is None:
            raise RuntimeError("the acceptor is not listening")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def active_associations(self) -> list[Association]:
        """Connections being served (negotiating or established)."""
        with self._changed:
            return list(self._threads)

    def reserve_slot(self) -> bool:
        """Take one of the ``max_associations`` slots for an association about to be
        accepted; False when all are taken."""
        with self._changed:
            if self._slots_used >= self.settings.max_associations:
                return False
            self._slots_used += 1
            return True

    def release_slot(self) -> None:
        """Give back a slot taken by :meth:`reserve_slot` (the association ended)."""
        with self._changed:
            self._slots_used = max(0, self._slots_used - 1)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _mask in selector.select()}
                if self._wake_r in ready:
                    return
                try:
                    sock, address = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # out of file descriptors, ...: wait a moment
                    logger.error("cannot accept a connection: %s", exc.strerror)
                    if self._stopping.wait(0.1):
                        return
                    continue
                self._spawn(sock, address)

    def _spawn(self, sock: socket.socket, address: tuple) -> None:
        with self._changed:
            over = len(self._threads) >= self._max_connections
            if over:  # make room: the connection waiting longest for its A-ASSOCIATE-RQ goes
                waiting = [a for a in self._threads if a.awaiting_request]
                if waiting:
                    min(waiting, key=lambda a: a.number).request_close()
                    over = False
            if not over:
                self._counter += 1
                assoc = Association(self, sock, address, self._counter)
                thread = threading.Thread(target=self._run, args=(assoc,), daemon=True,
                                          name=f"dicom-assoc-{self._counter}")
                self._threads[assoc] = thread
        if over:  # answered by one thread for all of them (A-ASSOCIATE-RJ), or closed
            if self.ssl_context is None:
                self._refuser.take(sock, address)
            else:
                sock.close()
            return
        thread.start()

    def _run(self, assoc: Association) -> None:
        try:
            assoc.run()
        finally:
            with self._changed:
                self._threads.pop(assoc, None)
                self._changed.notify_all()

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting; wait up to ``grace_seconds`` for open associations, abort the
        rest; join every thread."""
        if self._listener is None:
            return
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._accept_thread is not None:
            self._accept_thread.join()
        self._listener.close()
        with self._changed:
            self._changed.wait_for(lambda: not self._threads, timeout=max(grace_seconds, 0.0))
            remaining = dict(self._threads)
        for assoc in remaining:
            logger.warning("aborting %r at shutdown", assoc)
            assoc.request_abort()
        for assoc, thread in remaining.items():
            thread.join(timeout=max(30.0, self.settings.network_timeout))
            if thread.is_alive():
                logger.error("%r did not end after its abort", assoc)
        self._refuser.stop()
        self._wake_r.close()
        self._wake_w.close()
        self._listener = None
