"""Element helpers every writer of the project shares: Decimal String values, code items and
the file meta information of a Part 10 file."""
from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from dicom_node.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["ds_text", "code_item", "file_meta"]


def ds_text(value: float) -> str:
    """A Decimal String (DS) value of at most 16 characters for ``value``."""
    return format_number_as_ds(float(value))


def code_item(code: Code) -> Dataset:
    """A Code Sequence item from a pydicom ``Code``."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def file_meta(sop_class_uid: str, sop_instance_uid: str, *,
              implementation: tuple[str, str] = (IMPLEMENTATION_CLASS_UID,
                                                 IMPLEMENTATION_VERSION_NAME)
              ) -> FileMetaDataset:
    """File meta information of one instance (Explicit VR Little Endian); ``implementation``:
    Implementation Class UID and Version Name (the node's unless given)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID, meta.ImplementationVersionName = implementation
    return meta
