"""The P-DATA/DIMSE exchange of one established association (:mod:`dicom_node.net.acceptor`).

:class:`MessageReceiver` takes the PDVs the association reads, one at a time:
command fragments are collected (at most 64 KiB) and decoded; C-ECHO is
answered; a C-STORE data set is streamed fragment by fragment into a temporary
file behind a DICOM file meta header (bounded memory, whatever the instance
size; :mod:`dicom_node.net.incoming`), then handed to the handler, whose status
is sent back. Requests of other services get "unrecognized operation" (0x0211),
once their data set, if any, has been read and dropped.

After each C-STORE response the next data set's temporary file is created
(:meth:`MessageReceiver.prepare_spare`) while the peer reads the response and sends its next
request, so an SCU that waits for every response (dcmtk ``storescu``, most PACS) does not also
wait for the file system's inode allocation. The spare is deleted when the association ends.

The request's Affected SOP Class must be the presentation context's abstract syntax
(PS3.7 9.1.1.1, 9.1.5.1); otherwise the data set is dropped and the answer is "SOP class
not supported" (0x0122). A data set over ``max_dataset_bytes``, or one the disk has no
room for (``disk_room``), is answered "out of resources" (0xA700), its partial file deleted
as soon as that is known.
"""
from __future__ import annotations

import logging
from typing import Callable

from dicom_node.dicom.status import Status
from dicom_node.net import dimse
from dicom_node.net.incoming import Incoming, TempFiles
from dicom_node.net.interface import (EstablishedAssociation, PeerClosed, ProtocolViolation,
                                      ReceivedInstance)

__all__ = ["MessageReceiver", "MAX_COMMAND", "CHUNK"]

logger = logging.getLogger("dicom_node.net.acceptor")  # one log for the acceptor's modules

MAX_COMMAND = 1 << 16       # a command set larger is refused
CHUNK = 1 << 18             # data set bytes copied to the file per read


