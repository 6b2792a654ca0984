"""The spool: every received instance written atomically to disk, as it was sent.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(UIDs are not patient data). A file is first written to a temporary name in
the same folder, flushed and fsynced, then renamed over its final name with
:func:`os.replace`, so a reader (or a restart after a crash) never sees half a
file. The bytes are the peer's encoded data set behind a file meta header;
nothing is decoded and re-encoded.

For the receive path, :meth:`Spool.place_file` renames a finished file into
place at once and returns a :class:`Placed` whose :meth:`Placed.sync_file` and
:meth:`Placed.sync_dir` make it durable (fsync of the file and of its folder).
The SCP runs both at the same time, while it records the instance in the job
log, and answers the C-STORE only after all three: an acknowledged instance is
on disk, and the waits overlap instead of adding up (on a journalled ext4 the
two fsyncs share one journal commit; on this VM's ext4 without a journal their
device cache flushes are merged: 1.7-3.5 ms instead of 7-8 ms while the disk
was busy, 0.3 ms on an idle disk; see ``bench/fsync.py``). The first time a
series folder is used in a process, the study and series folders are fsynced
into their parents (:meth:`Spool.ensure_folder`). Folder fsyncs are
group-committed (:class:`DirSync`): one fsync that starts after a rename covers
every rename made before it, so concurrent associations writing into the same
series share it.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["Spool", "SpoolError", "Placed", "DirSync"]

logger = logging.getLogger(__name__)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_COPY_CHUNK = 1 << 20  # bytes
_MAX_KNOWN_FOLDERS = 100_000  # series folders remembered as existing (then forgotten)


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


def _fsync_file(path: Path) -> None:
    """Flush a written file's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _uid_folders(folder: Path) -> list[os.DirEntry]:
    """The sub-folders of ``folder`` named like a DICOM UID."""
    with os.scandir(folder) as entries:
        return [e for e in entries if e.is_dir(follow_symlinks=False) and len(e.name) <= 64
                and _UID.match(e.name)]


