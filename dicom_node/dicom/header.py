"""The few header attributes the storage SCP records, read from a received data set.

:func:`parse_head` reads them from the first bytes of the data set as received
(the receiver keeps :data:`HEAD_BYTES` of it in memory), without a file and
without building a pydicom ``Dataset``: it walks the top-level elements in tag
order, skips sequences of undefined length item by item, and stops once it is
past Series Number (0020,0011). The values are decoded as ``dcmread`` decodes
them (the Series Description with pydicom's converter and the data set's
character set; the tests compare both on many encodings). Whenever the bytes do not
settle the question — a transfer syntax other than Implicit or Explicit VR
Little Endian (or an encapsulated one), an element cut off by the end of the
prefix, anything unusual — it returns None and the caller reads the file with
:func:`read_header` (``dcmread``), which also decides what is not DICOM at all.

Only UIDs, Modality, Series Description and Series Number are read: no patient
data.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ImplicitVRLittleEndian)
from pydicom.values import convert_string, convert_text

__all__ = ["StoreHeader", "HEAD_BYTES", "parse_head", "read_header", "header_from_dataset"]

HEAD_BYTES = 1 << 16  # how much of each data set the receiver keeps in memory for this

_CHARSET, _SOP_CLASS, _MODALITY, _DESCRIPTION = 0x00080005, 0x00080016, 0x00080060, 0x0008103E
_STUDY, _SERIES, _NUMBER = 0x0020000D, 0x0020000E, 0x00200011
_WANTED = frozenset({_CHARSET, _SOP_CLASS, _MODALITY, _DESCRIPTION, _STUDY, _SERIES, _NUMBER})
_LAST = _NUMBER
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
# the explicit VRs taken: two upper-case ASCII letters (bytes.isalpha and isupper)
_UPPER_PAIRS = frozenset(bytes((a, b)) for a in range(65, 91) for b in range(65, 91))
_TAG_LENGTH = struct.Struct("<HHI")    # implicit VR: group, element, length
_EXPLICIT = struct.Struct("<HH2sH")    # explicit VR, short form
_LONG_LENGTH = struct.Struct("<I")
_MAX_DEPTH = 8                        # nested sequences skipped before giving up


@dataclass(frozen=True)
class StoreHeader:
    """What the job log records about an instance; None where the attribute is absent."""

    sop_class_uid: str | None
    study_uid: str | None
    series_uid: str | None
    modality: str | None
    description: str | None
    series_number: int | None


class _Unsure(Exception):
    """The bytes do not settle it: read the file instead."""


def _element(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, header size) of the element at ``pos``."""
    if pos + 8 > len(data):
        raise _Unsure
    if implicit:
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        return group << 16 | element, None, length, 8
    group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
    if group == 0xFFFE:  # item and delimitation tags never carry a VR
        return group << 16 | element, None, _LONG_LENGTH.unpack_from(data, pos + 4)[0], 8
    if not (vr.isalpha() and vr.isupper()):
        raise _Unsure
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Unsure
        return group << 16 | element, vr, _LONG_LENGTH.unpack_from(data, pos + 8)[0], 12
    return group << 16 | element, vr, length, 8


def _skip_items(data: bytes, pos: int, implicit: bool, depth: int) -> int:
    """The offset after the sequence delimiter of an undefined-length sequence whose items
    start at ``pos``."""
    if depth > _MAX_DEPTH:
        raise _Unsure
    while True:
        if pos + 8 > len(data):
            raise _Unsure
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise _Unsure
        pos += 8
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: elements up to its delimiter
            tag, vr, length, size = _element(data, pos, implicit)
            if tag == _ITEM_END:
                pos += 8
                break
            pos = _skip_element(data, pos + size, vr, length, implicit, depth + 1)


def _skip_element(data: bytes, pos: int, vr: bytes | None, length: int, implicit: bool,
                  depth: int) -> int:
    """The offset after an element whose value starts at ``pos``."""
    if length != _UNDEFINED:
        return pos + length
    if vr == b"UN":  # its items are Implicit VR whatever the transfer syntax: let pydicom
        raise _Unsure
    return _skip_items(data, pos, implicit, depth)