class MessageReceiver:
    """DIMSE messages over ``assoc``'s accepted contexts. ``read_exact(n)`` returns n bytes
    of the PDV being read, ``read_into(view)`` fills up to ``len(view)`` (0: the peer closed),
    ``respond(context_id, command)`` sends an encoded response command set."""

    def __init__(self, assoc: EstablishedAssociation, temp_files: TempFiles,
                 read_exact: Callable[[int], bytes], read_into: Callable[[memoryview], int],
                 respond: Callable[[int, bytes], None]) -> None:
        self.assoc, self.temp_files = assoc, temp_files
        self._read_exact, self._read_into, self._respond = read_exact, read_into, respond
        self._command = bytearray()
        self._command_context: int | None = None
        self._incoming: Incoming | None = None
        self._spare: Incoming | None = None  # the next data set's temporary file, empty
        self._chunk = memoryview(bytearray(CHUNK))

    def discard(self) -> None:
        """Drop the data set being received and the spare file, if any (the association
        ended)."""
        for incoming in (self._incoming, self._spare):
            if incoming is not None:
                incoming.discard()
        self._incoming = self._spare = None

    def prepare_spare(self) -> None:
        """Create the next C-STORE's temporary file now, if there is none; a failure is left
        for that C-STORE to meet and answer."""
        if self._spare is None:
            try:
                out, path = self.temp_files.create()
            except OSError:
                return
            self._spare = Incoming(0, {}, 0, out, path)

    @property
    def in_progress(self) -> str:
        """What part of a DIMSE message is unfinished ("" when none)."""
        if self._incoming is not None:
            return "a data set"
        return "a command set" if self._command_context is not None else ""

    # -- PDV fragments ---------------------------------------------------------------------
    def command_fragment(self, context_id: int, size: int, last: bool) -> None:
        """A command PDV of ``size`` bytes (not yet read)."""
        if self._incoming is not None:
            raise ProtocolViolation("command fragment while a data set is expected")
        if self._command_context not in (None, context_id):
            raise ProtocolViolation("command fragments on two presentation contexts")
        if len(self._command) + size > MAX_COMMAND:
            raise ProtocolViolation(f"command set larger than {MAX_COMMAND} bytes")
        self._command_context = context_id
        self._command += self._read_exact(size)
        if last:
            raw = bytes(self._command)
            self._command.clear()
            self._command_context = None
            self._on_command(context_id, raw)

    def data_fragment(self, context_id: int, size: int, last: bool) -> None:
        """A data set PDV of ``size`` bytes (not yet read), streamed to the temporary file."""
        incoming = self._incoming
        if incoming is None:
            raise ProtocolViolation("data set fragment without a command")
        if context_id != incoming.context_id:
            raise ProtocolViolation(f"data set fragment on context {context_id}, its command "
                                    f"came on {incoming.context_id}")
        chunk, read_into = self._chunk, self._read_into
        while size:
            n = read_into(chunk[:min(size, CHUNK)])
            if not n:
                raise PeerClosed()
            incoming.write(chunk[:n])
            size -= n
        if last:
            self._incoming = None
            try:
                self._on_data_set(incoming)
            finally:
                incoming.discard()

    # -- DIMSE -----------------------------------------------------------------------------
    def _on_command(self, context_id: int, raw: bytes) -> None:
        command = dimse.decode_command(raw)
        field = dimse.command_us(command, dimse.COMMAND_FIELD)
        message_id = dimse.command_us(command, dimse.MESSAGE_ID)
        data_set_type = dimse.command_us(command, dimse.DATA_SET_TYPE)
        if field == dimse.C_CANCEL_RQ:  # cancels nothing here: every request is answered
            return
        if field is None or message_id is None or data_set_type is None:
            raise ProtocolViolation("command set without Command Field, Message ID or Command "
                                    "Data Set Type")
        has_data = data_set_type != dimse.NO_DATA_SET
        if field == dimse.C_STORE_RQ:
            if not has_data:
                raise ProtocolViolation("C-STORE-RQ without a data set")
            self._incoming = self._open_store(context_id, command)
        elif field == dimse.C_ECHO_RQ or field in dimse.REQUESTS_WITH_RESPONSE:
            if has_data:  # answered once its data set has been read (and dropped)
                self._incoming = Incoming(context_id, command, field)
            else:
                self._answer(context_id, command, field)
        else:
            raise ProtocolViolation(f"unexpected command field 0x{field:04X}")

    def _open_store(self, context_id: int, command: dict[int, bytes]) -> Incoming:
        sop_class = dimse.command_uid(command, dimse.AFFECTED_SOP_CLASS)
        sop_instance = dimse.command_uid(command, dimse.AFFECTED_SOP_INSTANCE)
        if not sop_class or not sop_instance:
            raise ProtocolViolation("C-STORE-RQ without Affected SOP Class or Instance UID")
        settings = self.assoc.settings
        abstract, transfer_syntax = self.assoc.accepted[context_id]
        incoming = Incoming(context_id, command, dimse.C_STORE_RQ,
                            limit=settings.max_dataset_bytes, room=settings.disk_room)
        if sop_class != abstract:
            incoming.refusal = (Status.SOP_CLASS_NOT_SUPPORTED,
                                f"SOP class {sop_class} sent on the context of {abstract}")
            return incoming
        meta = dimse.file_meta(sop_class, sop_instance, transfer_syntax,
                               settings.implementation_class_uid,
                               settings.implementation_version_name)
        spare, self._spare = self._spare, None
        try:
            if spare is not None:
                incoming.out, incoming.path = spare.out, spare.path
            else:
                incoming.out, incoming.path = self.temp_files.create()
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
        command, assoc = incoming.command, self.assoc
        sop_instance = dimse.command_uid(command, dimse.AFFECTED_SOP_INSTANCE) or ""
        if incoming.refusal is not None:
            status, reason = incoming.refusal
            logger.warning("%r: SOP instance %s refused (0x%04X): %s", assoc, sop_instance,
                           status, reason)
        elif incoming.error is not None or incoming.path is None:
            logger.error("%r: cannot write SOP instance %s to a temporary file: %s", assoc,
                         sop_instance, incoming.error)
            status = Status.OUT_OF_RESOURCES
        else:
            status = assoc.handler.store(assoc, ReceivedInstance(
                dimse.command_uid(command, dimse.AFFECTED_SOP_CLASS) or "", sop_instance,
                assoc.accepted[incoming.context_id][1], incoming.path,
                size=incoming.meta_size + incoming.size, head=bytes(incoming.head),
                head_complete=len(incoming.head) == incoming.size,
                data_offset=incoming.meta_size))
        self._respond(incoming.context_id, dimse.response(command, dimse.C_STORE_RSP, status))
        self.prepare_spare()

    def _answer(self, context_id: int, command: dict[int, bytes], field: int) -> None:
        """C-ECHO-RSP, or "unrecognized operation" for another service's request."""
        abstract = self.assoc.accepted[context_id][0]
        affected = dimse.command_uid(command, dimse.AFFECTED_SOP_CLASS)
        if field == dimse.C_ECHO_RQ and abstract == affected == dimse.VERIFICATION:
            status, rsp = self.assoc.handler.echo(self.assoc), dimse.C_ECHO_RSP
        elif field == dimse.C_ECHO_RQ:
            logger.info("%r: C-ECHO for SOP class %s on the context of %s", self.assoc,
                        affected, abstract)
            status, rsp = Status.SOP_CLASS_NOT_SUPPORTED, dimse.C_ECHO_RSP
        else:
            logger.info("%r: answering command 0x%04X with 'unrecognized operation'",
                        self.assoc, field)
            status, rsp = Status.UNRECOGNIZED_OPERATION, field | 0x8000
        self._respond(context_id, dimse.response(command, rsp, status))
