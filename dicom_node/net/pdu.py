"""DICOM upper-layer PDUs (PS3.8 section 9.3), encoded and decoded by hand, for the node's
native acceptor (:mod:`dicom_node.net.acceptor`) and requestor (:mod:`dicom_node.net.requestor`).

What an association acceptor needs is here, and what the node's C-STORE requestor
(and a test playing one) needs:

* A-ASSOCIATE-RQ/-AC (:class:`AssociateRQ`, :class:`AssociateAC`): protocol
  version, AE titles, application context, presentation contexts and the user
  information sub-items the node negotiates (maximum length, implementation
  class UID and version name, asynchronous operations window, SCP/SCU role
  selection). Other sub-items (extended negotiation, user identity) are
  skipped by their length.
* A-ASSOCIATE-RJ, A-RELEASE-RQ/-RP, A-ABORT and P-DATA-TF (PDV items).

DIMSE command sets, carried in P-DATA-TF, are in :mod:`dicom_node.net.dimse`.

Every decoder raises :class:`PDUError` for malformed input: wrong lengths,
items that overrun their parent, values that are not what PS3.8 allows. It
never reads past the buffer it is given, so arbitrary bytes cannot hang or
crash the caller. Decoded strings carry UIDs and AE titles only (no patient
data).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator

__all__ = [
    "PDUError", "A_ASSOCIATE_RQ", "A_ASSOCIATE_AC", "A_ASSOCIATE_RJ", "P_DATA_TF",
    "A_RELEASE_RQ", "A_RELEASE_RP", "A_ABORT", "PDU_TYPES", "PDU_HEADER", "PDV_HEADER",
    "APPLICATION_CONTEXT", "ProposedContext", "ContextResult", "RoleSelection",
    "UserInformation", "AssociateRQ", "AssociateAC", "PDV", "encode_associate_rq",
    "decode_associate_rq", "encode_associate_ac", "decode_associate_ac", "encode_associate_rj",
    "decode_associate_rj", "encode_release_rq", "encode_release_rp", "encode_abort",
    "decode_abort", "encode_p_data", "decode_p_data", "fragment_message", "pdu", "text_value",
]

# PDU types (PS3.8 table 9-11 and following)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))
PDU_HEADER = struct.Struct(">BxI")     # type, reserved, length of what follows
PDV_HEADER = struct.Struct(">IBB")     # item length, presentation context id, control header
_ITEM = struct.Struct(">BxH")          # item type, reserved, item length
_ASSOC_FIXED = struct.Struct(">H2x16s16s32x")  # version, reserved, called, calling, reserved
# Item types
_APP_CONTEXT, _PRES_RQ, _PRES_AC, _ABSTRACT, _TRANSFER, _USER = 0x10, 0x20, 0x21, 0x30, 0x40, 0x50
_MAX_LENGTH, _IMPL_UID, _ASYNC_OPS, _ROLE, _IMPL_VERSION = 0x51, 0x52, 0x53, 0x54, 0x55
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # the DICOM application context name


class PDUError(ValueError):
    """Bytes that are not a well-formed PDU (or command set); the message says what and where."""


# -- data classes --------------------------------------------------------------------------
@dataclass(frozen=True)
class ProposedContext:
    """A presentation context of an A-ASSOCIATE-RQ: id (odd, 1-255), abstract syntax and the
    transfer syntaxes in the requestor's order of preference."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class ContextResult:
    """A presentation context of an A-ASSOCIATE-AC: result 0 acceptance, 1 user rejection,
    2 no reason, 3 abstract syntax not supported, 4 transfer syntaxes not supported."""

    context_id: int
    result: int
    transfer_syntax: str


@dataclass(frozen=True)
class RoleSelection:
    """An SCP/SCU role selection sub-item: may the requestor act as SCU / as SCP?"""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class UserInformation:
    """The user information item. ``max_pdu_length`` 0 means no limit; ``None`` fields
    were absent. ``skipped`` counts sub-items not interpreted (extended negotiation,
    user identity, unknown types)."""

    max_pdu_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops: tuple[int, int] | None = None  # (invoked, performed)
    roles: tuple[RoleSelection, ...] = ()
    skipped: int = 0


