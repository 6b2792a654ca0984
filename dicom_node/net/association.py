"""One connection of the native acceptor (:mod:`dicom_node.net.acceptor`) and its association,
served by its own thread with blocking reads bounded by the network timeout.

The thread follows PS3.8's state machine for an acceptor:

* Sta2: the A-ASSOCIATE-RQ must be complete within ARTIM (``artim_timeout`` from the
  connection, TLS handshake included, however slowly the bytes drip); an A-ABORT is not
  answered, any other PDU is answered with A-ABORT.
* The request is answered (:mod:`dicom_node.net.negotiation`): A-ASSOCIATE-RJ, or
  A-ASSOCIATE-AC once one of ``max_associations`` slots is taken (connections that have not
  associated hold no slot).
* Sta6: PDUs until release or abort, the whole association within
  ``association_timeout``: P-DATA-TF (at most ``max_pdu`` long) PDVs go to the
  :class:`~dicom_node.net.exchange.MessageReceiver`; A-RELEASE-RQ is answered with
  A-RELEASE-RP unless a DIMSE message is unfinished (then A-ABORT); A-ABORT, a closed
  connection, a malformed or unexpected PDU, a PDV for a context that was not accepted, a
  silent peer or a deadline end it (an A-ABORT is sent where the connection allows).
* Sta13: after sending A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the acceptor waits for the
  peer to close the connection, at most ARTIM, reading and dropping what arrives.

An unexpected error aborts this association only, logged. AE titles are logged (and
handed to the handler) with control characters escaped.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import BinaryIO

from dicom_node.net.exchange import MessageReceiver
from dicom_node.net.interface import (ABORT_INVALID_PARAMETER, ABORT_UNEXPECTED_PDU,
                                      ABORT_UNRECOGNIZED_PDU, REJECT_PROTOCOL_VERSION,
                                      REJECT_TOO_MANY, AbortCause, AcceptorView, PeerClosed,
                                      ProtocolViolation)
from dicom_node.net.negotiation import (acceptor_rejection, associate_ac, check_context_ids,
                                        negotiate_contexts, peer_max_pdu, printable_ae_title)
from dicom_node.net.pdu import (A_ABORT, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF, PDU_HEADER,
                                PDU_TYPES, PDV_HEADER, AssociateRQ, PDUError, decode_associate_rq,
                                encode_abort, encode_associate_rj, encode_release_rp,
                                fragment_message)

__all__ = ["Association"]

logger = logging.getLogger("dicom_node.net.acceptor")  # one log for the acceptor's modules

_MAX_CONTROL_PDU = 1 << 20   # an A-ASSOCIATE-RQ (or other non-data PDU) larger is refused
_READ_BUFFER = 1 << 18       # socket read buffer per association, bytes


class DeadlineExpired(TimeoutError):
    """ARTIM or the association's deadline is over (the message says which)."""


