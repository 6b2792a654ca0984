"""A native DICOM requestor for the node's exports: C-STORE over one association, on the
codecs of the node's acceptor (:mod:`dicom_node.net.pdu`, :mod:`dicom_node.net.dimse`).

Everything runs in the calling thread with blocking socket I/O, every read and
write bounded by ``timeout`` seconds: connect (and the TLS handshake),
A-ASSOCIATE-RQ answered by -AC or -RJ, then per instance one C-STORE-RQ (the
command and the data set as sent, fragmented to the peer's maximum PDU length
and written with one ``sendall``) and a blocking wait for its C-STORE-RSP, and
finally A-RELEASE. pynetdicom's requestor hands every message between the
caller's thread and two reactor threads that poll; under CPU load each hand-off
waits for a time slice (docs/PERFORMANCE.md).

Failures raise :class:`RequestorError` (or :class:`AssociationRejected`); after
one, the association is aborted and :attr:`Requestor.is_established` is false.
Logs and messages name AE titles, addresses and UIDs only.
"""
from __future__ import annotations

import itertools
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Sequence

from dicom_node.net import dimse
from dicom_node.net.pdu import (A_ABORT, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_RELEASE_RP, A_RELEASE_RQ,
                                P_DATA_TF, PDU_HEADER, AssociateRQ, PDUError, ProposedContext,
                                UserInformation, decode_abort, decode_associate_ac,
                                decode_associate_rj, decode_p_data, encode_abort,
                                encode_associate_rq, encode_release_rq, fragment_message)
from dicom_node.net.interface import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["Requestor", "RequestorError", "AssociationRejected", "AcceptedContext",
           "PRIORITY_MEDIUM"]

logger = logging.getLogger(__name__)

PRIORITY_MEDIUM = 0x0000
_MAX_PDU_RECEIVED = 16382     # what we announce: responses are small
_MAX_CONTROL_PDU = 1 << 20    # an A-ASSOCIATE-AC (or any answer) larger is refused
_MAX_COMMAND = 1 << 16        # a response command set larger is refused


class RequestorError(Exception):
    """The association failed or broke: the message says how."""


class AssociationRejected(RequestorError):
    """The peer answered A-ASSOCIATE-RJ: ``rejection`` = (result, source, reason)."""

    def __init__(self, rejection: tuple[int, int, int]) -> None:
        result, source, reason = rejection
        kind = "permanent" if result == 1 else "transient"
        super().__init__(f"{kind} rejection, source {source}, reason {reason}")
        self.rejection = rejection


