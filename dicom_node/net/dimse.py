"""DIMSE command sets (PS3.7 section 6.3 and annex E) and the DICOM file meta header
(PS3.10 section 7.1), for the node's native acceptor (:mod:`dicom_node.net.acceptor`).

A command set is always Implicit VR Little Endian and holds group 0000
elements only, so a small hand-written codec is enough: :func:`decode_command`
returns the raw value of each element, :func:`command_us` / :func:`command_uid`
read the two value representations the acceptor needs, and
:func:`encode_command` writes a response with its group length.
:func:`file_meta` is the header written in front of a received data set, so
the temporary file is a DICOM Part 10 file that ``pydicom.dcmread`` reads.
"""
from __future__ import annotations

import struct
from typing import Mapping

from dicom_node.net.pdu import PDUError, text_value

__all__ = ["C_STORE_RQ", "C_STORE_RSP", "C_ECHO_RQ", "C_ECHO_RSP", "C_CANCEL_RQ",
           "REQUESTS_WITH_RESPONSE", "NO_DATA_SET", "VERIFICATION", "AFFECTED_SOP_CLASS",
           "REQUESTED_SOP_CLASS", "COMMAND_FIELD", "MESSAGE_ID", "MESSAGE_ID_RESPONDED_TO",
           "DATA_SET_TYPE", "STATUS", "AFFECTED_SOP_INSTANCE", "REQUESTED_SOP_INSTANCE",
           "decode_command", "encode_command", "command_us", "command_uid", "response",
           "file_meta"]

# Command Field values (PS3.7 annex E)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF  # has no response
# Requests of other services, answered "unrecognized operation": C-GET, C-FIND, C-MOVE,
# N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE.
REQUESTS_WITH_RESPONSE = frozenset({0x0010, 0x0020, 0x0021, 0x0100, 0x0110, 0x0120, 0x0130,
                                    0x0140, 0x0150})
NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows
VERIFICATION = "1.2.840.10008.1.1"  # the Verification SOP class (C-ECHO)
# Element numbers of group 0000
AFFECTED_SOP_CLASS, REQUESTED_SOP_CLASS = 0x0002, 0x0003
COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED_TO = 0x0100, 0x0110, 0x0120
DATA_SET_TYPE, STATUS = 0x0800, 0x0900
AFFECTED_SOP_INSTANCE, REQUESTED_SOP_INSTANCE = 0x1000, 0x1001

_ELEMENT = struct.Struct("<HHI")  # group, element, value length (Implicit VR Little Endian)
_MAX_UI = 64


def decode_command(raw: bytes) -> dict[int, bytes]:
    """``{element number: value bytes}`` of a command set; raises :class:`PDUError` for an
    element outside group 0000, an undefined length or one that overruns the set."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if end - pos < _ELEMENT.size:
            raise PDUError(f"command set: {end - pos} trailing byte(s), too short for an element")
        group, element, length = _ELEMENT.unpack_from(raw, pos)
        pos += _ELEMENT.size
        if group != 0x0000:
            raise PDUError(f"command set: element ({group:04X},{element:04X}) is not in "
                           "group 0000")
        if pos + length > end:
            raise PDUError(f"command set: element (0000,{element:04X}) of {length} bytes "
                           f"overruns the command set")
        out[element] = raw[pos:pos + length]
        pos += length
    return out


def command_us(command: Mapping[int, bytes], element: int) -> int | None:
    """An unsigned short (US) element of a decoded command set; None when absent."""
    value = command.get(element)
    if value is None:
        return None
    if len(value) != 2:
        raise PDUError(f"command set: (0000,{element:04X}) must be 2 bytes (US). "
                       f"Found {len(value)}.")
    return int.from_bytes(value, "little")


def command_uid(command: Mapping[int, bytes], element: int) -> str | None:
    """A UID (UI) element of a decoded command set; None when absent or empty."""
    value = command.get(element)
    if value is None:
        return None
    if len(value) > _MAX_UI + 1:
        raise PDUError(f"command set: (0000,{element:04X}) must be a UID of at most 64 "
                       f"characters. Found {len(value)} bytes.")
    return text_value(value, f"(0000,{element:04X})") or None


def encode_command(values: Mapping[int, int | str]) -> bytes:
    """A command set from ``{element number: value}`` (ints as US, strings as UI padded with
    NUL to an even length), sorted by tag, behind its group length (0000,0000)."""
    body = bytearray()
    for element in sorted(values):
        value = values[element]
        if isinstance(value, str):
            raw = value.encode("ascii")
            raw += b"\x00" * (len(raw) % 2)
        else:
            raw = struct.pack("<H", value)
        body += _ELEMENT.pack(0x0000, element, len(raw)) + raw
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + bytes(body)


def response(request: Mapping[int, bytes], command_field: int, status: int) -> bytes:
    """The response to a decoded request: ``command_field`` (the request's with bit 15
    set), the Message ID it answers, no data set, ``status`` and the affected SOP class and
    instance (the request's affected or requested ones, where it had them)."""
    values: dict[int, int | str] = {COMMAND_FIELD: command_field, DATA_SET_TYPE: NO_DATA_SET,
                                    STATUS: status,
                                    MESSAGE_ID_RESPONDED_TO: command_us(request, MESSAGE_ID) or 0}
    sop_class = command_uid(request, AFFECTED_SOP_CLASS) or command_uid(request,
                                                                        REQUESTED_SOP_CLASS)
    sop_instance = (command_uid(request, AFFECTED_SOP_INSTANCE)
                    or command_uid(request, REQUESTED_SOP_INSTANCE))
    if sop_class:
        values[AFFECTED_SOP_CLASS] = sop_class
    if sop_instance:
        values[AFFECTED_SOP_INSTANCE] = sop_instance
    return encode_command(values)


def _explicit(group_element: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element (OB with the long length form)."""
    group, element = group_element
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
              implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """The 128-byte preamble, ``DICM`` and the group 0002 file meta information (with its
    group length) for a data set received in ``transfer_syntax``."""
    version = implementation_version_name.encode("ascii")
    version += b" " * (len(version) % 2)
    elements = b"".join([
        _explicit((0x0002, 0x0001), b"OB", b"\x00\x01"),
        _explicit((0x0002, 0x0002), b"UI", _ui(sop_class_uid)),
        _explicit((0x0002, 0x0003), b"UI", _ui(sop_instance_uid)),
        _explicit((0x0002, 0x0010), b"UI", _ui(transfer_syntax)),
        _explicit((0x0002, 0x0012), b"UI", _ui(implementation_class_uid)),
        _explicit((0x0002, 0x0013), b"SH", version),
    ])
    group_length = _explicit((0x0002, 0x0000), b"UL", struct.pack("<I", len(elements)))
    return bytes(128) + b"DICM" + group_length + elements
