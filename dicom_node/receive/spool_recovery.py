"""At start-up, the spool is the record: every spool file the job log lacks is recorded.

The C-STORE success status is sent once the spool file is durable and its
job-log row committed, but that row is synced to disk lazily (see
:mod:`dicom_node.store.joblog_fast`): an OS crash or a power loss can lose the last
rows while their files are safe. A file can also be left unrecorded when the
node died between spooling and recording it (that instance was never
acknowledged). :func:`recover_spool` runs before the node listens and the
scheduler starts; it compares each series folder with the SOP Instance UIDs the
job log holds for that series and records every file it lacks:

* under one association row created for the purpose, recorded *aborted* with
  :data:`RECOVERED_REASON`: the association these instances came on is gone, and
  its release (if there was one) was lost with them — a durable release would
  have made them durable too. Instances from aborted associations never trigger
  work by themselves: their series completes only if instances on a released
  association count for it, else it ends ``partial``;
* a file whose SOP Instance UID the job log holds under another series (the
  node refused it with 0x0111 and stopped before deleting it) is deleted;
* with ``min_age_seconds`` (a spool that other receivers share), a file younger
  than that is left alone: another receiver may be recording it right now;
* a file that cannot be read as DICOM (never acknowledged: it was renamed into
  place but not yet synced when the machine went down), or whose Study, Series
  or SOP Instance UID does not match its place in the spool, is renamed to
  ``<name>.unreadable`` and left for an administrator.

Logs name UIDs and paths only.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from dicom_node.store.db import AssociationState
from dicom_node.store.joblog import InstanceConflict, InstanceRecord, JobLog
from dicom_node.receive.record import instance_record
from dicom_node.store.spool import Spool
from dicom_node.dicom.header import header_from_dataset

__all__ = ["SpoolRecovery", "recover_spool", "RECOVERED_REASON"]

logger = logging.getLogger(__name__)

RECOVERED_REASON = ("recovered at start-up: spool files the job log lacked (their rows were "
                    "lost in a crash); they trigger nothing by themselves")
_HEADER_TAGS = ["SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                "SeriesDescription", "SeriesNumber"]


@dataclass(frozen=True)
class SpoolRecovery:
    """What :func:`recover_spool` did: files recorded (under ``association_id``), files
    deleted because their UID belongs to another series, files set aside as unreadable."""

    recorded: int = 0
    refused: int = 0
    unreadable: int = 0
    association_id: int | None = None


def _read(path: Path, study_uid: str, series_uid: str, sop_uid: str) -> InstanceRecord | None:
    """The job-log record of a spool file, or None when it is not readable DICOM or not
    the instance its place in the spool names."""
    try:
        ds = dcmread(path, force=False, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        header = header_from_dataset(ds)
        meta = ds.file_meta
        sop_class = header.sop_class_uid or str(meta.get("MediaStorageSOPClassUID", "") or "")
        transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
        if (header.study_uid, header.series_uid) != (study_uid, series_uid) or not sop_class \
                or str(meta.get("MediaStorageSOPInstanceUID", sop_uid)) != sop_uid:
            return None
        return instance_record(header, sop_uid, sop_class, transfer_syntax, path,
                               path.stat().st_size, None)
    except Exception:  # whatever a torn or foreign file makes pydicom raise
        return None


def _younger(path: Path, cutoff: float) -> bool:
    """True when the file was written after ``cutoff`` (or is gone)."""
    try:
        return path.stat().st_mtime > cutoff
    except FileNotFoundError:
        return True


def _set_aside(path: Path) -> None:
    try:
        os.replace(path, path.with_name(path.name + ".unreadable"))
    except OSError as exc:
        logger.error("cannot set aside unreadable spool file %s: %s", path, exc.strerror)


def _recovery_association(log: JobLog) -> int:
    """A new association row, already aborted, that the recovered instances count for."""
    assoc_id = log.open_association("", "", None, None)
    log.end_association(assoc_id, AssociationState.ABORTED, RECOVERED_REASON)
    return assoc_id


def recover_spool(log: JobLog, spool: Spool, *, min_age_seconds: float = 0.0) -> SpoolRecovery:
    """Record every ``*.dcm`` file of the spool that the job log lacks (see the module
    docstring); call it before the node listens. Returns what it did."""
    recorded = refused = unreadable = 0
    cutoff = time.time() - min_age_seconds
    assoc_id: int | None = None
    for study_uid, series_uid, folder in spool.series_folders():
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries
                           if e.name.endswith(".dcm") and e.is_file(follow_symlinks=False))
        if not names:
            continue
        known = log.instance_uids(series_uid)
        for name in names:
            sop_uid = name[:-len(".dcm")]
            if sop_uid in known:
                continue
            path = folder / name
            if min_age_seconds > 0 and _younger(path, cutoff):
                continue
            record = _read(path, study_uid, series_uid, sop_uid)
            if record is None:
                logger.warning("spool file %s is not readable DICOM, or not the instance its "
                               "place names: set aside", path)
                _set_aside(path)
                unreadable += 1
                continue
            if assoc_id is None:
                assoc_id = _recovery_association(log)
            try:
                log.record_instance(dataclasses.replace(record, association_id=assoc_id))
                recorded += 1
            except InstanceConflict as exc:
                logger.warning("deleting spool file %s: %s", path, exc)
                path.unlink(missing_ok=True)
                refused += 1
    result = SpoolRecovery(recorded, refused, unreadable, assoc_id)
    if recorded or refused or unreadable:
        logger.warning("spool recovery: %d file(s) recorded under aborted association %s, "
                       "%d deleted (UID of another series), %d set aside (unreadable)",
                       recorded, assoc_id, refused, unreadable)
    return result