@dataclass(frozen=True)
class AcceptedContext:
    """A presentation context the peer accepted."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


class Requestor:
    """One established association as requestor. Open with :meth:`associate`; end with
    :meth:`release` (or :meth:`abort`)."""

    def __init__(self, sock: socket.socket, peer_max_pdu: int,
                 accepted: Sequence[AcceptedContext]) -> None:
        self._sock = sock
        self.peer_max_pdu = peer_max_pdu
        self.accepted = tuple(accepted)
        self._message_ids = itertools.count(0)
        self.is_established = True

    # -- establishment ---------------------------------------------------------------------
    @classmethod
    def associate(cls, host: str, port: int, *, calling_ae_title: str, called_ae_title: str,
                  contexts: Sequence[tuple[str, Sequence[str]]], timeout: float,
                  ssl_context: ssl.SSLContext | None = None) -> "Requestor":
        """Connect and negotiate ``contexts`` ((abstract syntax, transfer syntaxes) each, ids
        1, 3, 5, ...). Raises ``OSError`` (connection, TLS handshake: ``ssl.SSLError``),
        :class:`AssociationRejected` or :class:`RequestorError`."""
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=host)
            proposed = tuple(ProposedContext(2 * k + 1, abstract, tuple(syntaxes))
                             for k, (abstract, syntaxes) in enumerate(contexts))
            user = UserInformation(max_pdu_length=_MAX_PDU_RECEIVED,
                                   implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                                   implementation_version_name=IMPLEMENTATION_VERSION_NAME)
            sock.sendall(encode_associate_rq(AssociateRQ(called_ae_title, calling_ae_title,
                                                         proposed, user)))
            return cls._answer(sock, proposed)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def _answer(cls, sock: socket.socket, proposed: Sequence[ProposedContext]) -> "Requestor":
        """Read the A-ASSOCIATE-AC (or -RJ, or A-ABORT) answering ``proposed``."""
        try:
            pdu_type, body = _read_pdu(sock, _MAX_CONTROL_PDU)
            if pdu_type == A_ASSOCIATE_RJ:
                raise AssociationRejected(decode_associate_rj(body))
            if pdu_type == A_ABORT:
                source, reason = decode_abort(body)
                raise RequestorError(f"aborted by the peer (source {source}, reason {reason})")
            if pdu_type != A_ASSOCIATE_AC:
                raise RequestorError(f"answered the A-ASSOCIATE-RQ with PDU type "
                                     f"0x{pdu_type:02X}")
            ac = decode_associate_ac(body)
        except PDUError as exc:
            raise RequestorError(f"malformed answer to the A-ASSOCIATE-RQ: {exc}") from exc
        abstract = {cx.context_id: cx for cx in proposed}
        accepted = []
        for result in ac.results:
            cx = abstract.get(result.context_id)
            if result.result == 0 and cx is not None and \
                    result.transfer_syntax in cx.transfer_syntaxes:
                accepted.append(AcceptedContext(cx.context_id, cx.abstract_syntax,
                                                result.transfer_syntax))
        return cls(sock, ac.user.max_pdu_length or 0, accepted)

    def context_for(self, sop_class_uid: str, transfer_syntaxes: Sequence[str]
                    ) -> AcceptedContext | None:
        """The accepted context for ``sop_class_uid`` whose transfer syntax comes first in
        ``transfer_syntaxes``; None if there is none."""
        for syntax in transfer_syntaxes:
            for cx in self.accepted:
                if cx.abstract_syntax == sop_class_uid and cx.transfer_syntax == syntax:
                    return cx
        return None

    # -- C-STORE ---------------------------------------------------------------------------
    def c_store(self, context: AcceptedContext, sop_instance_uid: str, data_set: bytes) -> int:
        """Send one C-STORE-RQ with ``data_set`` (encoded in the context's transfer syntax)
        and return the Status of its C-STORE-RSP. Raises :class:`RequestorError` (the
        association is then aborted) for a broken association or a malformed response."""
        if not self.is_established:
            raise RequestorError("the association is no longer established")
        message_id = next(self._message_ids) % 0xFFFF + 1  # 1..65535
        command = dimse.encode_command({
            dimse.AFFECTED_SOP_CLASS: context.abstract_syntax, dimse.COMMAND_FIELD:
            dimse.C_STORE_RQ, dimse.MESSAGE_ID: message_id, 0x0700: PRIORITY_MEDIUM,
            dimse.DATA_SET_TYPE: 0x0000, dimse.AFFECTED_SOP_INSTANCE: sop_instance_uid})
        try:
            self._sock.sendall(b"".join(fragment_message(context.context_id, command, data_set,
                                                         self.peer_max_pdu)))
            response = self._read_response(context.context_id)
            if dimse.command_us(response, dimse.COMMAND_FIELD) != dimse.C_STORE_RSP:
                raise PDUError("the response is not a C-STORE-RSP")
            if dimse.command_us(response, dimse.MESSAGE_ID_RESPONDED_TO) != message_id:
                raise PDUError(f"the response answers another message than {message_id}")
            status = dimse.command_us(response, dimse.STATUS)
            if status is None:
                raise PDUError("the C-STORE-RSP has no Status")
            return status
        except (OSError, PDUError, RequestorError) as exc:
            self.abort()
            if isinstance(exc, RequestorError):
                raise
            what = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise RequestorError(f"C-STORE of {sop_instance_uid} failed: {what}"
                                 f"{f' ({exc})' if isinstance(exc, PDUError) else ''}") from exc

    def _read_response(self, context_id: int) -> dict[int, bytes]:
        """The command set of the next response (P-DATA-TF command fragments)."""
        command = bytearray()
        while True:
            pdu_type, body = _read_pdu(self._sock, max(self.peer_max_pdu, _MAX_CONTROL_PDU))
            if pdu_type == A_ABORT:
                self.is_established = False
                source, reason = decode_abort(body)
                raise RequestorError(f"aborted by the peer (source {source}, reason {reason})")
            if pdu_type != P_DATA_TF:
                raise PDUError(f"unexpected PDU type 0x{pdu_type:02X} while waiting for a "
                               "response")
            for pdv in decode_p_data(body):
                if not pdv.is_command or pdv.context_id != context_id:
                    raise PDUError("the response is not a command on the request's context")
                command += pdv.data
                if len(command) > _MAX_COMMAND:
                    raise PDUError(f"response command set larger than {_MAX_COMMAND} bytes")
                if pdv.is_last:
                    return dimse.decode_command(bytes(command))

    # -- the end ---------------------------------------------------------------------------
    def release(self) -> None:
        """A-RELEASE-RQ, wait for -RP, close. A broken release aborts (never raises)."""
        if not self.is_established:
            self._close()
            return
        try:
            self._sock.sendall(encode_release_rq())
            while True:
                pdu_type, _body = _read_pdu(self._sock, max(self.peer_max_pdu,
                                                            _MAX_CONTROL_PDU))
                if pdu_type in (A_RELEASE_RP, A_ABORT):
                    break
                if pdu_type == A_RELEASE_RQ:  # release collision: we are the requestor
                    continue
        except (OSError, PDUError, RequestorError) as exc:
            logger.warning("release failed (%s); aborting", type(exc).__name__)
            self.abort()
            return
        self.is_established = False
        self._close()

    def abort(self) -> None:
        """A-ABORT (service user) where the connection allows it; close. Never raises."""
        if self.is_established:
            self.is_established = False
            try:
                self._sock.sendall(encode_abort(0, 0))
            except OSError:
                pass
        self._close()

    def _close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise RequestorError("connection closed by the peer")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_pdu(sock: socket.socket, max_length: int) -> tuple[int, bytes]:
    """(type, body) of the next PDU; raises :class:`PDUError` for a body over ``max_length``."""
    pdu_type, length = PDU_HEADER.unpack(_read_exact(sock, PDU_HEADER.size))
    if length > max_length:
        raise PDUError(f"PDU of {length} bytes (type 0x{pdu_type:02X}) is larger than "
                       f"{max_length}")
    return pdu_type, _read_exact(sock, length)
