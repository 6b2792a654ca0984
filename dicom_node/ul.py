"""A native DICOM upper-layer acceptor: the node's storage SCP without pynetdicom's reactors.

One listening socket, one accept thread, and one thread per association with
blocking, timed socket reads (as dcmtk ``storescp`` does): nothing polls or
sleeps on the receive path. What the node does with an association is left to
an :class:`AssociationHandler` (:mod:`dicom_node.scp` records it in the job log
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
  instance size; :mod:`dicom_node.ul_incoming`), its first 64 KiB also kept in
  memory, then handed to the handler, whose status is sent back.
  Requests of other services get "unrecognized operation" (0x0211).
* A-RELEASE-RQ is answered and ends the association; A-ABORT, a closed
  connection, a malformed or unexpected PDU, a PDV for a context that was not
  accepted, or a peer silent for ``network_timeout`` seconds (every read is
  bounded by it; the TLS handshake too, in the association's thread) abort it.
  An unexpected error aborts that association only and is logged.

Logs name AE titles, addresses and UIDs only, never patient data.
"""
from __future__ import annotations

import enum
import logging
import selectors
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping, Protocol

from dicom_node import ul_dimse as dimse
from dicom_node.ul_incoming import Incoming, TempFiles
from dicom_node.ul_pdu import (A_ABORT, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF, PDU_HEADER,
                               PDU_TYPES, PDV_HEADER, AssociateAC, AssociateRQ, ContextResult,
                               PDUError, RoleSelection, UserInformation, decode_associate_rq,
                               encode_abort, encode_associate_ac, encode_associate_rj,
                               encode_release_rp, fragment_message)

__all__ = ["Acceptor", "AcceptorSettings", "Association", "AssociationHandler", "AbortCause",
           "ReceivedInstance", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME",
           "REJECT_PROTOCOL_VERSION", "REJECT_CALLING_AE", "REJECT_CALLED_AE",
           "REJECT_TOO_MANY"]

logger = logging.getLogger(__name__)

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.77.2"  # the node's (dicom_node.derive)
IMPLEMENTATION_VERSION_NAME = "RTFSYN_NODE_01"
# A-ASSOCIATE-RJ (result, source, reason/diagnostic), PS3.8 section 9.3.4
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_TOO_MANY = (0x02, 0x03, 0x02)
# A-ABORT reasons of the service provider (source 2)
_ABORT_UNRECOGNIZED_PDU, _ABORT_UNEXPECTED_PDU, _ABORT_INVALID_PARAMETER = 0x01, 0x02, 0x06
_MAX_CONTROL_PDU = 1 << 20   # an A-ASSOCIATE-RQ (or other non-data PDU) larger is refused
_MAX_COMMAND = 1 << 16       # a command set larger is refused
_READ_BUFFER = 1 << 18       # socket read buffer per association, bytes
_CHUNK = 1 << 18             # data set bytes copied to the file per read


class AbortCause(enum.Enum):
    """Why an association ended without A-RELEASE."""

    PEER_ABORT = "A-ABORT from the peer"
    CONNECTION_LOST = "connection closed without A-RELEASE"
    TIMEOUT = "network timeout"
    PROTOCOL_ERROR = "protocol error"
    SHUTDOWN = "aborted at shutdown"
    INTERNAL_ERROR = "internal error"


@dataclass(frozen=True)
class AcceptorSettings:
    """What the acceptor negotiates. ``supported``: abstract syntax -> transfer syntaxes;
    ``max_pdu`` 0 means no limit; ``temp_dir`` None: :func:`tempfile.gettempdir`."""

    ae_title: str
    supported: Mapping[str, frozenset[str]]
    max_pdu: int = 16382
    max_associations: int = 10
    network_timeout: float = 60.0
    called_aet_check: bool = True
    allowed_calling_aets: tuple[str, ...] = ()
    temp_dir: Path | None = None
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME


