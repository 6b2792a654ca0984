"""Connections over the native acceptor's connection cap, answered by one thread.

The acceptor (:mod:`dicom_node.net.acceptor`) serves up to ``max_connections`` connections with a
thread each. A connection beyond that is handed to the :class:`Refuser`, which serves all of
them from one thread with non-blocking sockets: it reads the peer's first PDU (without
keeping it), answers an A-ASSOCIATE-RQ with A-ASSOCIATE-RJ (transient, local limit
exceeded), any other PDU with A-ABORT and an A-ABORT with nothing, then waits for the peer to
close (PS3.8 Sta13). Each connection is closed when its ARTIM time is over, whatever the
peer sends. At most :data:`MAX_HELD` connections are held; past that they are closed at once.
TLS connections are closed at once (the refuser does not speak TLS).
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from dicom_node.net.interface import ABORT_UNEXPECTED_PDU, ABORT_UNRECOGNIZED_PDU, REJECT_TOO_MANY
from dicom_node.net.pdu import (A_ABORT, A_ASSOCIATE_RQ, PDU_HEADER, PDU_TYPES, encode_abort,
                                encode_associate_rj)

__all__ = ["Refuser", "MAX_HELD"]

logger = logging.getLogger("dicom_node.net.acceptor")  # one log for the acceptor's modules

MAX_HELD = 1024  # connections the refuser holds at once; more are closed without a word


@dataclass
class _Held:
    """One refused connection: its deadline, the PDU header read so far, bytes seen."""

    deadline: float
    header: bytearray = field(default_factory=bytearray)
    seen: int = 0
    answered: bool = False


class Refuser:
    """Answers connections over the cap (see the module docstring); ``artim``: seconds each
    connection is held at most."""

    def __init__(self, artim: float) -> None:
        self.artim = artim
        self._held: dict[socket.socket, _Held] = {}
        self._new: list[socket.socket] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.refused = 0  # connections answered with A-ASSOCIATE-RJ so far

    def take(self, sock: socket.socket, address: tuple) -> None:
        """Serve ``sock`` from the refuser's thread (started on first use)."""
        with self._lock:
            if self._stopping or len(self._held) + len(self._new) >= MAX_HELD:
                sock.close()
                return
            sock.setblocking(False)
            self._new.append(sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="dicom-refuser")
                self._thread.start()
        logger.warning("connection from %s refused: connection limit reached", address[0])
        self._wake()

    def stop(self) -> None:
        """Close every held connection; join the thread."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join(timeout=10.0)
        for sock in [*self._held, *self._new]:
            sock.close()
        self._held.clear()
        self._new.clear()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                with self._lock:
                    new, self._new = self._new, []
                now = time.monotonic()
                for sock in new:
                    self._held[sock] = _Held(now + self.artim)
                    selector.register(sock, selectors.EVENT_READ)
                wait = min((h.deadline for h in self._held.values()), default=now + 60) - now
                for key, _mask in selector.select(max(wait, 0.0)):
                    if key.fileobj is self._wake_r:
                        self._wake_r.recv(4096)
                    else:
                        self._readable(key.fileobj, selector)  # type: ignore[arg-type]
                now = time.monotonic()
                for sock in [s for s, h in self._held.items() if h.deadline <= now]:
                    self._drop(sock, selector)

    def _readable(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        held = self._held[sock]
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock, selector)
            return
        if held.answered:
            return  # Sta13: read and drop until the peer closes
        held.header += data[:PDU_HEADER.size - len(held.header)]
        held.seen += len(data)
        if len(held.header) < PDU_HEADER.size:
            return
        pdu_type, length = PDU_HEADER.unpack(held.header)
        if pdu_type == A_ABORT:
            self._drop(sock, selector)
            return
        if pdu_type == A_ASSOCIATE_RQ:
            if held.seen < PDU_HEADER.size + length:
                return
            answer = encode_associate_rj(*REJECT_TOO_MANY)
            self.refused += 1
        else:
            reason = ABORT_UNEXPECTED_PDU if pdu_type in PDU_TYPES else ABORT_UNRECOGNIZED_PDU
            answer = encode_abort(2, reason)
        try:
            sock.send(answer)  # a few bytes into an empty socket buffer
        except OSError:
            self._drop(sock, selector)
            return
        held.answered, held.deadline = True, time.monotonic() + self.artim

    def _drop(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        self._held.pop(sock, None)
        try:
            selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