def _walk(data: bytes, implicit: bool, complete: bool) -> dict[int, bytes]:
    """Raw values of the wanted top-level elements, once past the last of them (or at the
    end of a ``complete`` data set).

    The top-level loop is :func:`_element` written out (the same checks in the same
    order): it runs for every element of every received instance, and a call per element
    made the walk about twice as slow."""
    found: dict[int, bytes] = {}
    pos, previous, end = 0, -1, len(data)
    unpack_implicit, unpack_explicit = _TAG_LENGTH.unpack_from, _EXPLICIT.unpack_from
    while pos < end:
        if pos + 8 > end:
            raise _Unsure
        if implicit:
            group, element, length = unpack_implicit(data, pos)
            vr, size = None, 8
        else:
            group, element, vr, length = unpack_explicit(data, pos)
            size = 8
            if group == 0xFFFE:  # an item at the top level
                raise _Unsure
            if vr not in _UPPER_PAIRS:
                raise _Unsure
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _Unsure
                length, size = _LONG_LENGTH.unpack_from(data, pos + 8)[0], 12
        tag = group << 16 | element
        if tag <= previous or group == 0x0002 or group == 0xFFFE:
            raise _Unsure  # out of order, file meta or an item at the top level
        if tag > _LAST:
            return found
        previous, pos = tag, pos + size
        if tag in _WANTED:
            if length == _UNDEFINED or pos + length > end:
                raise _Unsure
            found[tag] = data[pos:pos + length]
        if length != _UNDEFINED:
            pos += length
        else:
            pos = _skip_element(data, pos, vr, length, implicit, 0)
    if complete and pos == end:
        return found
    raise _Unsure  # the prefix ended before Series Number's place: the file tells


def _string(raw: bytes) -> str | None:
    """A UI, CS or IS value as pydicom reads it with the default character set (padding
    stripped; several values shown as pydicom shows a MultiValue); None when empty."""
    values = raw.decode("latin-1").rstrip(" \x00").split("\\")
    if len(values) > 1:
        return str(values)
    return values[0] or None


def _series_number(value: Any) -> int | None:
    """An IS value as an int (``"12"``, ``" 12 "``, ``"12.0"``); None when empty or not an
    integer."""
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return int(number) if number.is_integer() else None


def parse_head(data: bytes, transfer_syntax: str, *, complete: bool = False) -> StoreHeader | None:
    """The header attributes from the first bytes of a data set (no file meta) sent in
    ``transfer_syntax`` (``complete``: ``data`` is the whole data set); None when those
    bytes do not settle it (read the file)."""
    if transfer_syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        return None
    try:
        found = _walk(data, transfer_syntax == ImplicitVRLittleEndian, complete)
        return _decode(found)
    except _Unsure:
        return None
    except Exception:  # a converter refused a value: pydicom on the file decides
        return None


def _decode(found: dict[int, bytes]) -> StoreHeader:
    """Raw values -> the header, decoded as ``dcmread`` decodes them (pydicom's converter
    for the Series Description, whose character set the data set names)."""
    charsets = found.get(_CHARSET)
    description = found.get(_DESCRIPTION)
    if description is not None:
        encodings = (convert_encodings([str(v) for v in _as_list(convert_string(charsets, True))])
                     if charsets else None)
        description = _text(convert_text(description, encodings))
    modality, number = found.get(_MODALITY), found.get(_NUMBER)
    return StoreHeader(
        sop_class_uid=_maybe(found.get(_SOP_CLASS)), study_uid=_maybe(found.get(_STUDY)),
        series_uid=_maybe(found.get(_SERIES)), modality=_maybe(modality),
        description=description,
        series_number=None if number is None else _series_number(_first_value(number)))


def _maybe(raw: bytes | None) -> str | None:
    return None if raw is None else _string(raw)


def _first_value(raw: bytes) -> str:
    return raw.decode("latin-1").split("\\")[0].strip(" \x00")


def _as_list(value: Any) -> list[Any]:
    """A pydicom value as a list (a MultiValue's items, or the single value)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _first(value: Any) -> Any:
    values = _as_list(value)
    return values[0] if values else None


def _text(value: Any) -> str | None:
    """How the job log keeps a string attribute: ``str()`` of pydicom's value, or None."""
    return str(value) if value not in (None, "") else None


def header_from_dataset(ds: Any) -> StoreHeader:
    """The header attributes of a pydicom data set (None where absent)."""
    number = ds.get("SeriesNumber")
    return StoreHeader(
        sop_class_uid=_text(ds.get("SOPClassUID")), study_uid=_text(ds.get("StudyInstanceUID")),
        series_uid=_text(ds.get("SeriesInstanceUID")), modality=_text(ds.get("Modality")),
        description=_text(ds.get("SeriesDescription")),
        series_number=None if number is None else _series_number(_first(number)))


def read_header(source: str | Path | BinaryIO) -> StoreHeader:
    """The header attributes of a DICOM file (``dcmread``); raises whatever pydicom raises
    for bytes that are not DICOM."""
    ds = dcmread(source, force=False, stop_before_pixels=True,
                 specific_tags=["SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
                                "Modality", "SeriesDescription", "SeriesNumber"])
    return header_from_dataset(ds)
