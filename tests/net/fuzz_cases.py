"""The fuzz classes of the network suite: seeded generators of hostile byte streams.

Each class is a function ``(rng, good) -> list[Case]``; ``good`` holds valid material (an
A-ASSOCIATE-RQ, a C-STORE data set) to damage. A :class:`Case` is what one connection sends;
the runner (``test_fuzz.py``) sends it (a case that starts with the valid request
:data:`REQUEST` waits for the A-ASSOCIATE-AC before sending the rest, as a requestor must),
then half-closes the connection (unless ``stall``) and waits for the receiver to answer and
close. The same seed gives the same cases, so a
failure reproduces with ``FUZZ_SEED``.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Callable

from dicom_node.net import dimse, pdu
from tests.net.helpers import echo_command, p_data, rq, store_command

__all__ = ["Case", "Good", "CLASSES", "valid_stream", "REQUEST"]

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Case:
    """Bytes one connection sends; ``stall``: keep the connection open afterwards (the
    receiver's timers must end it); ``label``: what the case is, for failure messages."""

    data: bytes
    label: str
    stall: bool = False


@dataclass(frozen=True)
class Good:
    """Valid material: an MR data set (Explicit VR Little Endian) and its SOP Instance UID."""

    data_set: bytes
    sop_instance: str


def _request() -> bytes:
    """A valid A-ASSOCIATE-RQ: Verification (1) and MR Image Storage, Explicit VR LE (3)."""
    return rq((1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)), (3, MR, (EXPLICIT,)))


REQUEST = _request()


def valid_stream(good: Good) -> bytes:
    """A whole, valid association: request, C-ECHO, C-STORE of ``good`` in 4 KiB fragments,
    release."""
    parts = [_request(), p_data(1, echo_command(), command=True),
             p_data(3, store_command(good.sop_instance, message_id=2), command=True)]
    data = good.data_set
    for start in range(0, len(data), 4000):
        parts.append(p_data(3, data[start:start + 4000], command=False,
                            last=start + 4000 >= len(data)))
    return b"".join(parts + [pdu.encode_release_rq()])


def _flip_bytes(rng: random.Random, raw: bytes, n: int, start: int = 0) -> bytes:
    out = bytearray(raw)
    for _ in range(n):
        out[rng.randrange(start, len(out))] = rng.randrange(256)
    return bytes(out)


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def _with_body(body: bytes) -> bytes:
    return pdu.pdu(pdu.A_ASSOCIATE_RQ, body)


def malformed_associate_rq(rng: random.Random, good: Good) -> list[Case]:
    """Damaged A-ASSOCIATE-RQs: random bytes, cut bodies, odd items, bad contexts."""
    base = _request()
    body = base[6:]
    fixed = body[:68]
    app = _item(0x10, pdu.APPLICATION_CONTEXT.encode())
    user = _item(0x50, _item(0x51, struct.pack(">I", 16382)))
    cases = []
    for k in range(60):
        cases.append(Case(_flip_bytes(rng, base, 1 + k % 4, 6), "bytes changed"))
    for _ in range(20):
        cut = rng.randrange(len(body))
        cases.append(Case(_with_body(body[:cut]), f"body cut at {cut}"))
    for _ in range(15):
        kind, length = rng.randrange(256), rng.randrange(0x10000)
        cases.append(Case(_with_body(fixed + app + struct.pack(">BxH", kind, length)
                                     + bytes(rng.randrange(64)) + user),
                          f"item 0x{kind:02X} announcing {length} bytes"))
    specials = {
        "even context id": _item(0x20, bytes([2, 0, 0, 0]) + _item(0x30, MR.encode())
                                 + _item(0x40, EXPLICIT.encode())),
        "no transfer syntax": _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, MR.encode())),
        "empty transfer syntax": _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, MR.encode())
                                       + _item(0x40, b"")),
        "no abstract syntax": _item(0x20, bytes([1, 0, 0, 0]) + _item(0x40, EXPLICIT.encode())),
        "two abstract syntaxes": _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, MR.encode()) * 2
                                       + _item(0x40, EXPLICIT.encode())),
        "128 contexts": b"".join(_item(0x20, bytes([2 * i + 1, 0, 0, 0])
                                       + _item(0x30, MR.encode()) + _item(0x40, EXPLICIT.encode()))
                                 for i in range(128)),
        "duplicate context id": _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, MR.encode())
                                      + _item(0x40, EXPLICIT.encode())) * 2,
        "no context": b"",
        "non-ASCII UID": _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.\xff")
                               + _item(0x40, EXPLICIT.encode())),
    }
    for label, contexts in specials.items():
        cases.append(Case(_with_body(fixed + app + contexts + user), label))
    cases.append(Case(_with_body(fixed), "no items at all"))
    cases.append(Case(_with_body(fixed + app + specials["even context id"] + user
                                 + _item(0x50, b"\x51\x00\x00\x02ab")), "two user items"))
    return cases


