"""Who the node is in DICOM: its implementation identity, the manufacturer it writes into its
derived series, and the rule that recognises its own output (the DICOM half of the loop guard;
:func:`dicom_node.schedule.routes.loop_guard` adds the job log's half)."""
from __future__ import annotations

from pydicom.dataset import Dataset

__all__ = ["NODE_MANUFACTURER", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME",
           "own_output_reason", "is_own_output"]

#: Manufacturer in the node's General Equipment and its Contributing Equipment item.
NODE_MANUFACTURER = "RTFSyn node"
#: Implementation Class UID and Version Name of the node: association negotiation (acceptor
#: and requestor) and the file meta of every file it writes.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.77.2"
IMPLEMENTATION_VERSION_NAME = "RTFSYN_NODE_01"


def own_output_reason(ds: Dataset) -> str | None:
    """Why ``ds`` is synthetic or this node's own output, or None.

    Synthetic Data (0008,001C) YES, or a Contributing Equipment item that names
    :data:`NODE_MANUFACTURER` (every derived series of the node has both).
    """
    if str(ds.get("SyntheticData", "")).strip().upper() == "YES":
        return "loop guard: Synthetic Data (0008,001C) is YES"
    for item in ds.get("ContributingEquipmentSequence") or []:
        if str(item.get("Manufacturer", "")).strip() == NODE_MANUFACTURER:
            derived = "DERIVED" in [str(v).upper() for v in (ds.get("ImageType") or [])]
            return (f"loop guard: {'a DERIVED' if derived else 'an'} image whose Contributing "
                    f"Equipment is this node ({NODE_MANUFACTURER!r})")
    return None


def is_own_output(ds: Dataset) -> bool:
    """True for synthetic data or an image this node contributed to."""
    return own_output_reason(ds) is not None
