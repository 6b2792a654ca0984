"""The storage SCP engines (``[node] receiver``): the node's own upper layer or pynetdicom's."""
from __future__ import annotations

import enum

__all__ = ["ReceiverEngine", "RECEIVERS"]


class ReceiverEngine(str, enum.Enum):
    """``native``: :mod:`dicom_node.net` (blocking sockets, one thread per association; the
    default); ``pynetdicom``: pynetdicom's ``AE.start_server``."""

    NATIVE = "native"
    PYNETDICOM = "pynetdicom"

    def __str__(self) -> str:
        return self.value


RECEIVERS = tuple(member.value for member in ReceiverEngine)