def truncated_pdus(rng: random.Random, good: Good) -> list[Case]:
    """A valid association cut at a random byte, then the connection half-closed."""
    stream = valid_stream(good)
    return [Case(stream[:cut], f"stream cut at byte {cut}")
            for cut in sorted(rng.randrange(1, len(stream)) for _ in range(60))]


def pdus_out_of_state(rng: random.Random, good: Good) -> list[Case]:
    """Every PDU type where it does not belong: before association and once established."""
    others = {
        "P-DATA-TF": p_data(1, echo_command(), command=True),
        "A-RELEASE-RQ": pdu.encode_release_rq(), "A-RELEASE-RP": pdu.encode_release_rp(),
        "A-ASSOCIATE-AC": pdu.pdu(pdu.A_ASSOCIATE_AC, _request()[6:]),
        "A-ASSOCIATE-RJ": pdu.encode_associate_rj(1, 1, 1),
    }
    unknown = {f"type 0x{t:02X}": pdu.pdu(t, bytes(rng.randrange(16)))
               for t in (0x00, 0x08, 0x09, 0x7F, 0xFF)}
    cases = [Case(data, f"Sta2: {label}") for label, data in {**others, **unknown}.items()]
    established = {**others, **unknown, "A-ASSOCIATE-RQ": _request()}
    established.pop("P-DATA-TF")
    cases += [Case(_request() + data, f"Sta6: {label}") for label, data in established.items()]
    cases.append(Case(_request() + pdu.encode_release_rq() + pdu.encode_release_rq(),
                      "A-RELEASE-RQ twice"))
    return cases


def wrong_context_ids(rng: random.Random, good: Good) -> list[Case]:
    """PDVs for contexts that were not accepted (0, even, absent), or that switch midway."""
    cases = []
    for cid in [0, 2, 5, 7, 255, *rng.sample(range(8, 255), 12)]:
        cases.append(Case(_request() + p_data(cid, echo_command(), command=True),
                          f"command on context {cid}"))
    store = p_data(3, store_command(good.sop_instance), command=True)
    cases.append(Case(_request() + store + p_data(1, good.data_set[:1000], command=False),
                      "data set on another context than its command"))
    cases.append(Case(_request() + p_data(3, echo_command()[:10], command=True, last=False)
                      + p_data(1, echo_command()[10:], command=True), "command split over "
                      "two contexts"))
    cases.append(Case(_request() + p_data(1, store_command(good.sop_instance), command=True)
                      + p_data(1, good.data_set, command=False), "C-STORE on Verification"))
    return cases


def unfinished_fragments(rng: random.Random, good: Good) -> list[Case]:
    """Commands and data sets left unfinished, then a release, another command or silence."""
    command = store_command(good.sop_instance)
    cases = []
    endings = {"release": pdu.encode_release_rq(), "abort": pdu.encode_abort(0, 0),
               "new command": p_data(1, echo_command(), command=True), "nothing": b""}
    for label, ending in endings.items():
        cut = rng.randrange(1, len(command))
        cases.append(Case(_request() + p_data(3, command[:cut], command=True, last=False)
                          + ending, f"command set unfinished, then {label}"))
        part = good.data_set[:rng.randrange(1, len(good.data_set))]
        cases.append(Case(_request() + p_data(3, command, command=True)
                          + p_data(3, part, command=False, last=False) + ending,
                          f"data set unfinished, then {label}"))
    cases.append(Case(_request() + p_data(3, command, command=True), "command, no data set",
                      stall=True))
    cases.append(Case(_request() + p_data(3, command[:20], command=True, last=False),
                      "half a command, then silence", stall=True))
    return cases


