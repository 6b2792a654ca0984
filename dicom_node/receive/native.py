"""The native receiver's adapter on :mod:`dicom_node.net`: the acceptor's settings from
``[node]`` and the :class:`~dicom_node.net.interface.AssociationHandler` that hands every event
to the shared bookkeeping (:mod:`dicom_node.receive.receiver`) and store
(:mod:`dicom_node.receive.c_store`)."""
from __future__ import annotations

from pathlib import Path

from dicom_node.config import Config
from dicom_node.dicom.status import Status
from dicom_node.net import acceptor as ul
from dicom_node.receive.c_store import StoreRequest, store_instance
from dicom_node.receive.disk_guard import DiskGuard
from dicom_node.receive.receiver import (ABORTED_REASON, Peer, Receiver, association_ended,
                                         association_rejected, association_requested,
                                         supported_contexts)
from dicom_node.store.db import AssociationState

__all__ = ["NativeHandler", "acceptor_settings"]


def acceptor_settings(config: Config, temp_dir: Path,
                      disk: DiskGuard | None = None) -> ul.AcceptorSettings:
    """The native acceptor's settings from ``[node]``: AE title, contexts, maximum PDU,
    associations, timeouts (network, ARTIM, association), data-set size limit and the disk
    watermark (``disk``, default: a guard on ``data_dir``) checked while data sets stream."""
    node = config.node
    disk = disk or DiskGuard(node.data_dir, node.disk_watermark_percent)
    return ul.AcceptorSettings(
        ae_title=node.ae_title,
        supported={k: frozenset(v) for k, v in supported_contexts().items()},
        max_pdu=node.max_pdu, max_associations=node.max_associations,
        network_timeout=node.network_timeout_seconds,
        artim_timeout=node.artim_timeout_seconds,
        association_timeout=node.association_timeout_seconds,
        max_dataset_bytes=node.max_dataset_megabytes << 20, disk_room=disk.room,
        called_aet_check=node.called_aet_check,
        allowed_calling_aets=tuple(node.allowed_calling_aets), temp_dir=temp_dir)


class NativeHandler:
    """:class:`dicom_node.net.interface.AssociationHandler` for the node: the shared bookkeeping
    and store, keyed by the native association object."""

    def __init__(self, rx: Receiver) -> None:
        self.rx = rx

    @staticmethod
    def _peer(assoc: ul.Association) -> Peer:
        return Peer(assoc.calling_ae_title, assoc.called_ae_title, assoc.peer_host,
                    assoc.peer_port)

    def requested(self, assoc: ul.Association) -> tuple[int, int, int] | None:
        """Record the request; the disk-watermark rejection, if any."""
        return association_requested(self.rx, assoc, self._peer(assoc))

    def rejected(self, assoc: ul.Association, rejection: tuple[int, int, int]) -> None:
        """Record the rejection with its reason."""
        association_rejected(self.rx, assoc, self._peer(assoc), rejection)

    def released(self, assoc: ul.Association) -> None:
        """A-RELEASE: the association's instances now count towards series completion."""
        association_ended(self.rx, assoc, self._peer(assoc), AssociationState.RELEASED, None)

    def aborted(self, assoc: ul.Association, cause: ul.AbortCause, detail: str) -> None:
        """Recorded as aborted; the association's instances trigger nothing."""
        if cause in (ul.AbortCause.PEER_ABORT, ul.AbortCause.CONNECTION_LOST):
            reason = ABORTED_REASON
        else:
            reason = f"{cause.value}: {detail}" if detail else cause.value
        association_ended(self.rx, assoc, self._peer(assoc), AssociationState.ABORTED, reason)

    def echo(self, assoc: ul.Association) -> int:
        """C-ECHO: always success."""
        return Status.SUCCESS

    def store(self, assoc: ul.Association, instance: ul.ReceivedInstance) -> int:
        """C-STORE: the shared store, with the association's job-log id."""
        return store_instance(self.rx, StoreRequest(
            instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax,
            path=instance.path, association_id=self.rx.assoc_id(assoc), size=instance.size,
            head=instance.head, head_complete=instance.head_complete,
            data_offset=instance.data_offset))
