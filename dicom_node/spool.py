"""The spool: every received instance written atomically to disk, as it was sent.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(UIDs are not patient data). A file is first written to a temporary name in
the same folder, flushed and fsynced, then renamed over its final name with
:func:`os.replace`, so a reader (or a restart after a crash) never sees half a
file. The bytes are the peer's encoded data set behind a file meta header;
nothing is decoded and re-encoded.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["Spool", "SpoolError"]

logger = logging.getLogger(__name__)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_COPY_CHUNK = 1 << 20  # bytes


class SpoolError(ValueError):
    """A UID that cannot name a spool path (not a valid DICOM UID)."""


def _check_uid(name: str, uid: str) -> str:
    uid = str(uid).strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise SpoolError(f"{name} must be a DICOM UID (digits and dots, at most 64 characters). "
                         f"Found {uid[:80]!r}.")
    return uid


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the folder that holds the entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Atomic file store under ``root`` (created if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Final path of an instance; raises :class:`SpoolError` for a malformed UID."""
        return (self.root / _check_uid("StudyInstanceUID", study_uid)
                / _check_uid("SeriesInstanceUID", series_uid)
                / f"{_check_uid('SOPInstanceUID', sop_instance_uid)}.dcm")

    def _atomic_write(self, final: Path, fill: Callable[[BinaryIO], object]) -> int:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".part", dir=final.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return size

    def store_bytes(self, data: bytes, study_uid: str, series_uid: str,
                    sop_instance_uid: str) -> tuple[Path, int]:
        """Write an encoded DICOM file (preamble, meta, data set) atomically.

        Returns ``(path, size in bytes)``.
        """
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        return final, self._atomic_write(final, lambda fh: fh.write(data))

    def store_file(self, source: str | Path, study_uid: str, series_uid: str,
                   sop_instance_uid: str, *, move: bool = True) -> tuple[Path, int]:
        """Place an already written DICOM file into the spool atomically.

        With ``move`` (default) the file is renamed when it lies on the same
        file system (after an fsync), else it is streamed in 1 MiB chunks into
        a temporary file next to its destination; memory stays bounded either
        way. Returns ``(path, size in bytes)``.
        """
        source = Path(source)
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        final.parent.mkdir(parents=True, exist_ok=True)
        if move and os.stat(source).st_dev == os.stat(final.parent).st_dev:
            with open(source, "rb+") as fh:
                os.fsync(fh.fileno())
            size = source.stat().st_size
            os.replace(source, final)
            _fsync_dir(final.parent)
            return final, size

        def copy(fh: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, fh, _COPY_CHUNK)

        size = self._atomic_write(final, copy)
        if move:
            source.unlink(missing_ok=True)
        return final, size

    def remove_stale_parts(self, temp_dir: Path | None = None) -> int:
        """Delete temporary files left by a crash (``.part`` files in the spool, and every
        file in ``temp_dir``, where incoming data sets are streamed); returns how many.
        Call it before the node listens."""
        stale = list(self.root.rglob(".incoming-*.part"))
        if temp_dir is not None and Path(temp_dir).is_dir():
            stale += [p for p in Path(temp_dir).iterdir() if p.is_file()]
        for part in stale:
            part.unlink(missing_ok=True)
        count = len(stale)
        if count:
            logger.info("removed %d unfinished spool file(s) left by an earlier run", count)
        return count