def garbage_command_sets(rng: random.Random, good: Good) -> list[Case]:
    """Random bytes, and well-formed elements with random values, as command sets."""
    cases = []
    for k in range(80):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        cases.append(Case(_request() + p_data(1, junk, command=True), f"random command {k}"))
    for k in range(70):
        values: dict[int, int | str] = {}
        for element in rng.sample([0x0002, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900,
                                   0x1000, 0x1030], rng.randrange(1, 9)):
            values[element] = rng.choice([rng.randrange(0x10000), "1.2." + "9" * rng.randrange(80),
                                          "", "\x1b[31m"])
        try:
            raw = dimse.encode_command(values)
        except (UnicodeEncodeError, struct.error):
            continue
        cases.append(Case(_request() + p_data(1, raw, command=True)
                          + p_data(1, good.data_set[:200], command=False),
                          f"command of random elements {k}"))
    return cases


def lying_lengths(rng: random.Random, good: Good) -> list[Case]:
    """Lengths that lie: PDU, PDV, command elements and the data set's own elements."""
    cases = []
    echo = echo_command()
    for k in range(15):
        body = pdu.PDV_HEADER.pack(len(echo) + 2 + rng.randrange(1, 5000), 1, 3) + echo
        cases.append(Case(_request() + pdu.pdu(pdu.P_DATA_TF, body),
                          f"PDV longer than its PDU {k}"))
        announced = len(body) + rng.randrange(1, 1000)
        cases.append(Case(_request() + pdu.PDU_HEADER.pack(pdu.P_DATA_TF, announced) + body,
                          f"PDU longer than sent {k}"))
        shorter = max(0, len(body) - rng.randrange(1, 8))
        cases.append(Case(_request() + pdu.PDU_HEADER.pack(pdu.P_DATA_TF, shorter) + body,
                          f"PDU shorter than sent {k}"))
    for k in range(15):  # a data set element whose length lies
        data = bytearray(good.data_set)
        at = rng.randrange(0, min(len(data) - 4, 400))
        data[at:at + 4] = struct.pack("<I", rng.randrange(1 << 32))
        store = (p_data(3, store_command(good.sop_instance), command=True)
                 + p_data(3, bytes(data), command=False))
        cases.append(Case(_request() + store, f"data set bytes {at}-{at + 3} changed"))
    return cases


def huge_announced_pdu(rng: random.Random, good: Good) -> list[Case]:
    """PDUs announcing 2 GB, 100 MiB and 4 GiB - 1 with a little of it sent."""
    cases = []
    for size in (2 << 30, 100 << 20, 0xFFFFFFFF):
        header = pdu.PDU_HEADER.pack(pdu.P_DATA_TF, size)
        cases.append(Case(_request() + header + bytes(1 << 20), f"P-DATA-TF of {size} bytes"))
        rq_header = pdu.PDU_HEADER.pack(pdu.A_ASSOCIATE_RQ, size)
        cases.append(Case(rq_header + bytes(1 << 16), f"A-ASSOCIATE-RQ of {size} bytes"))
    return cases


def bit_flips(rng: random.Random, good: Good) -> list[Case]:
    """A valid association (request, C-ECHO, C-STORE, release) with 1-8 bits flipped."""
    stream = valid_stream(good)
    cases = []
    for k in range(120):
        out = bytearray(stream)
        flips = []
        for _ in range(1 + k % 8):
            bit = rng.randrange(8 * len(out))
            out[bit // 8] ^= 1 << (bit % 8)
            flips.append(bit)
        cases.append(Case(bytes(out), f"bits {sorted(flips)} flipped"))
    return cases


CLASSES: dict[str, Callable[[random.Random, Good], list[Case]]] = {
    "malformed A-ASSOCIATE-RQ": malformed_associate_rq,
    "truncated PDUs": truncated_pdus,
    "PDUs out of state": pdus_out_of_state,
    "wrong context ids": wrong_context_ids,
    "unfinished fragments": unfinished_fragments,
    "garbage command sets": garbage_command_sets,
    "lying lengths": lying_lengths,
    "huge announced PDU": huge_announced_pdu,
    "bit flips of a C-STORE": bit_flips,
}
