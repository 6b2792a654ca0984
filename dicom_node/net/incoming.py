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
  reading the file again (:func:`dicom_node.dicom.header.parse_head`).
"""
from __future__ import annotations

import itertools
import os
import secrets
import tempfile
from pathlib import Path
from typing import BinaryIO

from dicom_node.dicom.header import HEAD_BYTES

__all__ = ["TempFiles", "Incoming", "FILE_BUFFER"]

FILE_BUFFER = 1 << 18  # bytes buffered per temporary file
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
    bytes written so far (the file meta header not included)."""

    def __init__(self, context_id: int, command: dict[int, bytes], field: int,
                 out: BinaryIO | None = None, path: Path | None = None) -> None:
        self.context_id, self.command, self.field = context_id, command, field
        self.out, self.path = out, path
        self.error: str | None = None
        self.head = bytearray()
        self.size = 0
        self.meta_size = 0  # bytes of the file meta header written before the data set

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
