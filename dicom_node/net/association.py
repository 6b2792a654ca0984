"""One connection of the native acceptor (:mod:`dicom_node.net.acceptor`) and its association,
served by its own thread with blocking reads bounded by the network timeout.

The thread reads the A-ASSOCIATE-RQ, answers it (:mod:`dicom_node.net.negotiation`),
then reads PDUs until release or abort: P-DATA-TF PDVs go to the
:class:`~dicom_node.net.exchange.MessageReceiver`, A-RELEASE-RQ is answered, and
A-ABORT, a closed connection, a malformed or unexpected PDU, a PDV for a context
that was not accepted, or a silent peer end it (an A-ABORT is sent where the
connection allows). An unexpected error aborts this association only, logged.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import BinaryIO

from dicom_node.net.exchange import MessageReceiver
from dicom_node.net.negotiation import (acceptor_rejection, associate_ac, negotiate_contexts,
                                        peer_max_pdu)
from dicom_node.net.pdu import (A_ABORT, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF, PDU_HEADER,
                                PDU_TYPES, PDV_HEADER, AssociateRQ, PDUError, decode_associate_rq,
                                encode_abort, encode_associate_rj, encode_release_rp,
                                fragment_message)
from dicom_node.net.interface import (ABORT_INVALID_PARAMETER, ABORT_UNEXPECTED_PDU,
                                      ABORT_UNRECOGNIZED_PDU, REJECT_PROTOCOL_VERSION, AbortCause,
                                      AcceptorView, PeerClosed, ProtocolViolation)

__all__ = ["Association"]

logger = logging.getLogger("dicom_node.net.acceptor")  # one log for the acceptor's modules

_MAX_CONTROL_PDU = 1 << 20   # an A-ASSOCIATE-RQ (or other non-data PDU) larger is refused
_READ_BUFFER = 1 << 18       # socket read buffer per association, bytes


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
        except TimeoutError:
            self._abort(AbortCause.TIMEOUT,
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

    def _serve(self) -> None:
        self._sock.settimeout(self.settings.network_timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.acceptor.ssl_context is not None and not self._handshake():
            return
        self._rfile = self._sock.makefile("rb", buffering=_READ_BUFFER)
        try:
            pdu_type, length = self._read_header()
        except (PeerClosed, TimeoutError, OSError) as exc:
            logger.info("connection from %s:%d closed before an A-ASSOCIATE-RQ (%s)",
                        self.peer_host, self.peer_port, type(exc).__name__)
            self._ended = True
            return
        if pdu_type != A_ASSOCIATE_RQ:
            raise ProtocolViolation(f"expected an A-ASSOCIATE-RQ, received PDU type "
                                    f"0x{pdu_type:02X}", _unexpected(pdu_type))
        if length > _MAX_CONTROL_PDU:
            raise ProtocolViolation(f"A-ASSOCIATE-RQ of {length} bytes is larger than "
                                    f"{_MAX_CONTROL_PDU}", ABORT_INVALID_PARAMETER)
        if self._negotiate(decode_associate_rq(self._read_exact(length))):
            self._exchange()

    def _handshake(self) -> bool:
        """TLS server handshake, bounded by the network timeout; False if it failed."""
        context = self.acceptor.ssl_context
        assert context is not None
        try:
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
        self.calling_ae_title, self.called_ae_title = rq.calling_ae_title, rq.called_ae_title
        if rq.protocol_version != 1:  # refused below ACSE: not recorded (as pynetdicom does)
            logger.warning("%r: unsupported protocol version 0x%04X", self, rq.protocol_version)
            self._send(encode_associate_rj(*REJECT_PROTOCOL_VERSION))
            self._ended = True
            return False
        refusal = self.handler.requested(self)
        self._recorded = True
        if refusal is not None:
            self._send(encode_associate_rj(*refusal))
            self._ended = True
            return False
        rejection = acceptor_rejection(rq, self.settings, self.acceptor.live_count())
        if rejection is not None:
            self._send(encode_associate_rj(*rejection))
            self._ended = True
            self.handler.rejected(self, rejection)
            return False
        self.peer_max_pdu = peer_max_pdu(rq)
        negotiated = negotiate_contexts(rq, self.settings)
        self.accepted = negotiated.accepted
        self._send(associate_ac(rq, self.settings, negotiated))
        logger.debug("%r established: %d of %d context(s) accepted", self, len(self.accepted),
                     len(negotiated.results))
        return True

    # -- data transfer ---------------------------------------------------------------------
    def _exchange(self) -> None:
        """PDUs until release or abort."""
        rfile = self._rfile
        assert rfile is not None
        self._messages = MessageReceiver(self, self.acceptor.temp_files, self._read_exact,
                                         rfile.readinto,  # type: ignore[attr-defined]
                                         self._respond)
        while True:
            pdu_type, length = self._read_header()
            if pdu_type == P_DATA_TF:
                self._p_data(length)
            elif pdu_type == A_RELEASE_RQ:
                self._read_control(length)
                self._send(encode_release_rp())
                self._ended = True
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
    def _read_exact(self, n: int) -> bytes:
        assert self._rfile is not None
        data = self._rfile.read(n)
        if len(data) < n:
            raise PeerClosed()
        return data

    def _read_header(self) -> tuple[int, int]:
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
        """Send an A-ABORT (service provider) where the connection still allows it; record."""
        try:
            self._send(encode_abort(2, reason))
        except OSError:
            pass
        self._ended_without_release(cause, detail)

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
