"""What the native acceptor (:mod:`dicom_node.net.acceptor`) and the node agree on: its
settings, the handler interface, the received instance, why an association ended, and the
A-ASSOCIATE-RJ and A-ABORT codes; and the small views the acceptor's modules have of each other
(:class:`AcceptorView`, :class:`EstablishedAssociation`), so none imports another back.
Re-exported by :mod:`dicom_node.net.acceptor`."""
from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

from dicom_node.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.net.incoming import TempFiles

__all__ = ["AbortCause", "AcceptorSettings", "ReceivedInstance", "AssociationHandler",
           "AssociationInfo", "EstablishedAssociation", "AcceptorView",
           "PeerClosed", "ProtocolViolation", "IMPLEMENTATION_CLASS_UID",
           "IMPLEMENTATION_VERSION_NAME", "REJECT_PROTOCOL_VERSION", "REJECT_CALLING_AE",
           "REJECT_CALLED_AE", "REJECT_TOO_MANY", "REJECT_NO_REASON",
           "REJECT_APPLICATION_CONTEXT", "ABORT_UNRECOGNIZED_PDU",
           "ABORT_UNEXPECTED_PDU", "ABORT_INVALID_PARAMETER"]

# A-ASSOCIATE-RJ (result, source, reason/diagnostic), PS3.8 section 9.3.4
REJECT_NO_REASON = (0x01, 0x01, 0x01)            # e.g. no presentation context proposed
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)  # application context name not supported
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_TOO_MANY = (0x02, 0x03, 0x02)
# A-ABORT reasons of the service provider (source 2)
ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU, ABORT_INVALID_PARAMETER = 0x01, 0x02, 0x06


class AbortCause(enum.Enum):
    """Why an association ended without A-RELEASE."""

    PEER_ABORT = "A-ABORT from the peer"
    CONNECTION_LOST = "connection closed without A-RELEASE"
    TIMEOUT = "network timeout"
    PROTOCOL_ERROR = "protocol error"
    SHUTDOWN = "aborted at shutdown"
    INTERNAL_ERROR = "internal error"


@dataclass(frozen=True)
class AcceptorSettings:
    """What the acceptor negotiates and the limits it enforces.

    ``supported``: abstract syntax -> transfer syntaxes; ``max_pdu``: the maximum PDU length
    announced and enforced on P-DATA-TF, bytes (0: no limit); ``max_associations``:
    established associations at once (connections that have not associated do not count);
    ``network_timeout``: seconds a peer may stay silent; ``artim_timeout``: seconds from the
    connection to a complete A-ASSOCIATE-RQ, and from an A-ASSOCIATE-RJ, A-RELEASE-RP or
    A-ABORT to the peer's close (PS3.8 ARTIM); ``association_timeout``: seconds an
    association may last (0: no limit); ``max_dataset_bytes``: largest C-STORE data set
    (0: no limit); ``disk_room(n)``: may ``n`` more bytes be written (None: always);
    ``max_connections``: connections served at once, the rest are answered by one thread
    with A-ASSOCIATE-RJ (0: ``max(64, 4 * max_associations)``); ``temp_dir`` None:
    :func:`tempfile.gettempdir`."""

    ae_title: str
    supported: Mapping[str, frozenset[str]]
    max_pdu: int = 16382
    max_associations: int = 10
    network_timeout: float = 60.0
    artim_timeout: float = 30.0
    association_timeout: float = 0.0
    max_dataset_bytes: int = 0
    disk_room: Callable[[int], bool] | None = None
    max_connections: int = 0
    called_aet_check: bool = True
    allowed_calling_aets: tuple[str, ...] = ()
    temp_dir: Path | None = None
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME


@dataclass(frozen=True)
class ReceivedInstance:
    """A C-STORE data set received into ``path`` (file meta + the data set as sent, ``size``
    bytes in all, the data set from ``data_offset``); ``head``: the data set's first bytes
    (all of it when ``head_complete``)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path
    size: int | None = None
    head: bytes = b""
    head_complete: bool = False
    data_offset: int = 0  # where the data set starts in the file (after the file meta)


class AssociationInfo(Protocol):
    """Who is at the other end of an association, as a handler sees it (AE titles stripped)."""

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    peer_port: int


class AssociationHandler(Protocol):
    """What the node does with an association. Every method runs in the association's
    thread; an exception escaping one aborts that association (and is logged)."""

    def requested(self, assoc: AssociationInfo) -> tuple[int, int, int] | None:
        """A-ASSOCIATE-RQ received: record it; a (result, source, reason) refuses it (the
        handler has then recorded the refusal itself)."""

    def rejected(self, assoc: AssociationInfo, rejection: tuple[int, int, int]) -> None:
        """The acceptor refused the association (AE titles, too many associations)."""

    def released(self, assoc: AssociationInfo) -> None:
        """A-RELEASE completed."""

    def aborted(self, assoc: AssociationInfo, cause: AbortCause, detail: str) -> None:
        """The association ended without A-RELEASE."""

    def echo(self, assoc: AssociationInfo) -> int:
        """C-ECHO: the status to answer."""

    def store(self, assoc: AssociationInfo, instance: ReceivedInstance) -> int:
        """C-STORE: keep the instance (move its file away or leave it to be deleted);
        the status to answer."""



class EstablishedAssociation(AssociationInfo, Protocol):
    """What the P-DATA/DIMSE exchange (:mod:`dicom_node.net.exchange`) uses of its association:
    ``accepted`` maps a presentation context id to (abstract syntax, transfer syntax)."""

    settings: AcceptorSettings
    handler: AssociationHandler
    accepted: Mapping[int, tuple[str, str]]


class AcceptorView(Protocol):
    """What one association (:mod:`dicom_node.net.association`) uses of its acceptor."""

    settings: AcceptorSettings
    handler: AssociationHandler
    ssl_context: ssl.SSLContext | None
    temp_files: TempFiles

    def reserve_slot(self) -> bool:
        """Take one of the ``max_associations`` slots; False when all are taken."""

    def release_slot(self) -> None:
        """Give back a slot taken by :meth:`reserve_slot`."""


class PeerClosed(Exception):
    """The peer closed the connection."""


class ProtocolViolation(Exception):
    """The peer broke PS3.8/PS3.7; abort with this A-ABORT reason."""

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
