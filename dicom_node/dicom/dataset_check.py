"""Is a received data set whole? Its element structure walked to the last byte, values skipped.

A C-STORE data set whose last element announces more bytes than were sent (a truncated
data set, a Pixel Data length that lies) must not be acknowledged with Success: the file
would be stored, counted towards its series, and fail later, far from the sender. Reading
it with ``dcmread(stop_before_pixels=True)`` does not notice. :func:`data_set_problem`
walks the top-level elements (and the items of sequences and encapsulated pixel data of
undefined length) from the first byte to the last, *skipping* every value by its length:
the data set is whole when the walk ends exactly at its last byte.

It reads the element headers only: from the first bytes the receiver kept in memory
(``head``), else from the file by seeking; a deflated data set is inflated on the fly,
its values discarded. Implicit and Explicit VR Little Endian, Explicit VR Big Endian,
deflated and encapsulated transfer syntaxes are understood.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

__all__ = ["data_set_problem", "data_set_offset"]

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_MAX_DEPTH = 32          # nested sequences walked before the data set is called malformed
_INFLATE_CHUNK = 1 << 20


_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                 b"TM UC UI UL UN UR US UT UV".split())


class _Truncated(Exception):
    """The data set ends (or breaks) where an element says it goes on."""


class _NeedFile(Exception):
    """The walk must read past the head kept in memory: open the file."""


def _name(tag: int) -> str:
    """``element (gggg,eeee)`` for messages (-1: the data set)."""
    return "the data set" if tag < 0 else f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Reader:
    """Sequential reads over a data set: ``head`` (its first bytes) then the file from
    ``offset``; ``end`` bytes long."""

    def __init__(self, head: bytes, file: BinaryIO | None, offset: int, end: int) -> None:
        self.head, self.file, self.offset, self.end = head, file, offset, end
        self.pos = 0

    def read(self, n: int, tag: int) -> bytes:
        start, stop = self.pos, self.pos + n
        if stop > self.end:
            raise _Truncated(f"{_name(tag)}: {n} bytes needed at offset {start}, "
                             f"{self.end - start} left")
        self.pos = stop
        if stop <= len(self.head):
            return self.head[start:stop]
        if self.file is None:
            raise _NeedFile
        self.file.seek(self.offset + start)
        data = self.file.read(n)
        if len(data) != n:
            raise _Truncated(f"{_name(tag)}: the file ends at offset {start + len(data)}")
        return data

    def skip(self, n: int, tag: int) -> None:
        if self.pos + n > self.end:
            raise _Truncated(f"{_name(tag)}: value of {n} bytes at offset {self.pos}, "
                             f"{self.end - self.pos} left")
        self.pos += n

    def at_end(self) -> bool:
        return self.pos >= self.end


class _InflatingReader(_Reader):
    """A deflated data set (PS3.5 A.5), inflated on demand; skipped values are discarded."""

    def __init__(self, file: BinaryIO, offset: int) -> None:
        super().__init__(b"", file, offset, _UNDEFINED)
        file.seek(offset)
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = b""
        self._done = False

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n and not self._done:
            assert self.file is not None
            compressed = self._inflate.unconsumed_tail or self.file.read(_INFLATE_CHUNK)
            if not compressed:
                self._buffer += self._inflate.flush()
                self._done = True
                break
            self._buffer += self._inflate.decompress(compressed, _INFLATE_CHUNK)

    def read(self, n: int, tag: int) -> bytes:
        self._fill(n)
        if len(self._buffer) < n:
            raise _Truncated(f"{_name(tag)}: {n} bytes needed at offset {self.pos}, "
                             f"{len(self._buffer)} left")
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        self.pos += n
        return data

    def skip(self, n: int, tag: int) -> None:
        left = n
        while left:
            step = min(left, _INFLATE_CHUNK)
            self.read(step, tag)
            left -= step

    def at_end(self) -> bool:
        self._fill(1)
        return not self._buffer


class _Walker:
    """The element structure of one data set (see the module docstring)."""

    def __init__(self, reader: _Reader, *, big_endian: bool, implicit: bool) -> None:
        self.reader = reader
        self.big_endian, self.implicit = big_endian, implicit
        prefix = ">" if big_endian else "<"
        self._tag = struct.Struct(prefix + "HH")
        self._u16, self._u32 = struct.Struct(prefix + "H"), struct.Struct(prefix + "I")
        self._item = struct.Struct(prefix + "HHI")
        self._fast_header = struct.Struct(prefix + ("HHI" if implicit else "HH2sH")).unpack_from

    def top_level(self) -> None:
        """Every top-level element; the data set must end exactly after the last one."""
        self._in_memory()
        while not self.reader.at_end():
            tag = self._element(self.implicit, 0)
            if tag >> 16 == 0xFFFE:
                raise _Truncated(f"{_name(tag)}: an item tag at the top level")

    def _in_memory(self) -> None:
        """The fast path: top-level elements of defined length whose headers lie in the
        head kept in memory; stops (for :meth:`_element`) at anything else."""
        reader = self.reader
        buf, pos, end = reader.head, reader.pos, reader.end
        limit = min(len(buf), end) - 12
        header = self._fast_header
        long_length = self._u32.unpack_from
        implicit = self.implicit
        while pos <= limit:
            if implicit:
                group, _element, length = header(buf, pos)
                size = 8
            else:
                group, _element, vr, length = header(buf, pos)
                if vr not in _VRS:
                    break
                size = 8
                if vr in _LONG_VRS:
                    length, size = long_length(buf, pos + 8)[0], 12
            if group == 0xFFFE or length == _UNDEFINED or pos + size + length > end:
                break
            pos += size + length
        reader.pos = pos

    def _element(self, implicit: bool, depth: int) -> int:
        """Walk one element (header, then its value skipped or its items walked); its tag."""
        reader = self.reader
        group, element = self._tag.unpack(reader.read(4, -1))
        tag = group << 16 | element
        vr = b""
        if implicit or group == 0xFFFE:
            (length,) = self._u32.unpack(reader.read(4, tag))
        else:
            raw = reader.read(4, tag)
            vr = raw[:2]
            if vr in _LONG_VRS:
                (length,) = self._u32.unpack(reader.read(4, tag))
            elif vr.isalpha() and vr.isupper():
                (length,) = self._u16.unpack(raw[2:])
            else:
                raise _Truncated(f"{_name(tag)}: {vr!r} is not a value representation")
        if length == _UNDEFINED and group != 0xFFFE:
            # a sequence, encapsulated pixel data, or UN holding Implicit VR items
            self._items(implicit or vr == b"UN", depth + 1, tag)
        elif length != _UNDEFINED:
            reader.skip(length, tag)
        return tag

    def _items(self, implicit: bool, depth: int, parent: int) -> None:
        """Items up to the sequence delimiter."""
        if depth > _MAX_DEPTH:
            raise _Truncated(f"{_name(parent)}: sequences nested deeper than {_MAX_DEPTH}")
        reader = self.reader
        while True:
            group, element, length = self._item.unpack(reader.read(8, parent))
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise _Truncated(f"{_name(parent)}: {_name(tag)} where an item or the "
                                 "sequence delimiter belongs")
            if length != _UNDEFINED:
                reader.skip(length, parent)
                continue
            while self._element(implicit, depth) != _ITEM_END:
                pass


def data_set_offset(head: bytes) -> int:
    """Where the data set starts in a Part 10 file whose first bytes are ``head``: after
    the preamble, ``DICM`` and the file meta group (its group length element first)."""
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a DICOM Part 10 file with a file meta group length")
    return 144 + struct.unpack_from("<I", head, 140)[0]


def data_set_problem(transfer_syntax: str, *, path: Path | None = None,
                     encoded: bytes | None = None, head: bytes = b"",
                     offset: int | None = None, size: int | None = None) -> str | None:
    """What is wrong with the structure of a received data set (None: it is whole).

    The data set is the file at ``path`` (or the bytes ``encoded``), a Part 10 file, from
    ``offset`` (None: after its file meta group) to ``size`` bytes (None: its length);
    ``head``: the data set's first bytes, when the receiver kept them.
    """
    if encoded is not None:
        offset = data_set_offset(encoded) if offset is None else offset
        return _problem(transfer_syntax, encoded[offset:], None, 0, len(encoded) - offset)
    if head and offset is not None and size is not None and \
            transfer_syntax != DeflatedExplicitVRLittleEndian:
        try:  # the headers usually all lie in the head: no file to open
            return _problem(transfer_syntax, head, None, 0, size - offset)
        except _NeedFile:
            pass
    assert path is not None
    with open(path, "rb") as file:
        if offset is None:
            offset = data_set_offset(file.read(1 << 16))
        if size is None:
            size = file.seek(0, 2)
        return _problem(transfer_syntax, head, file, offset, size - offset)


def _problem(transfer_syntax: str, head: bytes, file: BinaryIO | None, offset: int,
             length: int) -> str | None:
    reader: _Reader
    try:
        if transfer_syntax != DeflatedExplicitVRLittleEndian:
            reader = _Reader(head, file, offset, length)
        elif file is not None:
            reader = _InflatingReader(file, offset)
        else:
            inflated = zlib.decompress(head[:length], -zlib.MAX_WBITS)
            reader = _Reader(inflated, None, 0, len(inflated))
    except zlib.error as exc:
        return f"the data set cannot be inflated: {exc}"
    walker = _Walker(reader, big_endian=transfer_syntax == ExplicitVRBigEndian,
                     implicit=transfer_syntax == ImplicitVRLittleEndian)
    try:
        walker.top_level()
    except _Truncated as exc:
        return f"the data set is not whole: {exc}"
    except (zlib.error, struct.error) as exc:
        return f"the data set cannot be read: {exc}"
    return None