@dataclass(frozen=True)
class ReceivedInstance:
    """A C-STORE data set received into ``path`` (file meta + the data set as sent, ``size``
    bytes in all); ``head``: the data set's first bytes (all of it when ``head_complete``)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path
    size: int | None = None
    head: bytes = b""
    head_complete: bool = False


class AssociationHandler(Protocol):
    """What the node does with an association. Every method runs in the association's
    thread; an exception escaping one aborts that association (and is logged)."""

    def requested(self, assoc: "Association") -> tuple[int, int, int] | None:
        """A-ASSOCIATE-RQ received: record it; a (result, source, reason) refuses it (the
        handler has then recorded the refusal itself)."""

    def rejected(self, assoc: "Association", rejection: tuple[int, int, int]) -> None:
        """The acceptor refused the association (AE titles, too many associations)."""

    def released(self, assoc: "Association") -> None:
        """A-RELEASE completed."""

    def aborted(self, assoc: "Association", cause: AbortCause, detail: str) -> None:
        """The association ended without A-RELEASE."""

    def echo(self, assoc: "Association") -> int:
        """C-ECHO: the status to answer."""

    def store(self, assoc: "Association", instance: ReceivedInstance) -> int:
        """C-STORE: keep the instance (move its file away or leave it to be deleted);
        the status to answer."""


class _Closed(Exception):
    """The peer closed the connection."""


class _ProtocolError(Exception):
    """The peer broke PS3.8/PS3.7; abort with this A-ABORT reason."""

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason


class Association:
    """One connection and its association, served by its own thread (:meth:`run`).

    Public for handlers: ``number`` (per acceptor), ``peer_host``/``peer_port``,
    ``calling_ae_title``/``called_ae_title`` (after the request), ``accepted``
    (context id -> (abstract syntax, transfer syntax)) and ``peer_max_pdu``.
    """

    def __init__(self, acceptor: "Acceptor", sock: socket.socket, address: tuple,
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
        self._command = bytearray()
        self._command_context: int | None = None
        self._incoming: Incoming | None = None
        self._chunk = memoryview(bytearray(_CHUNK))

    def __repr__(self) -> str:
        return (f"association {self.number} from {self.calling_ae_title or '?'} "
                f"({self.peer_host}:{self.peer_port})")

    # -- the thread ----------------------------------------------------------------------
    def run(self) -> None:
        """Serve the connection until it ends; never raises."""
        try:
            self._serve()
        except _ProtocolError as exc:
            self._abort(AbortCause.PROTOCOL_ERROR, str(exc), reason=exc.reason)
        except PDUError as exc:
            self._abort(AbortCause.PROTOCOL_ERROR, str(exc), reason=_ABORT_INVALID_PARAMETER)
        except TimeoutError:
            self._abort(AbortCause.TIMEOUT,
                        f"no data for {self.settings.network_timeout:g} s")
        except (_Closed, OSError) as exc:
            cause = AbortCause.SHUTDOWN if self._stopping else AbortCause.CONNECTION_LOST
            self._ended_without_release(cause, type(exc).__name__ if isinstance(exc, OSError)
                                        else "")
        except Exception as exc:  # the boundary: one association fails, the server runs on
            logger.exception("%r: unexpected error", self)
            self._abort(AbortCause.INTERNAL_ERROR, type(exc).__name__)
        finally:
            if self._incoming is not None:
                self._incoming.discard()
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
        except (_Closed, TimeoutError, OSError) as exc:
            logger.info("connection from %s:%d closed before an A-ASSOCIATE-RQ (%s)",
                        self.peer_host, self.peer_port, type(exc).__name__)
            self._ended = True
            return
        if pdu_type != A_ASSOCIATE_RQ:
            raise _ProtocolError(f"expected an A-ASSOCIATE-RQ, received PDU type 0x{pdu_type:02X}",
                                 _ABORT_UNEXPECTED_PDU if pdu_type in PDU_TYPES
                                 else _ABORT_UNRECOGNIZED_PDU)
        if length > _MAX_CONTROL_PDU:
            raise _ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes is larger than "
                                 f"{_MAX_CONTROL_PDU}", _ABORT_INVALID_PARAMETER)
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
        s = self.settings
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
        rejection = None
        if s.allowed_calling_aets and rq.calling_ae_title not in s.allowed_calling_aets:
            rejection = REJECT_CALLING_AE
        if s.called_aet_check and rq.called_ae_title != s.ae_title:
            rejection = REJECT_CALLED_AE
        if self.acceptor.live_count() > s.max_associations:
            rejection = REJECT_TOO_MANY
        if rejection is not None:
            self._send(encode_associate_rj(*rejection))
            self._ended = True
            self.handler.rejected(self, rejection)
            return False
        peer_max = rq.user.max_pdu_length or 0
        if 0 < peer_max <= PDV_HEADER.size:
            raise _ProtocolError(f"maximum length {peer_max} leaves no room for a PDV",
                                 _ABORT_INVALID_PARAMETER)
        self.peer_max_pdu = peer_max
        results, roles = self._contexts(rq)
        async_ops = (1, 1) if rq.user.async_ops is not None else None
        user = UserInformation(max_pdu_length=s.max_pdu,
                               implementation_class_uid=s.implementation_class_uid,
                               implementation_version_name=s.implementation_version_name,
                               async_ops=async_ops, roles=roles)
        self._send(encode_associate_ac(AssociateAC(rq.called_ae_title, rq.calling_ae_title,
                                                   results, user)))
        logger.debug("%r established: %d of %d context(s) accepted", self, len(self.accepted),
                     len(results))
        return True

    def _contexts(self, rq: AssociateRQ) -> tuple[tuple[ContextResult, ...],
                                                  tuple[RoleSelection, ...]]:
        """Per proposed context: accepted with the requestor's first supported transfer
        syntax (0), abstract syntax (3) or transfer syntaxes (4) not supported, or rejected
        (1) when the requestor declined the SCU role for it; the role replies (SCU only)."""
        scu_declined = {r.sop_class_uid for r in rq.user.roles if not r.scu_role}
        results = []
        for cx in rq.contexts:
            if cx.context_id in {r.context_id for r in results}:
                raise _ProtocolError(f"presentation context id {cx.context_id} proposed twice",
                                     _ABORT_INVALID_PARAMETER)
            supported = self.settings.supported.get(cx.abstract_syntax)
            chosen = next((ts for ts in cx.transfer_syntaxes if ts in supported), None) \
                if supported is not None else None
            if supported is None:
                results.append(ContextResult(cx.context_id, 3, cx.transfer_syntaxes[0]))
            elif chosen is None:
                results.append(ContextResult(cx.context_id, 4, cx.transfer_syntaxes[0]))
            elif cx.abstract_syntax in scu_declined:
                results.append(ContextResult(cx.context_id, 1, chosen))
            else:
                results.append(ContextResult(cx.context_id, 0, chosen))
                self.accepted[cx.context_id] = (cx.abstract_syntax, chosen)
        accepted_classes = {abstract for abstract, _ts in self.accepted.values()}
        roles = tuple(RoleSelection(r.sop_class_uid, True, False) for r in rq.user.roles
                      if r.sop_class_uid in accepted_classes)
        return tuple(results), roles

    # -- data transfer ---------------------------------------------------------------------
    def _exchange(self) -> None:
        """PDUs until release or abort."""
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
                raise _ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} in an established "
                                     "association", _ABORT_UNEXPECTED_PDU if pdu_type in PDU_TYPES
                                     else _ABORT_UNRECOGNIZED_PDU)

    def _p_data(self, length: int) -> None:
        """Stream the PDVs of one P-DATA-TF."""
        remaining = length
        if remaining < PDV_HEADER.size:
            raise _ProtocolError(f"P-DATA-TF of {length} bytes holds no PDV",
                                 _ABORT_INVALID_PARAMETER)
        while remaining:
            if remaining < PDV_HEADER.size:
                raise _ProtocolError(f"{remaining} byte(s) left in a P-DATA-TF, too few for a "
                                     "PDV", _ABORT_INVALID_PARAMETER)
            item_length, context_id, control = PDV_HEADER.unpack(self._read_exact(PDV_HEADER.size))
            if item_length < 2 or item_length + 4 > remaining:
                raise _ProtocolError(f"PDV length {item_length} does not fit the P-DATA-TF "
                                     f"({remaining} bytes left)", _ABORT_INVALID_PARAMETER)
            remaining -= 4 + item_length
            if context_id not in self.accepted:
                raise _ProtocolError(f"PDV for presentation context {context_id}, which was not "
                                     "accepted", _ABORT_INVALID_PARAMETER)
            if control & 1:
                self._command_fragment(context_id, item_length - 2, bool(control & 2))
            else:
                self._data_fragment(context_id, item_length - 2, bool(control & 2))

    def _command_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self._incoming is not None:
            raise _ProtocolError("command fragment while a data set is expected")
        if self._command_context not in (None, context_id):
            raise _ProtocolError("command fragments on two presentation contexts")
        if len(self._command) + size > _MAX_COMMAND:
            raise _ProtocolError(f"command set larger than {_MAX_COMMAND} bytes")
        self._command_context = context_id
        self._command += self._read_exact(size)
        if last:
            raw = bytes(self._command)
            self._command.clear()
            self._command_context = None
            self._on_command(context_id, raw)

    def _data_fragment(self, context_id: int, size: int, last: bool) -> None:
        incoming = self._incoming
        if incoming is None:
            raise _ProtocolError("data set fragment without a command")
        if context_id != incoming.context_id:
            raise _ProtocolError(f"data set fragment on context {context_id}, its command came "
                                 f"on {incoming.context_id}")
        chunk, rfile = self._chunk, self._rfile
        assert rfile is not None
        while size:
            n = rfile.readinto(chunk[:min(size, _CHUNK)])  # type: ignore[attr-defined]
            if not n:
                raise _Closed()
            incoming.write(chunk[:n])
            size -= n
        if last:
            self._incoming = None
            try:
                self._on_data_set(incoming)
            finally:
                incoming.discard()

    # -- DIMSE ---------------------------------------------------------------------------
    def _on_command(self, context_id: int, raw: bytes) -> None:
        command = dimse.decode_command(raw)
        field = dimse.command_us(command, dimse.COMMAND_FIELD)
        message_id = dimse.command_us(command, dimse.MESSAGE_ID)
        data_set_type = dimse.command_us(command, dimse.DATA_SET_TYPE)
        if field == dimse.C_CANCEL_RQ:  # cancels nothing here: every request is answered
            return
        if field is None or message_id is None or data_set_type is None:
            raise _ProtocolError("command set without Command Field, Message ID or Command Data "
                                 "Set Type")
        has_data = data_set_type != dimse.NO_DATA_SET
        if field == dimse.C_STORE_RQ:
            if not has_data:
                raise _ProtocolError("C-STORE-RQ without a data set")
            self._incoming = self._open_store(context_id, command)
        elif field == dimse.C_ECHO_RQ or field in dimse.REQUESTS_WITH_RESPONSE:
            if has_data:  # answered once its data set has been read (and dropped)
                self._incoming = Incoming(context_id, command, field)
            else:
                self._answer(context_id, command, field)
        else:
            raise _ProtocolError(f"unexpected command field 0x{field:04X}")

    def _open_store(self, context_id: int, command: dict[int, bytes]) -> Incoming:
        sop_class = dimse.command_uid(command, dimse.AFFECTED_SOP_CLASS)
        sop_instance = dimse.command_uid(command, dimse.AFFECTED_SOP_INSTANCE)
        if not sop_class or not sop_instance:
            raise _ProtocolError("C-STORE-RQ without Affected SOP Class or Instance UID")
        meta = dimse.file_meta(sop_class, sop_instance, self.accepted[context_id][1],
                               self.settings.implementation_class_uid,
                               self.settings.implementation_version_name)
        incoming = Incoming(context_id, command, dimse.C_STORE_RQ)
        try:
            incoming.out, incoming.path = self.acceptor.temp_files.create()
            incoming.out.write(meta)
            incoming.meta_size = len(meta)
        except OSError as exc:
            incoming.error = exc.strerror or type(exc).__name__
            incoming.close()
        return incoming

    def _on_data_set(self, incoming: Incoming) -> None:
        if incoming.field != dimse.C_STORE_RQ:
            self._answer(incoming.context_id, incoming.command, incoming.field)
            return
        incoming.close()
        command = incoming.command
        sop_instance = dimse.command_uid(command, dimse.AFFECTED_SOP_INSTANCE) or ""
        if incoming.error is not None or incoming.path is None:
            logger.error("%r: cannot write SOP instance %s to a temporary file: %s", self,
                         sop_instance, incoming.error)
            status = dimse.STATUS_OUT_OF_RESOURCES
        else:
            status = self.handler.store(self, ReceivedInstance(
                dimse.command_uid(command, dimse.AFFECTED_SOP_CLASS) or "", sop_instance,
                self.accepted[incoming.context_id][1], incoming.path,
                size=incoming.meta_size + incoming.size, head=bytes(incoming.head),
                head_complete=len(incoming.head) == incoming.size))
        self._respond(incoming.context_id, dimse.response(command, dimse.C_STORE_RSP, status))

    def _answer(self, context_id: int, command: dict[int, bytes], field: int) -> None:
        """C-ECHO-RSP, or "unrecognized operation" for another service's request."""
        if field == dimse.C_ECHO_RQ:
            status, rsp = self.handler.echo(self), dimse.C_ECHO_RSP
        else:
            logger.info("%r: answering command 0x%04X with 'unrecognized operation'", self,
                        field)
            status, rsp = dimse.STATUS_UNRECOGNIZED_OPERATION, field | 0x8000
        self._respond(context_id, dimse.response(command, rsp, status))

    def _respond(self, context_id: int, command: bytes) -> None:
        self._send(b"".join(fragment_message(context_id, command, None, self.peer_max_pdu)))

    # -- I/O ---------------------------------------------------------------------------------
    def _read_exact(self, n: int) -> bytes:
        assert self._rfile is not None
        data = self._rfile.read(n)
        if len(data) < n:
            raise _Closed()
        return data

    def _read_header(self) -> tuple[int, int]:
        pdu_type, length = PDU_HEADER.unpack(self._read_exact(PDU_HEADER.size))
        return pdu_type, length

    def _read_control(self, length: int) -> bytes:
        """The body of a small, fixed-size PDU (release, abort)."""
        if length > 64:
            raise _ProtocolError(f"control PDU of {length} bytes", _ABORT_INVALID_PARAMETER)
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
        self.temp_files = TempFiles(settings.temp_dir)
        self._max_connections = max(64, 4 * settings.max_associations)

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

    def live_count(self) -> int:
        """How many connections are being served, this one included."""
        with self._changed:
            return len(self._threads)

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
            if len(self._threads) >= self._max_connections:
                logger.warning("refusing a connection from %s: %d connections open",
                               address[0], len(self._threads))
                sock.close()
                return
            self._counter += 1
            assoc = Association(self, sock, address, self._counter)
            thread = threading.Thread(target=self._run, args=(assoc,), daemon=True,
                                      name=f"dicom-assoc-{self._counter}")
            self._threads[assoc] = thread
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
        self._wake_r.close()
        self._wake_w.close()
        self._listener = None