class Association:
    """One connection and its association, served by its own thread (:meth:`run`).

    Public for handlers: ``number`` (per acceptor), ``peer_host``/``peer_port``,
    ``calling_ae_title``/``called_ae_title`` (after the request), ``accepted``
    (context id -> (abstract syntax, transfer syntax)) and ``peer_max_pdu``.
    """

    def __init__(self, acceptor: AcceptorView, sock: socket.socket, address: tuple,
                 number: int) -> None:
        self.acceptor, self.number = acceptor, number
        self.settings, self.handler = acceptor.settings, acceptor.handler
        self.peer_host, self.peer_port = str(address[0]), int(address[1])
        self.calling_ae_title = self.called_ae_title = ""
        self.accepted: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        self._sock = sock
        self._rfile: BinaryIO | None = None
        self._send_lock = threading.Lock()
        self._is_tls = False
        self._recorded = False   # the handler knows the association (requested was called)
        self._ended = False      # ... and was told how it ended
        self._stopping = False
        self._messages: MessageReceiver | None = None
        self._deadline: float | None = None  # monotonic time the current phase must end by
        self._deadline_what = ""
        self._timeout = self.settings.network_timeout  # the socket's timeout now
        self.awaiting_request = True  # Sta2: no A-ASSOCIATE-RQ decoded yet
        self._slot = False     # holds one of the acceptor's association slots
        self._linger = False   # Sta13: wait for the peer to close before closing

    def __repr__(self) -> str:
        return (f"association {self.number} from {self.calling_ae_title or '?'} "
                f"({self.peer_host}:{self.peer_port})")

    # -- the thread ----------------------------------------------------------------------
    def run(self) -> None:
        """Serve the connection until it ends; never raises."""
        try:
            self._serve()
        except ProtocolViolation as exc:
            self._abort(AbortCause.PROTOCOL_ERROR, str(exc), reason=exc.reason)
        except PDUError as exc:
            self._abort(AbortCause.PROTOCOL_ERROR, str(exc), reason=ABORT_INVALID_PARAMETER)
        except DeadlineExpired as exc:
            self._abort(AbortCause.TIMEOUT, str(exc))
        except TimeoutError:  # a socket read; shortened to what was left of a deadline?
            shortened = self._deadline is not None and \
                self._timeout < self.settings.network_timeout
            self._abort(AbortCause.TIMEOUT, self._deadline_what if shortened else
                        f"no data for {self.settings.network_timeout:g} s")
        except (PeerClosed, OSError) as exc:
            cause = AbortCause.SHUTDOWN if self._stopping else AbortCause.CONNECTION_LOST
            self._ended_without_release(cause, type(exc).__name__ if isinstance(exc, OSError)
                                        else "")
        except Exception as exc:  # the boundary: one association fails, the server runs on
            logger.exception("%r: unexpected error", self)
            self._abort(AbortCause.INTERNAL_ERROR, type(exc).__name__)
        finally:
            if self._messages is not None:
                self._messages.discard()
            if self._slot:
                self._slot = False
                self.acceptor.release_slot()
            if self._linger:
                self._wait_for_close()
            self._close()

    def request_abort(self) -> None:
        """From another thread (shutdown): end the association now. Sends an A-ABORT where
        that cannot block (plain TCP), then shuts the socket so the thread's read fails."""
        self._stopping = True
        if not self._is_tls and self._send_lock.acquire(timeout=1.0):
            try:
                self._sock.send(encode_abort(0, 0), socket.MSG_DONTWAIT)
            except OSError:
                pass
            finally:
                self._send_lock.release()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def request_close(self) -> None:
        """From another thread: close a connection still waiting for its A-ASSOCIATE-RQ
        (its room is needed); its thread ends as at ARTIM's expiry."""
        if self.awaiting_request:
            logger.info("closing the connection from %s:%d (no A-ASSOCIATE-RQ yet) to serve "
                        "a newer one", self.peer_host, self.peer_port)
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self) -> None:
        started = time.monotonic()
        self._set_deadline(started + self.settings.artim_timeout, "ARTIM")
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.acceptor.ssl_context is not None and not self._handshake():
            return
        self._rfile = self._sock.makefile("rb", buffering=_READ_BUFFER)
        try:
            pdu_type, length = self._read_header()
            if pdu_type == A_ABORT:  # AA-2: close, no answer
                self._read_control(length)
                logger.info("connection from %s:%d aborted before association", self.peer_host,
                            self.peer_port)
                self._ended = True
                return
            if pdu_type != A_ASSOCIATE_RQ:
                raise ProtocolViolation(f"expected an A-ASSOCIATE-RQ, received PDU type "
                                        f"0x{pdu_type:02X}", _unexpected(pdu_type))
            if length > _MAX_CONTROL_PDU:
                raise ProtocolViolation(f"A-ASSOCIATE-RQ of {length} bytes is larger than "
                                        f"{_MAX_CONTROL_PDU}", ABORT_INVALID_PARAMETER)
            body = self._read_exact(length)
        except (PeerClosed, TimeoutError, OSError) as exc:  # ARTIM expired: AA-2, no answer
            logger.info("connection from %s:%d closed before a complete A-ASSOCIATE-RQ (%s)",
                        self.peer_host, self.peer_port, exc or type(exc).__name__)
            self._ended = True
            return
        self.awaiting_request = False
        if self._negotiate(decode_associate_rq(body)):
            limit = self.settings.association_timeout
            self._set_deadline(started + limit if limit else None,
                               f"association open longer than {limit:g} s")
            self._exchange()

    def _handshake(self) -> bool:
        """TLS server handshake, bounded by the network timeout; False if it failed."""
        context = self.acceptor.ssl_context
        assert context is not None
        try:
            self._check_deadline()
            tls = context.wrap_socket(self._sock, server_side=True,
                                      do_handshake_on_connect=False)
            self._sock, self._is_tls = tls, True
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:  # TimeoutError included
            logger.warning("TLS handshake with %s:%d failed: %s", self.peer_host,
                           self.peer_port, getattr(exc, "reason", None) or type(exc).__name__)
            self._ended = True
            return False
        return True

    # -- association establishment ---------------------------------------------------------
    def _negotiate(self, rq: AssociateRQ) -> bool:
        """Answer the request; True when the association is established."""
        self.calling_ae_title = printable_ae_title(rq.calling_ae_title)
        self.called_ae_title = printable_ae_title(rq.called_ae_title)
        if not rq.protocol_version & 1:  # refused below ACSE: not recorded (as pynetdicom)
            logger.warning("%r: unsupported protocol version 0x%04X", self, rq.protocol_version)
            self._refuse(REJECT_PROTOCOL_VERSION)
            return False
        check_context_ids(rq)
        refusal = self.handler.requested(self)
        self._recorded = True
        if refusal is not None:
            self._refuse(refusal)
            return False
        rejection = acceptor_rejection(rq, self.settings)
        if rejection is None:
            self._slot = self.acceptor.reserve_slot()
            rejection = None if self._slot else REJECT_TOO_MANY
        if rejection is not None:
            self._refuse(rejection)
            self.handler.rejected(self, rejection)
            return False
        self.peer_max_pdu = peer_max_pdu(rq)
        negotiated = negotiate_contexts(rq, self.settings)
        self.accepted = negotiated.accepted
        self._send(associate_ac(rq, self.settings, negotiated))
        logger.debug("%r established: %d of %d context(s) accepted", self, len(self.accepted),
                     len(negotiated.results))
        return True

    def _refuse(self, rejection: tuple[int, int, int]) -> None:
        """Send A-ASSOCIATE-RJ; then Sta13 (wait for the peer to close)."""
        self._send(encode_associate_rj(*rejection))
        self._ended = self._linger = True

    # -- data transfer ---------------------------------------------------------------------
    def _exchange(self) -> None:
        """PDUs until release or abort."""
        messages = self._messages = MessageReceiver(self, self.acceptor.temp_files,
                                                    self._read_exact, self._read_into,
                                                    self._respond)
        while True:
            pdu_type, length = self._read_header()
            if pdu_type == P_DATA_TF:
                if 0 < self.settings.max_pdu < length:
                    raise ProtocolViolation(f"P-DATA-TF of {length} bytes is longer than the "
                                            f"maximum length {self.settings.max_pdu}",
                                            ABORT_INVALID_PARAMETER)
                self._p_data(length)
            elif pdu_type == A_RELEASE_RQ:
                self._read_control(length)
                if messages.in_progress:
                    raise ProtocolViolation(f"A-RELEASE-RQ in the middle of a DIMSE message "
                                            f"({messages.in_progress})",
                                            ABORT_UNEXPECTED_PDU)
                self._send(encode_release_rp())
                self._ended = self._linger = True
                self.handler.released(self)
                return
            elif pdu_type == A_ABORT:
                self._read_control(length)
                self._ended_without_release(AbortCause.PEER_ABORT, "")
                return
            else:
                raise ProtocolViolation(f"unexpected PDU type 0x{pdu_type:02X} in an "
                                        "established association", _unexpected(pdu_type))

    def _p_data(self, length: int) -> None:
        """Hand the PDVs of one P-DATA-TF to the message receiver."""
        messages = self._messages
        assert messages is not None
        remaining = length
        if remaining < PDV_HEADER.size:
            raise ProtocolViolation(f"P-DATA-TF of {length} bytes holds no PDV",
                                    ABORT_INVALID_PARAMETER)
        while remaining:
            if remaining < PDV_HEADER.size:
                raise ProtocolViolation(f"{remaining} byte(s) left in a P-DATA-TF, too few for "
                                        "a PDV", ABORT_INVALID_PARAMETER)
            item_length, context_id, control = PDV_HEADER.unpack(self._read_exact(PDV_HEADER.size))
            if item_length < 2 or item_length + 4 > remaining:
                raise ProtocolViolation(f"PDV length {item_length} does not fit the P-DATA-TF "
                                        f"({remaining} bytes left)", ABORT_INVALID_PARAMETER)
            remaining -= 4 + item_length
            if context_id not in self.accepted:
                raise ProtocolViolation(f"PDV for presentation context {context_id}, which was "
                                        "not accepted", ABORT_INVALID_PARAMETER)
            if control & 1:
                messages.command_fragment(context_id, item_length - 2, bool(control & 2))
            else:
                messages.data_fragment(context_id, item_length - 2, bool(control & 2))

    def _respond(self, context_id: int, command: bytes) -> None:
        self._send(b"".join(fragment_message(context_id, command, None, self.peer_max_pdu)))

    # -- I/O ---------------------------------------------------------------------------------
    def _set_deadline(self, deadline: float | None, what: str) -> None:
        """Start a phase that must end by ``deadline`` (monotonic; None: no deadline)."""
        self._deadline, self._deadline_what = deadline, what
        self._timeout = self.settings.network_timeout
        self._sock.settimeout(self._timeout)
        self._check_deadline()

    def _check_deadline(self) -> None:
        """Raise :class:`DeadlineExpired` when the phase's deadline is over; shorten the
        socket timeout to what is left of it (a syscall only then)."""
        if self._deadline is None:
            return
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExpired(self._deadline_what)
        if left < self._timeout:
            self._timeout = left
            self._sock.settimeout(left)

    def _read_exact(self, n: int) -> bytes:
        """``n`` bytes through the read buffer, one socket read at a time (``peek`` fills the
        empty buffer with one read; ``read1`` alone would read a few bytes per system call),
        each within the deadline."""
        rfile = self._rfile
        assert rfile is not None
        if n <= 0:
            return b""
        if len(rfile.peek(n)) >= n:  # the usual case: all of it is buffered now
            return rfile.read(n)
        parts, got = [], 0
        while got < n:
            if not rfile.peek(1):
                raise PeerClosed()
            parts.append(rfile.read1(n - got))
            got += len(parts[-1])
            if got < n:
                self._check_deadline()
        return b"".join(parts)

    def _read_into(self, view: memoryview) -> int:
        """Up to ``len(view)`` bytes into ``view`` with at most one socket read (0: closed)."""
        self._check_deadline()
        return self._rfile.readinto1(view)  # type: ignore[union-attr]

    def _read_header(self) -> tuple[int, int]:
        self._check_deadline()
        pdu_type, length = PDU_HEADER.unpack(self._read_exact(PDU_HEADER.size))
        return pdu_type, length

    def _read_control(self, length: int) -> bytes:
        """The body of a small, fixed-size PDU (release, abort)."""
        if length > 64:
            raise ProtocolViolation(f"control PDU of {length} bytes", ABORT_INVALID_PARAMETER)
        return self._read_exact(length)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _abort(self, cause: AbortCause, detail: str, reason: int = 0) -> None:
        """Send an A-ABORT (service provider) where the connection still allows it, then
        Sta13; record."""
        try:
            self._send(encode_abort(2, reason))
            self._linger = not self._stopping
        except OSError:
            pass
        self._ended_without_release(cause, detail)

    def _wait_for_close(self) -> None:
        """Sta13: read and drop until the peer closes, at most ARTIM seconds."""
        deadline = time.monotonic() + self.settings.artim_timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                self._sock.settimeout(left)
                if not self._sock.recv(65536):
                    return
        except OSError:  # timed out (ARTIM), reset, or shut down at stop
            return
        logger.debug("%r: the peer did not close within ARTIM", self)

    def _ended_without_release(self, cause: AbortCause, detail: str) -> None:
        if self._recorded and not self._ended:
            self._ended = True
            try:
                self.handler.aborted(self, cause, detail)
            except Exception:  # the handler must not take the thread down either
                logger.exception("%r: cannot record the abort", self)
        elif not self._ended:
            self._ended = True
            logger.warning("connection from %s:%d dropped: %s%s", self.peer_host,
                           self.peer_port, cause.value, f" ({detail})" if detail else "")

    def _close(self) -> None:
        for closable in (self._rfile, self._sock):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass


def _unexpected(pdu_type: int) -> int:
    """The A-ABORT reason for a PDU type where it does not belong."""
    return ABORT_UNEXPECTED_PDU if pdu_type in PDU_TYPES else ABORT_UNRECOGNIZED_PDU
