"""What the job log keeps about a received instance, and which instances are eligible for
synthesis: shared by the C-STORE (:mod:`dicom_node.receive.c_store`) and the spool recovery at
start-up (:mod:`dicom_node.receive.spool_recovery`)."""
from __future__ import annotations

from pathlib import Path

from pydicom.uid import EnhancedMRImageStorage, MRImageStorage

from dicom_node.dicom.header import StoreHeader
from dicom_node.store.joblog import InstanceRecord

__all__ = ["instance_record", "ELIGIBLE_SOP_CLASSES", "NOT_ELIGIBLE_REASON"]

ELIGIBLE_SOP_CLASSES = frozenset({MRImageStorage, EnhancedMRImageStorage})
NOT_ELIGIBLE_REASON = "SOP class not eligible"


def instance_record(header: StoreHeader, sop_instance_uid: str, sop_class_uid: str,
                    transfer_syntax: str, path: Path, size: int,
                    association_id: int | None) -> InstanceRecord:
    """What the job log keeps about a spooled instance (eligibility by SOP class; Modality
    and Series Description cut to their column sizes)."""
    eligible = sop_class_uid in ELIGIBLE_SOP_CLASSES
    return InstanceRecord(
        sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax, series_uid=header.series_uid or "",
        study_uid=header.study_uid or "", path=path, size_bytes=size,
        association_id=association_id, eligible=eligible,
        reason=None if eligible else NOT_ELIGIBLE_REASON,
        modality=(header.modality or "")[:16] or None,
        description=(header.description or "")[:64] or None,
        series_number=header.series_number)
