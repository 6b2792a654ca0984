"""Where the native acceptor (:mod:`dicom_node.net.acceptor`) puts a C-STORE data set while it
arrives.

* :class:`TempFiles` names the temporary files of one acceptor: a per-process
  prefix and a counter, each file created with ``O_CREAT | O_EXCL`` (mode 0600),
  so no name is ever shared and no directory listing or random draw is needed
  per instance (as :func:`tempfile.mkstemp` does).
* :class:`Incoming` is the data set of the command being received: its
  fragments are appended to the temporary file (behind the file meta header)
  and the first :data:`~dicom_node.dicom.header.HEAD_BYTES` are also kept in
  memory, so the handler reads the few header attributes it records without
  reading the file again (:func:`dicom_node.dicom.header.parse_head`). Every
  :data:`CHECK_EVERY` bytes it checks the data-set size limit and asks whether the disk
  has room for more; past either, the data set is *refused*: its file is deleted at once
  and the rest of it is read and dropped, to be answered with the refusal's status.
"""
from __future__ import annotations

import itertools
import os
import secrets
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from dicom_node.dicom.header import HEAD_BYTES
from dicom_node.dicom.status import Status

__all__ = ["TempFiles", "Incoming", "FILE_BUFFER", "CHECK_EVERY"]

FILE_BUFFER = 1 << 18  # bytes buffered per temporary file
CHECK_EVERY = 1 << 20  # data set bytes between two checks of the size limit and disk room
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_ATTEMPTS = 1000


class TempFiles:
    """Unique temporary files in ``folder`` (None: :func:`tempfile.gettempdir`), named
    ``rtfsyn-rx-<pid>-<random>-<n>.dcm``; safe to share between threads."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = str(folder) if folder is not None else tempfile.gettempdir()
        self._prefix = os.path.join(self.folder,
                                    f"rtfsyn-rx-{os.getpid()}-{secrets.token_hex(4)}-")
        self._counter = itertools.count(1)  # next() is atomic under the GIL

    def create(self) -> tuple[BinaryIO, Path]:
        """A new, empty file opened for buffered writing, and its path; raises ``OSError``."""
        for _ in range(_ATTEMPTS):
            name = f"{self._prefix}{next(self._counter)}.dcm"
            try:
                fd = os.open(name, _OPEN_FLAGS, 0o600)
            except FileExistsError:  # left by another process that had this pid and prefix
                continue
            try:
                return open(fd, "wb", buffering=FILE_BUFFER), Path(name)
            except BaseException:
                os.close(fd)
                os.unlink(name)
                raise
        raise FileExistsError(f"no free temporary file name in {self.folder} after "
                              f"{_ATTEMPTS} attempts")


class Incoming:
    """The data set of the command being received: into a temporary file, or discarded.

    ``head`` holds its first bytes (at most ``HEAD_BYTES``), ``size`` the data set
    bytes written so far (the file meta header not included). ``limit``: the largest data
    set taken, bytes (0: any); ``room(n)``: may the disk take ``n`` more bytes (None: yes).
    ``refusal``: (status, reason) once the data set was refused."""

    def __init__(self, context_id: int, command: dict[int, bytes], field: int,
                 out: BinaryIO | None = None, path: Path | None = None, *, limit: int = 0,
                 room: Callable[[int], bool] | None = None) -> None:
        self.context_id, self.command, self.field = context_id, command, field
        self.out, self.path = out, path
        self.error: str | None = None
        self.head = bytearray()
        self.size = 0
        self.meta_size = 0  # bytes of the file meta header written before the data set
        self.limit, self.room = limit, room
        self.refusal: tuple[int, str] | None = None
        self._next_check = 0

    def write(self, view: memoryview) -> None:
        """Append a fragment; a write error (disk full) switches to discarding."""
        if self.out is None:
            return
        missing = HEAD_BYTES - len(self.head)
        if missing > 0:
            self.head += view[:missing]
        try:
            self.out.write(view)
        except OSError as exc:
            self.error = exc.strerror or type(exc).__name__
            self.close()
            return
        self.size += len(view)
        if self.size >= self._next_check:
            self._check_limits()

    def _check_limits(self) -> None:
        """Refuse the data set when it is over the size limit or the disk has no room for
        the next :data:`CHECK_EVERY` bytes."""
        if self.limit and self.size > self.limit:
            self.refuse(Status.OUT_OF_RESOURCES, f"data set larger than {self.limit} bytes")
        elif self.room is not None and not self.room(self.size + CHECK_EVERY):
            self.refuse(Status.OUT_OF_RESOURCES, "the disk would fill past its watermark")
        else:
            self._next_check = self.size + CHECK_EVERY
            if self.limit:
                self._next_check = min(self._next_check, self.limit + 1)

    def refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` for this data set: delete its file now, drop the rest of it."""
        self.refusal = (status, reason)
        self.discard()
        self.path = None

    def close(self) -> None:
        """Close the file (the data set is complete, or abandoned)."""
        out, self.out = self.out, None
        if out is not None:
            try:
                out.close()
            except OSError as exc:
                self.error = self.error or exc.strerror or type(exc).__name__

    def discard(self) -> None:
        """Close and delete the temporary file, if any (gone already once it was moved)."""
        self.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
