"""The spool is the record: files the job log lacks are recorded at start-up under an aborted
association; the receive path's temporary files and spool folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.store import db
from dicom_node.store.db import AssociationState, SeriesState
from dicom_node.store.joblog import JobLog
from dicom_node.store.joblog_fast import writer_for
from dicom_node.receive.record import instance_record
from dicom_node.store.spool import Spool
from dicom_node.receive.spool_recovery import RECOVERED_REASON, recover_spool
from dicom_node.dicom.header import read_header
from dicom_node.net.incoming import TempFiles


def _spool_copy(spool: Spool, source: Path) -> Path:
    ds = dcmread(source, stop_before_pixels=True)
    path, _size = spool.store_file(source, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                   str(ds.SOPInstanceUID), move=False)
    return path


def _in_another_series(source: Path, folder: Path) -> Path:
    """The same SOP Instance UID in a new series (what 0x0111 refuses)."""
    ds = dcmread(source)
    ds.SeriesInstanceUID = "1.2.999"
    folder.mkdir(exist_ok=True)
    ds.save_as(folder / source.name, enforce_file_format=True)
    return folder / source.name


def _record(log: JobLog, path: Path, assoc: int) -> None:
    ds = dcmread(path, stop_before_pixels=True)
    log.record_instance(instance_record(read_header(path), str(ds.SOPInstanceUID),
                                        str(ds.SOPClassUID),
                                        str(ds.file_meta.TransferSyntaxUID), path,
                                        path.stat().st_size, assoc))


def test_files_missing_from_the_job_log_are_recorded_as_aborted(tmp_path: Path,
                                                                mr_series: list[Path]) -> None:
    log, spool = JobLog(tmp_path / "joblog.sqlite"), Spool(tmp_path / "spool")
    spooled = [_spool_copy(spool, f) for f in mr_series]
    released = log.open_association("SCU", "RTFSYN", "127.0.0.1", 5000)
    for path in spooled[:2]:  # the rows that survived; the last three were lost
        _record(log, path, released)
    log.end_association(released, AssociationState.RELEASED)
    clash = _spool_copy(spool, _in_another_series(mr_series[0], tmp_path / "clash"))
    torn = spooled[0].parent / "1.2.3.4.5.6.dcm"
    torn.write_bytes(b"\x00" * 50)  # renamed into place, never synced, never acknowledged
    misplaced = spooled[0].parent / "1.2.3.4.5.7.dcm"
    misplaced.write_bytes(spooled[1].read_bytes())  # not the instance its name says

    result = recover_spool(log, spool)

    assert (result.recorded, result.refused, result.unreadable) == (3, 1, 2)
    assert not clash.exists() and not torn.exists() and not misplaced.exists()
    assert torn.with_name(torn.name + ".unreadable").exists()
    with log.session() as s:
        assoc = s.get(db.Association, result.association_id)
        rows = s.scalars(select(db.Instance)).all()
    assert assoc.state == AssociationState.ABORTED and assoc.reason == RECOVERED_REASON
    assert assoc.n_instances == 3 and len(rows) == len(mr_series)
    assert {Path(r.path) for r in rows} == set(spooled)
    assert sorted(r.association_id for r in rows) == [released] * 2 + [result.association_id] * 3
    assert recover_spool(log, spool).recorded == 0  # idempotent: nothing left to record


def test_a_series_known_only_from_the_spool_ends_partial(tmp_path: Path,
                                                         mr_series: list[Path]) -> None:
    log, spool = JobLog(tmp_path / "joblog.sqlite"), Spool(tmp_path / "spool")
    for f in mr_series:
        _spool_copy(spool, f)
    assert recover_spool(log, spool).recorded == len(mr_series)
    with log.transaction() as s:
        series = s.scalars(select(db.Series)).one()
        series.last_received_at = series.last_received_at.replace(year=2000)
    assert log.complete_quiet_series(1.0) == []  # instances of aborted associations only
    with log.session() as s:
        assert s.scalars(select(db.Series)).one().state == SeriesState.PARTIAL


def test_the_hot_path_commits_without_its_own_wal_sync(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "joblog.sqlite")
    fast = writer_for(log.path)._conn
    assert fast.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with db.get_engine(log.path).connect() as conn:  # every other write: FULL
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_temporary_files_are_unique_and_private(tmp_path: Path) -> None:
    files = TempFiles(tmp_path)
    made = [files.create() for _ in range(3)]
    for fh, path in made:
        fh.close()
        assert path.parent == tmp_path and oct(path.stat().st_mode & 0o777) == "0o600"
    assert len({p for _fh, p in made}) == 3
    taken = Path(f"{files._prefix}{next(files._counter) + 1}.dcm")
    taken.write_bytes(b"left by an earlier process")
    fh, path = files.create()  # skips the name that exists
    fh.close()
    assert path != taken and taken.read_bytes() == b"left by an earlier process"


def test_spool_folders_are_made_once_and_again_when_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    source = tmp_path / "in.dcm"
    source.write_bytes(b"DICM")
    placed = spool.place_file(source, "1.2", "1.2.3", "1.2.3.4")
    placed.sync()
    assert placed.path.read_bytes() == b"DICM" and placed.size == 4
    os.remove(placed.path)
    os.rmdir(placed.path.parent)  # removed behind the spool's back
    source.write_bytes(b"DICM2")
    again = spool.place_file(source, "1.2", "1.2.3", "1.2.3.4", size=5)
    assert again.path.read_bytes() == b"DICM2" and not source.exists()
    assert [(st, se) for st, se, _f in spool.series_folders()] == [("1.2", "1.2.3")]
    with pytest.raises(FileNotFoundError):
        spool.place_file(tmp_path / "missing.dcm", "1.2", "1.2.3", "1.2.3.5", size=1)
