"""Association establishment for the native acceptor (:mod:`dicom_node.net.acceptor`), PS3.8
section 9.3: which A-ASSOCIATE-RQ the acceptor itself refuses, and the A-ASSOCIATE-AC it
answers with.

Pure functions of the request and the :class:`~dicom_node.net.interface.AcceptorSettings`; the
association (:mod:`dicom_node.net.association`) sends what they return and tells its handler.
"""
from __future__ import annotations

from dataclasses import dataclass

from dicom_node.net.interface import (ABORT_INVALID_PARAMETER, REJECT_APPLICATION_CONTEXT,
                                      REJECT_CALLED_AE, REJECT_CALLING_AE, REJECT_NO_REASON,
                                      AcceptorSettings, ProtocolViolation)
from dicom_node.net.pdu import (APPLICATION_CONTEXT, PDV_HEADER, AssociateAC, AssociateRQ,
                                ContextResult, RoleSelection, UserInformation, encode_associate_ac)

__all__ = ["Negotiated", "acceptor_rejection", "check_context_ids", "valid_ae_title",
           "printable_ae_title", "peer_max_pdu", "negotiate_contexts", "associate_ac"]


@dataclass(frozen=True)
class Negotiated:
    """The answer to the proposed presentation contexts: ``results`` per proposed context,
    ``roles`` (SCU only) and ``accepted`` (context id -> (abstract syntax, transfer syntax))."""

    results: tuple[ContextResult, ...]
    roles: tuple[RoleSelection, ...]
    accepted: dict[int, tuple[str, str]]


def valid_ae_title(title: str) -> bool:
    """PS3.5 AE: 1-16 characters of the default repertoire, no control character, no
    backslash, not only spaces (``title`` already stripped of its padding)."""
    return 0 < len(title) <= 16 and all(" " <= c <= "~" and c != "\\" for c in title)


def printable_ae_title(title: str) -> str:
    """``title`` safe for logs and the job log: control characters and backslashes escaped
    (``\\x1b``), cut to 16 characters."""
    return "".join(c if " " <= c <= "~" and c != "\\" else f"\\x{ord(c):02x}"
                   for c in title)[:16]


def acceptor_rejection(rq: AssociateRQ, settings: AcceptorSettings) -> tuple[int, int, int] | None:
    """The (result, source, reason) the acceptor refuses ``rq`` with, or None; the first that
    applies of: application context name not supported, called AE title not ours (or not a
    valid AE title), calling AE title not valid or not allowed, no presentation context."""
    if rq.application_context != APPLICATION_CONTEXT:
        return REJECT_APPLICATION_CONTEXT
    if not valid_ae_title(rq.called_ae_title) or (
            settings.called_aet_check and rq.called_ae_title != settings.ae_title):
        return REJECT_CALLED_AE
    if not valid_ae_title(rq.calling_ae_title) or (
            settings.allowed_calling_aets
            and rq.calling_ae_title not in settings.allowed_calling_aets):
        return REJECT_CALLING_AE
    if not rq.contexts:
        return REJECT_NO_REASON
    return None


def check_context_ids(rq: AssociateRQ) -> None:
    """PS3.8 9.3.2.2: presentation context ids are odd (1-255) and unique; raises
    :class:`~dicom_node.net.interface.ProtocolViolation` (invalid PDU parameter value)."""
    seen: set[int] = set()
    for cx in rq.contexts:
        if not cx.context_id & 1:
            raise ProtocolViolation(f"presentation context id must be odd (1-255). Found "
                                    f"{cx.context_id}.", ABORT_INVALID_PARAMETER)
        if cx.context_id in seen:
            raise ProtocolViolation(f"presentation context id {cx.context_id} proposed twice",
                                    ABORT_INVALID_PARAMETER)
        seen.add(cx.context_id)


def peer_max_pdu(rq: AssociateRQ) -> int:
    """The requestor's maximum PDU length (0: no limit); raises
    :class:`~dicom_node.net.interface.ProtocolViolation` if it leaves no room for a PDV."""
    peer_max = rq.user.max_pdu_length or 0
    if 0 < peer_max <= PDV_HEADER.size:
        raise ProtocolViolation(f"maximum length {peer_max} leaves no room for a PDV",
                                ABORT_INVALID_PARAMETER)
    return peer_max


def negotiate_contexts(rq: AssociateRQ, settings: AcceptorSettings) -> Negotiated:
    """Per proposed context: accepted with the requestor's first supported transfer
    syntax (0), abstract syntax (3) or transfer syntaxes (4) not supported, or rejected
    (1) when the requestor declined the SCU role for it; the role replies (SCU only)."""
    scu_declined = {r.sop_class_uid for r in rq.user.roles if not r.scu_role}
    results: list[ContextResult] = []
    accepted: dict[int, tuple[str, str]] = {}
    for cx in rq.contexts:
        supported = settings.supported.get(cx.abstract_syntax)
        chosen = next((ts for ts in cx.transfer_syntaxes if ts in supported), None) \
            if supported is not None else None
        if supported is None:
            results.append(ContextResult(cx.context_id, 3, cx.transfer_syntaxes[0]))
        elif chosen is None:
            results.append(ContextResult(cx.context_id, 4, cx.transfer_syntaxes[0]))
        elif cx.abstract_syntax in scu_declined:
            results.append(ContextResult(cx.context_id, 1, chosen))
        else:
            results.append(ContextResult(cx.context_id, 0, chosen))
            accepted[cx.context_id] = (cx.abstract_syntax, chosen)
    accepted_classes = {abstract for abstract, _ts in accepted.values()}
    roles = tuple(RoleSelection(r.sop_class_uid, True, False) for r in rq.user.roles
                  if r.sop_class_uid in accepted_classes)
    return Negotiated(tuple(results), roles, accepted)


def associate_ac(rq: AssociateRQ, settings: AcceptorSettings, negotiated: Negotiated) -> bytes:
    """The encoded A-ASSOCIATE-AC: the node's maximum PDU length and implementation, an
    asynchronous operations window of 1/1 when one was proposed, the negotiated contexts."""
    async_ops = (1, 1) if rq.user.async_ops is not None else None
    user = UserInformation(max_pdu_length=settings.max_pdu,
                           implementation_class_uid=settings.implementation_class_uid,
                           implementation_version_name=settings.implementation_version_name,
                           async_ops=async_ops, roles=negotiated.roles)
    return encode_associate_ac(AssociateAC(rq.called_ae_title, rq.calling_ae_title,
                                           negotiated.results, user))