class DirSync:
    """Group commit of folder fsyncs.

    :meth:`sync` returns once an fsync of ``folder`` that *started after the
    call* has finished: either its own, or one that another thread started
    meanwhile. Concurrent callers on one folder thus share fsyncs, and every
    rename made before a call is durable when the call returns.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requested: dict[Path, int] = {}  # tickets handed out, per folder
        self._completed: dict[Path, int] = {}  # highest ticket covered by a finished fsync
        self._running: set[Path] = set()
        self._waiters: dict[Path, int] = {}

    def sync(self, folder: Path) -> None:
        """Make every entry change in ``folder`` made before this call durable."""
        with self._cond:
            ticket = self._requested.get(folder, 0) + 1
            self._requested[folder] = ticket
            self._waiters[folder] = self._waiters.get(folder, 0) + 1
            try:
                while self._completed.get(folder, 0) < ticket:
                    if folder in self._running:
                        self._cond.wait()
                        continue
                    self._running.add(folder)
                    covers = self._requested[folder]
                    self._cond.release()
                    try:
                        _fsync_dir(folder)
                    finally:
                        self._cond.acquire()
                        self._running.discard(folder)
                        self._cond.notify_all()
                    self._completed[folder] = max(self._completed.get(folder, 0), covers)
            finally:
                self._waiters[folder] -= 1
                if not self._waiters[folder] and folder not in self._running:
                    for table in (self._waiters, self._requested, self._completed):
                        table.pop(folder, None)


@dataclass(frozen=True)
class Placed:
    """A file renamed into the spool, not yet known to be durable: call :meth:`sync` (or
    :meth:`start_sync` and wait on its futures)."""

    path: Path
    size: int
    dir_sync: DirSync

    def sync_file(self) -> None:
        """fsync the file (data and inode); raises ``OSError``."""
        _fsync_file(self.path)

    def sync_dir(self) -> None:
        """fsync its folder, group-committed (the rename is durable); raises ``OSError``."""
        self.dir_sync.sync(self.path.parent)

    def sync(self) -> None:
        """Both, one after the other. The two are independent once the rename is done,
        so a caller may also run them at the same time (the file system can then
        commit them together); the instance is durable when both have returned."""
        self.sync_file()
        self.sync_dir()

    def start_sync(self, executor: Executor | None) -> "list[Future[None]]":
        """Start the file and folder fsyncs at the same time in ``executor`` (without one,
        or once it is shut down, run both here); the futures to wait on."""
        if executor is not None:
            try:
                return [executor.submit(self.sync_file), executor.submit(self.sync_dir)]
            except RuntimeError:  # the executor is shut down (the node is stopping)
                pass
        done: Future[None] = Future()
        try:
            self.sync()
            done.set_result(None)
        except OSError as exc:
            done.set_exception(exc)
        return [done]


class Spool:
    """Atomic file store under ``root`` (created if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dir_sync = DirSync()
        self._folders: set[str] = set()  # series folders known to exist, durably
        self._folder_lock = threading.Lock()

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

    def place_file(self, source: str | Path, study_uid: str, series_uid: str,
                   sop_instance_uid: str, *, size: int | None = None) -> Placed:
        """Rename a finished file (of ``size`` bytes, if the caller knows) into the spool
        now; durability comes with :meth:`Placed.sync`. A reader sees the whole file or
        nothing (the rename is atomic). Falls back to :meth:`store_file` (durable on
        return) when ``source`` lies on another file system."""
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        if size is None:
            size = os.stat(source).st_size
        try:
            self._replace(source, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            path, size = self.store_file(source, study_uid, series_uid, sop_instance_uid)
            return Placed(path, size, self.dir_sync)
        return Placed(final, size, self.dir_sync)

    def _replace(self, source: str | Path, final: Path) -> None:
        """``os.replace`` into a series folder, created (durably) when missing."""
        self.ensure_folder(final.parent)
        try:
            os.replace(source, final)
        except FileNotFoundError:  # the folder went away since it was made: make it again
            if not os.path.exists(source):
                raise
            self._folders.discard(str(final.parent))
            self.ensure_folder(final.parent)
            os.replace(source, final)

    def ensure_folder(self, folder: Path) -> None:
        """Create a series folder and its study folder if missing. The first time a folder
        is used in this process, the entries of both folders are made durable (fsync of
        their parents) before this returns, so a later fsync of the series folder covers
        the whole path; then it is remembered (no system call)."""
        key = str(folder)
        if key in self._folders:
            return
        with self._folder_lock:
            if key in self._folders:
                return
            for path in (folder.parent, folder):
                try:
                    os.mkdir(path)
                except FileExistsError:
                    pass
                _fsync_dir(path.parent)
            if len(self._folders) >= _MAX_KNOWN_FOLDERS:
                self._folders.clear()
            self._folders.add(key)

    def place_bytes(self, data: bytes, study_uid: str, series_uid: str,
                    sop_instance_uid: str) -> Placed:
        """Write an encoded DICOM file and rename it into place now (see :meth:`place_file`)."""
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        self.ensure_folder(final.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".part", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return Placed(final, len(data), self.dir_sync)

    def series_folders(self) -> Iterator[tuple[str, str, Path]]:
        """(Study Instance UID, Series Instance UID, folder) of every series folder in the
        spool; entries that are not UID-named folders are skipped."""
        for study in _uid_folders(self.root):
            for series in _uid_folders(Path(study.path)):
                yield study.name, series.name, Path(series.path)

    def remove_stale_parts(self, temp_dir: Path | None = None, *,
                           older_than_seconds: float = 0.0) -> int:
        """Delete temporary files left by a crash (``.part`` files in the spool, and every
        file in ``temp_dir``, where incoming data sets are streamed); returns how many.
        Call it before the node listens. ``older_than_seconds`` spares younger files (a
        spool that other receivers share: theirs are being written)."""
        stale = list(self.root.rglob(".incoming-*.part"))
        if temp_dir is not None and Path(temp_dir).is_dir():
            stale += [p for p in Path(temp_dir).iterdir() if p.is_file()]
        if older_than_seconds > 0:
            cutoff = time.time() - older_than_seconds
            stale = [p for p in stale if _modified(p) < cutoff]
        for part in stale:
            part.unlink(missing_ok=True)
        count = len(stale)
        if count:
            logger.info("removed %d unfinished spool file(s) left by an earlier run", count)
        return count


def _modified(path: Path) -> float:
    """The file's modification time (now when it is gone already)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
