"""DIMSE status codes the node sends and reads (PS3.4 B.2.3, PS3.7 C), as one enum."""
from __future__ import annotations

import enum

__all__ = ["Status", "classify_status"]


class Status(enum.IntEnum):
    """C-STORE / C-ECHO response statuses the node answers with or looks for."""

    SUCCESS = 0x0000
    WARNING_COERCION = 0x0001  # pre-2011 generic warning, still answered by some archives
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # the affected SOP class is not the context's
    DUPLICATE_SOP_INSTANCE = 0x0111  # here: the UID is already recorded under another series
    UNRECOGNIZED_OPERATION = 0x0211
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


def classify_status(code: int | None) -> str:
    """``success`` (0x0000), ``warning`` (0x0001, 0xB000-0xBFFF) or ``failure`` (also for no
    status at all)."""
    if code is None:
        return "failure"
    if code == Status.SUCCESS:
        return "success"
    if code == Status.WARNING_COERCION or 0xB000 <= code <= 0xBFFF:
        return "warning"
    return "failure"