@dataclass(frozen=True)
class AssociateRQ:
    """An A-ASSOCIATE-RQ (AE titles stripped of their padding)."""

    called_ae_title: str
    calling_ae_title: str
    contexts: tuple[ProposedContext, ...]
    user: UserInformation = field(default_factory=UserInformation)
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True)
class AssociateAC:
    """An A-ASSOCIATE-AC (AE titles echo the request's)."""

    called_ae_title: str
    calling_ae_title: str
    results: tuple[ContextResult, ...]
    user: UserInformation = field(default_factory=UserInformation)
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True)
class PDV:
    """A presentation data value: context id, command (else data set) fragment, last fragment."""

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes


# -- helpers -----------------------------------------------------------------------------
def pdu(pdu_type: int, body: bytes) -> bytes:
    """A whole PDU: the 6-byte header, then ``body``."""
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def _item(item_type: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise PDUError(f"item 0x{item_type:02X} must be at most 65535 bytes. Found {len(body)}.")
    return _ITEM.pack(item_type, len(body)) + body


def _items(buf: bytes, start: int, end: int, where: str) -> Iterator[tuple[int, int, int]]:
    """(item type, value start, value end) for each item in ``buf[start:end]``."""
    pos = start
    while pos < end:
        if end - pos < _ITEM.size:
            raise PDUError(f"{where}: {end - pos} trailing byte(s), too short for an item header")
        item_type, length = _ITEM.unpack_from(buf, pos)
        pos += _ITEM.size
        if pos + length > end:
            raise PDUError(f"{where}: item 0x{item_type:02X} of {length} bytes overruns its "
                           f"parent by {pos + length - end} byte(s)")
        yield item_type, pos, pos + length
        pos += length


def text_value(raw: bytes, what: str) -> str:
    """A UID or AE title: ASCII, trailing NUL padding and surrounding spaces removed."""
    try:
        return raw.decode("ascii").rstrip("\x00").strip()
    except UnicodeDecodeError as exc:
        raise PDUError(f"{what} must be ASCII. Found non-ASCII byte(s).") from exc


def _ae(title: str) -> bytes:
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise PDUError(f"an AE title must be at most 16 characters. Found {title!r}.")
    return raw.ljust(16, b" ")


# -- A-ASSOCIATE-RQ / -AC ------------------------------------------------------------------
def _encode_user(user: UserInformation) -> bytes:
    body = b""
    if user.max_pdu_length is not None:
        body += _item(_MAX_LENGTH, struct.pack(">I", user.max_pdu_length))
    if user.implementation_class_uid:
        body += _item(_IMPL_UID, user.implementation_class_uid.encode("ascii"))
    if user.async_ops is not None:
        body += _item(_ASYNC_OPS, struct.pack(">HH", *user.async_ops))
    for role in user.roles:
        uid = role.sop_class_uid.encode("ascii")
        body += _item(_ROLE, struct.pack(">H", len(uid)) + uid
                      + bytes([int(role.scu_role), int(role.scp_role)]))
    if user.implementation_version_name:
        body += _item(_IMPL_VERSION, user.implementation_version_name.encode("ascii"))
    return _item(_USER, body)


def _decode_user(buf: bytes, start: int, end: int) -> UserInformation:
    values: dict[str, object] = {}
    roles: list[RoleSelection] = []
    skipped = 0
    for kind, a, b in _items(buf, start, end, "user information"):
        if kind == _MAX_LENGTH:
            if b - a != 4:
                raise PDUError(f"maximum length sub-item must be 4 bytes. Found {b - a}.")
            values["max_pdu_length"] = struct.unpack_from(">I", buf, a)[0]
        elif kind == _IMPL_UID:
            values["implementation_class_uid"] = text_value(buf[a:b], "implementation class UID")
        elif kind == _IMPL_VERSION:
            values["implementation_version_name"] = text_value(buf[a:b], "implementation version")
        elif kind == _ASYNC_OPS:
            if b - a != 4:
                raise PDUError(f"asynchronous operations sub-item must be 4 bytes. Found {b - a}.")
            values["async_ops"] = struct.unpack_from(">HH", buf, a)
        elif kind == _ROLE:
            if b - a < 4:
                raise PDUError(f"role selection sub-item must be at least 4 bytes. Found {b - a}.")
            (uid_len,) = struct.unpack_from(">H", buf, a)
            if a + 2 + uid_len + 2 != b:
                raise PDUError(f"role selection sub-item: UID length {uid_len} does not match "
                               f"the item length {b - a}")
            uid = text_value(buf[a + 2:a + 2 + uid_len], "role selection SOP class UID")
            roles.append(RoleSelection(uid, bool(buf[b - 2]), bool(buf[b - 1])))
        else:  # extended negotiation, user identity, unknown: not negotiated here
            skipped += 1
    return UserInformation(roles=tuple(roles), skipped=skipped, **values)  # type: ignore[arg-type]


def _encode_associate(pdu_type: int, version: int, called: str, calling: str, app: str,
                      contexts: bytes, user: UserInformation) -> bytes:
    body = (_ASSOC_FIXED.pack(version, _ae(called), _ae(calling))
            + _item(_APP_CONTEXT, app.encode("ascii")) + contexts + _encode_user(user))
    return pdu(pdu_type, body)


def _decode_associate_fixed(body: bytes, what: str) -> tuple[int, str, str]:
    if len(body) < _ASSOC_FIXED.size:
        raise PDUError(f"{what} must be at least {_ASSOC_FIXED.size} bytes. Found {len(body)}.")
    version, called, calling = _ASSOC_FIXED.unpack_from(body, 0)
    return version, text_value(called, "called AE title"), text_value(calling, "calling AE title")


def encode_associate_rq(rq: AssociateRQ) -> bytes:
    """The A-ASSOCIATE-RQ PDU (the requestor, and tests playing one)."""
    contexts = b""
    for cx in rq.contexts:
        sub = _item(_ABSTRACT, cx.abstract_syntax.encode("ascii")) + b"".join(
            _item(_TRANSFER, ts.encode("ascii")) for ts in cx.transfer_syntaxes)
        contexts += _item(_PRES_RQ, bytes([cx.context_id, 0, 0, 0]) + sub)
    return _encode_associate(A_ASSOCIATE_RQ, rq.protocol_version, rq.called_ae_title,
                             rq.calling_ae_title, rq.application_context, contexts, rq.user)


def decode_associate_rq(body: bytes) -> AssociateRQ:
    """Parse an A-ASSOCIATE-RQ body (the bytes after the PDU header)."""
    version, called, calling = _decode_associate_fixed(body, "A-ASSOCIATE-RQ")
    app, user, contexts = "", UserInformation(), []
    for kind, a, b in _items(body, _ASSOC_FIXED.size, len(body), "A-ASSOCIATE-RQ"):
        if kind == _APP_CONTEXT:
            app = text_value(body[a:b], "application context name")
        elif kind == _PRES_RQ:
            contexts.append(_decode_proposed(body, a, b))
        elif kind == _USER:
            user = _decode_user(body, a, b)
        else:
            raise PDUError(f"A-ASSOCIATE-RQ: unknown item type 0x{kind:02X}")
    return AssociateRQ(called, calling, tuple(contexts), user, app, version)


def _decode_proposed(buf: bytes, start: int, end: int) -> ProposedContext:
    if end - start < 4:
        raise PDUError(f"presentation context item must be at least 4 bytes. Found {end - start}.")
    context_id = buf[start]
    abstract: list[str] = []
    syntaxes: list[str] = []
    for kind, a, b in _items(buf, start + 4, end, f"presentation context {context_id}"):
        if kind == _ABSTRACT:
            abstract.append(text_value(buf[a:b], "abstract syntax"))
        elif kind == _TRANSFER:
            syntaxes.append(text_value(buf[a:b], "transfer syntax"))
        else:
            raise PDUError(f"presentation context {context_id}: unknown sub-item 0x{kind:02X}")
    if len(abstract) != 1 or not syntaxes:
        raise PDUError(f"presentation context {context_id} must have one abstract syntax and at "
                       f"least one transfer syntax. Found {len(abstract)} and {len(syntaxes)}.")
    return ProposedContext(context_id, abstract[0], tuple(syntaxes))


def encode_associate_ac(ac: AssociateAC) -> bytes:
    """The A-ASSOCIATE-AC PDU."""
    contexts = b"".join(
        _item(_PRES_AC, bytes([r.context_id, 0, r.result, 0])
              + _item(_TRANSFER, r.transfer_syntax.encode("ascii"))) for r in ac.results)
    return _encode_associate(A_ASSOCIATE_AC, ac.protocol_version, ac.called_ae_title,
                             ac.calling_ae_title, ac.application_context, contexts, ac.user)


def decode_associate_ac(body: bytes) -> AssociateAC:
    """Parse an A-ASSOCIATE-AC body (the requestor's answer)."""
    version, called, calling = _decode_associate_fixed(body, "A-ASSOCIATE-AC")
    app, user, results = "", UserInformation(), []
    for kind, a, b in _items(body, _ASSOC_FIXED.size, len(body), "A-ASSOCIATE-AC"):
        if kind == _APP_CONTEXT:
            app = text_value(body[a:b], "application context name")
        elif kind == _PRES_AC:
            if b - a < 4:
                raise PDUError(f"presentation context item must be at least 4 bytes. "
                               f"Found {b - a}.")
            syntaxes = [text_value(body[c:d], "transfer syntax")
                        for k, c, d in _items(body, a + 4, b, "presentation context")
                        if k == _TRANSFER]
            results.append(ContextResult(body[a], body[a + 2], syntaxes[0] if syntaxes else ""))
        elif kind == _USER:
            user = _decode_user(body, a, b)
        else:
            raise PDUError(f"A-ASSOCIATE-AC: unknown item type 0x{kind:02X}")
    return AssociateAC(called, calling, tuple(results), user, app, version)


# -- the short PDUs -----------------------------------------------------------------------------
def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ: result 1 permanent / 2 transient; source 1 user, 2 ACSE, 3 presentation."""
    return pdu(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def decode_associate_rj(body: bytes) -> tuple[int, int, int]:
    """(result, source, reason/diagnostic) of an A-ASSOCIATE-RJ body."""
    if len(body) != 4:
        raise PDUError(f"A-ASSOCIATE-RJ must be 4 bytes. Found {len(body)}.")
    return body[1], body[2], body[3]


def encode_release_rq() -> bytes:
    """A-RELEASE-RQ."""
    return pdu(A_RELEASE_RQ, bytes(4))


def encode_release_rp() -> bytes:
    """A-RELEASE-RP."""
    return pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT: source 0 service user (reason 0), 2 service provider (reason 0-6)."""
    return pdu(A_ABORT, bytes([0, 0, source, reason]))


def decode_abort(body: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT body."""
    if len(body) != 4:
        raise PDUError(f"A-ABORT must be 4 bytes. Found {len(body)}.")
    return body[2], body[3]


# -- P-DATA-TF ----------------------------------------------------------------------------------
def encode_p_data(pdvs: list[PDV]) -> bytes:
    """One P-DATA-TF PDU holding ``pdvs``."""
    body = b"".join(PDV_HEADER.pack(len(v.data) + 2, v.context_id,
                                    int(v.is_command) | (int(v.is_last) << 1)) + v.data
                    for v in pdvs)
    return pdu(P_DATA_TF, body)


def decode_p_data(body: bytes) -> list[PDV]:
    """The PDVs of a P-DATA-TF body."""
    out, pos = [], 0
    if not body:
        raise PDUError("P-DATA-TF must hold at least one PDV. Found none.")
    while pos < len(body):
        if len(body) - pos < PDV_HEADER.size:
            raise PDUError(f"P-DATA-TF: {len(body) - pos} trailing byte(s), too short for a PDV")
        length, context_id, control = PDV_HEADER.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > len(body):
            raise PDUError(f"P-DATA-TF: PDV length {length} is invalid at offset {pos}")
        out.append(PDV(context_id, bool(control & 1), bool(control & 2),
                       body[pos + PDV_HEADER.size:pos + 4 + length]))
        pos += 4 + length
    return out


def fragment_message(context_id: int, command: bytes, dataset: bytes | None,
                     max_pdu: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying one DIMSE message, each at most ``max_pdu`` bytes long after
    its header (the peer's maximum length; 0 means no limit), one PDV per PDU."""
    limit = max_pdu - PDV_HEADER.size if max_pdu else max(len(command), len(dataset or b""), 1)
    if limit < 1:
        raise PDUError(f"the peer's maximum PDU length must leave room for a PDV. "
                       f"Found {max_pdu}.")
    pdus = []
    for data, is_command in ((command, True), (dataset, False)):
        if data is None:
            continue
        view = memoryview(data)
        for start in range(0, max(len(data), 1), limit):
            chunk = bytes(view[start:start + limit])
            last = start + limit >= len(data)
            pdus.append(encode_p_data([PDV(context_id, is_command, last, chunk)]))
    return pdus
