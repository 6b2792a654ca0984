"""The native upper-layer acceptor (dicom_node.net.acceptor, ul_pdu, ul_dimse): PDU and command-set
codecs and malformed input; negotiation, rejections, C-ECHO, C-STORE, timeouts, TLS and
shutdown over loopback, with pynetdicom, dcmtk and raw sockets as the requestor."""
from __future__ import annotations

import io
import random
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from tests.helpers.node import make_tls_material, wait_for
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, _config, build_role
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.helpers.dicom_factory import make_series
from tests.helpers.pdus import read_pdu
from dicom_node.net import acceptor as ul
from dicom_node.dicom.status import Status
from dicom_node.net import dimse
from dicom_node.net import pdu
from dicom_node.config import ConfigError, TLSConfig, load_config, parse_config
from dicom_node.net.tls import server_context
from tests.net.helpers import Recorder, ScpNode, start_acceptor

HTJ2K = "1.2.840.10008.1.2.4.201"  # a transfer syntax the node does not support
UNKNOWN_CLASS = "1.2.3.4.5.6.7"
REPO = Path(__file__).resolve().parents[2]
STORESCU, ECHOSCU = Path("/usr/bin/storescu"), Path("/usr/bin/echoscu")


# -- codecs ---------------------------------------------------------------------------------
def _rq(**user: Any) -> pdu.AssociateRQ:
    return pdu.AssociateRQ(
        "RTFSYN", "SCU",
        (pdu.ProposedContext(1, str(MRImageStorage), (HTJ2K, str(ExplicitVRLittleEndian))),
         pdu.ProposedContext(3, str(Verification), (str(ImplicitVRLittleEndian),))),
        pdu.UserInformation(max_pdu_length=16382, implementation_class_uid="1.2.3",
                            implementation_version_name="TEST_1", **user))


def test_associate_rq_and_ac_round_trip() -> None:
    rq = _rq(async_ops=(3, 2), roles=(pdu.RoleSelection(str(MRImageStorage), True, False),))
    raw = pdu.encode_associate_rq(rq)
    assert pdu.PDU_HEADER.unpack_from(raw) == (pdu.A_ASSOCIATE_RQ, len(raw) - 6)
    assert pdu.decode_associate_rq(raw[6:]) == rq
    ac = pdu.AssociateAC("RTFSYN", "SCU", (pdu.ContextResult(1, 0, str(ExplicitVRLittleEndian)),
                                           pdu.ContextResult(3, 3, "1.2.840.10008.1.2")),
                         pdu.UserInformation(max_pdu_length=0, async_ops=(1, 1)))
    assert pdu.decode_associate_ac(pdu.encode_associate_ac(ac)[6:]) == ac


def test_user_identity_and_unknown_sub_items_are_skipped() -> None:
    raw = bytearray(pdu.encode_associate_rq(_rq()))
    extra = struct.pack(">BxH", 0x58, 6) + b"\x01\x00\x00\x02ab"  # user identity (username)
    user_at = raw.rindex(b"\x50\x00")  # the user information item is last
    raw[user_at + 2:user_at + 4] = struct.pack(">H", struct.unpack(
        ">H", raw[user_at + 2:user_at + 4])[0] + len(extra))
    raw += extra
    decoded = pdu.decode_associate_rq(bytes(raw[6:]))
    assert decoded.user.skipped == 1 and decoded.user.max_pdu_length == 16382


def test_short_pdus_round_trip() -> None:
    assert pdu.decode_associate_rj(pdu.encode_associate_rj(1, 1, 7)[6:]) == (1, 1, 7)
    assert pdu.decode_abort(pdu.encode_abort(2, 6)[6:]) == (2, 6)
    assert pdu.encode_release_rq() == b"\x05\x00\x00\x00\x00\x04" + bytes(4)
    assert pdu.encode_release_rp()[0] == pdu.A_RELEASE_RP
    pdvs = [pdu.PDV(1, True, True, b"cmd!"), pdu.PDV(1, False, False, b"data")]
    assert pdu.decode_p_data(pdu.encode_p_data(pdvs)[6:]) == pdvs


@pytest.mark.parametrize("max_pdu", [7, 100, 16382, 0])
def test_fragments_respect_the_peer_maximum(max_pdu: int) -> None:
    command, data = bytes(range(256)) * 3, bytes(5000)
    pdus = pdu.fragment_message(5, command, data, max_pdu)
    pdvs = [v for p in pdus for v in pdu.decode_p_data(p[6:])]
    assert all(len(p) - 6 <= max_pdu for p in pdus) or max_pdu == 0
    assert b"".join(v.data for v in pdvs if v.is_command) == command
    assert b"".join(v.data for v in pdvs if not v.is_command) == data
    assert [v.is_last for v in pdvs if v.is_command][-1] and [v.is_last for v in pdvs][-1]
    assert sum(v.is_last for v in pdvs) == 2 and {v.context_id for v in pdvs} == {5}


def _fixed(version: int = 1) -> bytes:
    return struct.pack(">H2x16s16s32x", version, b"RTFSYN".ljust(16), b"SCU".ljust(16))


def _it(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


@pytest.mark.parametrize("body, message", [
    (b"\x00\x01", "at least 68 bytes"),
    (_fixed() + b"\x10\x00\x00\x20abc", "overruns its parent"),
    (_fixed() + b"\x10\x00", "too short for an item header"),
    (_fixed() + _it(0x77, b"x"), "unknown item type 0x77"),
    (_fixed() + _it(0x20, b"\x01\x00\x00\x00" + _it(0x30, b"1.2")), "at least one transfer"),
    (_fixed() + _it(0x20, b"\x01\x00"), "at least 4 bytes"),
    (_fixed() + _it(0x50, _it(0x51, b"\x00\x01")), "maximum length sub-item must be 4"),
    (_fixed() + _it(0x50, _it(0x54, b"\x00\x09ab\x01\x00")), "UID length 9"),
    (_fixed() + _it(0x10, b"1.2\xff"), "must be ASCII"),
])
def test_malformed_associate_rq_raises_pdu_error(body: bytes, message: str) -> None:
    with pytest.raises(pdu.PDUError, match=message):
        pdu.decode_associate_rq(body)


@pytest.mark.parametrize("decoder, body", [
    (pdu.decode_p_data, b""), (pdu.decode_p_data, b"\x00\x00\x00\x01\x01"),
    (pdu.decode_p_data, b"\x00\x00\x00\x09\x01\x03abc"), (pdu.decode_associate_rj, b"\x00"),
    (pdu.decode_abort, bytes(5)), (dimse.decode_command, b"\x08\x00\x00\x00\x00\x00\x00\x00"),
    (dimse.decode_command, b"\x00\x00\x00\x01\x10\x00\x00\x00ab"), (dimse.decode_command, b"\x00"),
])
def test_other_malformed_input_raises_pdu_error(decoder: Any, body: bytes) -> None:
    with pytest.raises(pdu.PDUError):
        decoder(body)


def test_random_damage_never_escapes_as_another_error() -> None:
    raw = pdu.encode_associate_rq(_rq(async_ops=(1, 1)))[6:]
    rng = random.Random(7)
    for _ in range(3000):
        damaged = bytearray(raw[:rng.randrange(len(raw) + 1)])
        for _flip in range(rng.randrange(4)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            pdu.decode_associate_rq(bytes(damaged))
        except pdu.PDUError:
            pass


def test_command_set_round_trip_and_response() -> None:
    raw = dimse.encode_command({dimse.COMMAND_FIELD: dimse.C_STORE_RQ, dimse.MESSAGE_ID: 9,
                                dimse.AFFECTED_SOP_CLASS: str(MRImageStorage),
                                dimse.AFFECTED_SOP_INSTANCE: "1.2.3", 0x0700: 0,
                                dimse.DATA_SET_TYPE: 0x0001})
    command = dimse.decode_command(raw)
    assert struct.unpack("<I", command[0x0000])[0] == len(raw) - 12
    assert dimse.command_uid(command, dimse.AFFECTED_SOP_INSTANCE) == "1.2.3"
    rsp = dimse.decode_command(dimse.response(command, dimse.C_STORE_RSP, 0xA700))
    assert dimse.command_us(rsp, dimse.COMMAND_FIELD) == 0x8001
    assert dimse.command_us(rsp, dimse.MESSAGE_ID_RESPONDED_TO) == 9
    assert dimse.command_us(rsp, dimse.STATUS) == 0xA700
    assert dimse.command_us(rsp, dimse.DATA_SET_TYPE) == dimse.NO_DATA_SET
    assert dimse.command_uid(rsp, dimse.AFFECTED_SOP_CLASS) == str(MRImageStorage)
    assert dimse.command_uid(rsp, dimse.AFFECTED_SOP_INSTANCE) == "1.2.3"


def test_file_meta_is_read_by_pydicom(tmp_path: Path) -> None:
    source = make_series(tmp_path / "src", np.ones((1, 4, 4)))[0]
    data_set = _data_set_bytes(source.read_bytes())
    meta = dimse.file_meta(str(MRImageStorage), "1.2.3.4", str(ExplicitVRLittleEndian),
                           ul.IMPLEMENTATION_CLASS_UID, ul.IMPLEMENTATION_VERSION_NAME)
    ds = dcmread(io.BytesIO(meta + data_set))
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.ImplementationClassUID == ul.IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert ds.Rows == 4


def _data_set_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: what follows its file meta group."""
    group_length = struct.unpack_from("<I", part10, 132 + 8)[0]
    return part10[132 + 12 + group_length:]


# -- the acceptor, with a handler that records (tests.net.helpers) ----------------
@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def acceptor(tmp_path: Path, recorder: Recorder) -> Iterator[ul.Acceptor]:
    running = start_acceptor(tmp_path, recorder, allowed_calling_aets=("SCU", "OTHER"),
                             max_associations=2)
    yield running
    running.stop(grace_seconds=1)


def _pynetdicom_ae(*contexts: tuple[str, list[str]], calling: str = "SCU") -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae


def test_negotiation_with_pynetdicom(acceptor: ul.Acceptor, recorder: Recorder) -> None:
    ae = _pynetdicom_ae((MRImageStorage, [HTJ2K, ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                        (CTImageStorage, [ExplicitVRLittleEndian]), (MRImageStorage, [HTJ2K]),
                        (Verification, [ImplicitVRLittleEndian]))
    async_ops = AsynchronousOperationsWindowNegotiation()
    async_ops.maximum_number_operations_invoked = 5
    async_ops.maximum_number_operations_performed = 5
    role = build_role(MRImageStorage, scu_role=True, scp_role=True)
    assoc = ae.associate("127.0.0.1", acceptor.address[1], ae_title="RTFSYN",
                         ext_neg=[async_ops, role])
    try:
        assert assoc.is_established
        accepted = {cx.context_id: cx for cx in assoc.accepted_contexts}
        assert accepted[1].transfer_syntax == [ExplicitVRLittleEndian]  # the requestor's order
        assert accepted[1].as_scu and not accepted[1].as_scp  # SCU role only
        assert {cx.context_id: cx.result for cx in assoc.rejected_contexts} == {3: 3, 5: 4}
        assert assoc.send_c_echo().Status == 0
        assert assoc.acceptor.maximum_length == 16382
        assert assoc.acceptor.implementation_class_uid == ul.IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.asynchronous_operations == (1, 1)
    finally:
        assoc.release()
    assert recorder.wait("released") == ("released",)
    assert recorder.events[0] == ("requested", "SCU", "RTFSYN")


def _raw_associate(port: int, rq: pdu.AssociateRQ) -> tuple[socket.socket, int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdu.encode_associate_rq(rq))
    kind, body = read_pdu(sock)
    return sock, kind, body


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def test_raw_negotiation_answers_every_context(acceptor: ul.Acceptor) -> None:
    rq = pdu.AssociateRQ("RTFSYN", "SCU", (
        pdu.ProposedContext(1, str(MRImageStorage), (HTJ2K, str(ImplicitVRLittleEndian),
                                                     str(ExplicitVRLittleEndian))),
        pdu.ProposedContext(3, UNKNOWN_CLASS, (str(ImplicitVRLittleEndian),)),
        pdu.ProposedContext(5, str(Verification), (HTJ2K,)),
        pdu.ProposedContext(7, str(MRImageStorage), (str(ExplicitVRLittleEndian),))),
        pdu.UserInformation(max_pdu_length=0, roles=(
            pdu.RoleSelection(str(MRImageStorage), True, True),)))
    sock, kind, body = _raw_associate(acceptor.address[1], rq)
    with sock:
        assert kind == pdu.A_ASSOCIATE_AC
        ac = pdu.decode_associate_ac(body)
        assert [(r.context_id, r.result) for r in ac.results] == [(1, 0), (3, 3), (5, 4), (7, 0)]
        assert ac.results[0].transfer_syntax == ImplicitVRLittleEndian
        assert ac.results[3].transfer_syntax == ExplicitVRLittleEndian
        assert ac.user.roles == (pdu.RoleSelection(str(MRImageStorage), True, False),)
        assert ac.user.async_ops is None and ac.user.max_pdu_length == 16382
        assert (ac.called_ae_title, ac.calling_ae_title) == ("RTFSYN", "SCU")
        sock.sendall(pdu.encode_release_rq())
        assert read_pdu(sock)[0] == pdu.A_RELEASE_RP


@pytest.mark.parametrize("calling, called, version, expected", [
    ("STRANGER", "RTFSYN", 1, ul.REJECT_CALLING_AE),
    ("SCU", "NOTRTFSYN", 1, ul.REJECT_CALLED_AE),
    ("STRANGER", "NOTRTFSYN", 1, ul.REJECT_CALLED_AE),  # pynetdicom's precedence, too
    ("SCU", "RTFSYN", 2, ul.REJECT_PROTOCOL_VERSION),
])
def test_rejections(acceptor: ul.Acceptor, recorder: Recorder, calling: str, called: str,
                    version: int, expected: tuple[int, int, int]) -> None:
    rq = pdu.AssociateRQ(called, calling, (pdu.ProposedContext(
        1, str(Verification), (str(ImplicitVRLittleEndian),)),), protocol_version=version)
    sock, kind, body = _raw_associate(acceptor.address[1], rq)
    with sock:
        assert (kind, pdu.decode_associate_rj(body)) == (pdu.A_ASSOCIATE_RJ, expected)
        assert _closed(sock)
    if version == 1:
        assert recorder.wait("rejected") == ("rejected", expected)
    else:  # refused below ACSE, before the handler hears of it (as pynetdicom does)
        wait_for(lambda: not acceptor.active_associations, what="the connection to end")
        assert recorder.events == []


def test_handler_refusal_and_pynetdicom_sees_the_reason(acceptor: ul.Acceptor,
                                                       recorder: Recorder) -> None:
    recorder.refusal = (2, 3, 2)
    assoc = _pynetdicom_ae((Verification, [ImplicitVRLittleEndian])).associate(
        "127.0.0.1", acceptor.address[1], ae_title="RTFSYN")
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    assert (rsp.result, rsp.result_source, rsp.diagnostic) == (2, 3, 2)
    assert [e[0] for e in recorder.events] == ["requested"]  # the handler recorded it


def test_max_associations(acceptor: ul.Acceptor, recorder: Recorder) -> None:
    ae = _pynetdicom_ae((Verification, [ImplicitVRLittleEndian]))
    held = [ae.associate("127.0.0.1", acceptor.address[1], ae_title="RTFSYN") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = ae.associate("127.0.0.1", acceptor.address[1], ae_title="RTFSYN")
        assert third.is_rejected
        rsp = third.acceptor.primitive
        assert (rsp.result, rsp.result_source, rsp.diagnostic) == ul.REJECT_TOO_MANY
    finally:
        for assoc in held:
            assoc.release()
    wait_for(lambda: not acceptor.active_associations, what="the associations to end")
    again = ae.associate("127.0.0.1", acceptor.address[1], ae_title="RTFSYN")
    assert again.is_established and again.send_c_echo().Status == 0
    again.release()


def _established(port: int) -> socket.socket:
    sock, kind, _body = _raw_associate(port, pdu.AssociateRQ("RTFSYN", "SCU", (
        pdu.ProposedContext(1, str(Verification), (str(ImplicitVRLittleEndian),)),),
        pdu.UserInformation(max_pdu_length=16382)))
    assert kind == pdu.A_ASSOCIATE_AC
    return sock


def _command_pdu(context_id: int, values: dict[int, int | str]) -> bytes:
    return pdu.encode_p_data([pdu.PDV(context_id, True, True, dimse.encode_command(values))])


@pytest.mark.parametrize("payload, reason", [
    (_command_pdu(3, {0x0100: 0x0030, 0x0110: 1, 0x0800: 0x0101}), "context 3"),
    (pdu.encode_p_data([pdu.PDV(1, False, True, b"data")]), "without a command"),
    (pdu.pdu(0x09, bytes(4)), "unexpected PDU type 0x09"),
    (pdu.pdu(pdu.P_DATA_TF, b"\x00\x00\x00\x40\x01\x03" + bytes(10)), "does not fit"),
    (_command_pdu(1, {0x0100: 0x8001, 0x0110: 1, 0x0800: 0x0101}), "command field 0x8001"),
    (pdu.encode_p_data([pdu.PDV(1, True, True, b"\x08\x00\x00\x00\x00\x00\x00\x00")]),
     "group 0000"),
])
def test_protocol_errors_abort_the_association_only(acceptor: ul.Acceptor, recorder: Recorder,
                                                    payload: bytes, reason: str) -> None:
    with _established(acceptor.address[1]) as sock:
        sock.sendall(payload)
        kind, body = read_pdu(sock)
        assert kind == pdu.A_ABORT and pdu.decode_abort(body)[0] == 2
        assert _closed(sock)
    event = recorder.wait("aborted")
    assert event[1] == ul.AbortCause.PROTOCOL_ERROR and reason in event[2]
    assert _echo(acceptor.address[1])


def _echo(port: int, tls_args: Any = None) -> bool:
    assoc = _pynetdicom_ae((Verification, [ImplicitVRLittleEndian])).associate(
        "127.0.0.1", port, ae_title="RTFSYN", tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def test_non_dicom_bytes_are_aborted(acceptor: ul.Acceptor) -> None:
    with socket.create_connection(("127.0.0.1", acceptor.address[1]), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_pdu(sock) == (pdu.A_ABORT, bytes([0, 0, 2, 1]))
    assert _echo(acceptor.address[1])


def test_other_services_get_unrecognized_operation(acceptor: ul.Acceptor) -> None:
    with _established(acceptor.address[1]) as sock:
        sock.sendall(_command_pdu(1, {0x0002: str(Verification), 0x0100: 0x0020, 0x0110: 7,
                                      0x0800: 0x0001}))  # C-FIND-RQ with an identifier
        identifier = b"\x08\x00\x52\x00\x00\x00\x00\x00"  # (0008,0052), empty
        sock.sendall(pdu.encode_p_data([pdu.PDV(1, False, True, identifier)]))
        kind, body = read_pdu(sock)
        rsp = dimse.decode_command(pdu.decode_p_data(body)[0].data)
        assert kind == pdu.P_DATA_TF and dimse.command_us(rsp, dimse.COMMAND_FIELD) == 0x8020
        assert dimse.command_us(rsp, dimse.STATUS) == Status.UNRECOGNIZED_OPERATION
        assert dimse.command_us(rsp, dimse.MESSAGE_ID_RESPONDED_TO) == 7
        sock.sendall(pdu.encode_release_rq())
        assert read_pdu(sock)[0] == pdu.A_RELEASE_RP


def test_peer_stalling_mid_pdu_is_aborted_after_the_timeout(tmp_path: Path,
                                                            recorder: Recorder) -> None:
    running = start_acceptor(tmp_path, recorder, network_timeout=1.0)
    try:
        with _established(running.address[1]) as sock:
            # a P-DATA-TF of 16382 bytes announced, one command PDV begun, 64 bytes sent
            sock.sendall(b"\x04\x00\x00\x00\x3f\xfe" + pdu.PDV_HEADER.pack(0x3FFA, 1, 0x01)
                         + bytes(58))
            assert _echo(running.address[1]), "others are served meanwhile"
            sock.settimeout(15)
            assert read_pdu(sock) == (pdu.A_ABORT, bytes([0, 0, 2, 0]))
        event = recorder.wait("aborted")
        assert event[1] == ul.AbortCause.TIMEOUT and "1 s" in event[2]
    finally:
        running.stop(grace_seconds=1)


def test_handler_failure_aborts_that_association_only(acceptor: ul.Acceptor,
                                                      recorder: Recorder, tmp_path: Path) -> None:
    recorder.fail_store = True
    source = make_series(tmp_path / "src", np.ones((1, 4, 4)))[0]
    ae = _pynetdicom_ae((MRImageStorage, [ExplicitVRLittleEndian]))
    assoc = ae.associate("127.0.0.1", acceptor.address[1], ae_title="RTFSYN")
    assoc.send_c_store(source)
    wait_for(lambda: assoc.is_aborted, what="the association aborted")
    event = recorder.wait("aborted")
    assert event[1:] == (ul.AbortCause.INTERNAL_ERROR, "RuntimeError")
    assert list(tmp_path.glob("rtfsyn-rx-*")) == [], "the temporary file is removed"
    recorder.fail_store = False
    assert _echo(acceptor.address[1])


def test_stop_aborts_associations_after_the_grace_period(tmp_path: Path,
                                                         recorder: Recorder) -> None:
    running = start_acceptor(tmp_path, recorder)
    port = running.address[1]
    idle = _pynetdicom_ae((Verification, [ImplicitVRLittleEndian])).associate(
        "127.0.0.1", port, ae_title="RTFSYN")
    assert idle.is_established
    running.stop(grace_seconds=0.2)
    assert recorder.wait("aborted")[1] == ul.AbortCause.SHUTDOWN
    wait_for(lambda: idle.is_aborted or not idle.is_established, what="the requestor to see it")
    assert not [t for t in threading.enumerate() if t.name.startswith(f"dicom-accept-{port}")]
    assert not running.active_associations
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_tls_echo_and_a_silent_peer_blocks_nobody(tmp_path: Path, recorder: Recorder) -> None:
    pki = make_tls_material(tmp_path / "pki")
    context = server_context(TLSConfig(pki["server_cert"], pki["server_key"], pki["ca"]))
    running = start_acceptor(tmp_path, recorder, context, network_timeout=1.5)
    try:
        silent = socket.create_connection(("127.0.0.1", running.address[1]), timeout=15)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
        assert _echo(running.address[1], tls_args=(client, "127.0.0.1"))
        assert _closed(silent), "the silent peer is dropped after the network timeout"
        silent.close()
        assert not _echo(running.address[1]), "plain DICOM is refused on a TLS port"
    finally:
        running.stop(grace_seconds=1)
    assert ("released",) in recorder.events


# -- through the node's StorageSCP: spool, job log, dcmtk ---------------------------------
def test_c_store_is_spooled_byte_identical_with_small_pdus(tmp_path: Path) -> None:
    node = ScpNode(tmp_path, max_pdu=4096)
    try:
        rng = np.random.default_rng(1)
        small = make_series(tmp_path / "small", rng.uniform(0, 900, (4, 16, 16)))
        large = make_series(tmp_path / "large", rng.uniform(0, 900, (1, 512, 512)))
        files = small + large  # the large one crosses ~130 P-DATA-TF PDUs of 4 KiB
        ae = _pynetdicom_ae((MRImageStorage, [ExplicitVRLittleEndian]))
        ae.maximum_pdu_size = 4096
        assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
        assert assoc.is_established and assoc.acceptor.maximum_length == 4096
        _config.STORE_SEND_CHUNKED_DATASET = True  # sent as the file holds it, not re-encoded
        try:
            assert [assoc.send_c_store(f).Status for f in files] == [0] * len(files)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
        rows = {r.sop_instance_uid: r for r in node.instances()}
        for path in files:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            stored = Path(rows[uid].path).read_bytes()
            assert _data_set_bytes(stored) == _data_set_bytes(path.read_bytes())
            assert dcmread(io.BytesIO(stored)).file_meta.MediaStorageSOPInstanceUID == uid
            assert rows[uid].transfer_syntax_uid == ExplicitVRLittleEndian
        assert wait_for(lambda: [a for a in node.associations() if a.state == "released"])
        assert list((tmp_path / "var" / "tmp").iterdir()) == [], "no temporary file is left"
    finally:
        node.scp.stop(grace_seconds=1)


def test_the_next_temporary_file_waits_empty_and_goes_with_the_association(tmp_path: Path) -> None:
    """After a C-STORE is answered, the next one's temporary file is made while the peer sends;
    it is used by that C-STORE and deleted when the association ends without one."""
    node = ScpNode(tmp_path)
    temp = tmp_path / "var" / "tmp"
    try:
        files = make_series(tmp_path / "src", np.random.default_rng(4).uniform(0, 900, (3, 16, 16)))
        ae = _pynetdicom_ae((MRImageStorage, [ExplicitVRLittleEndian]))
        assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
        assert assoc.is_established
        assert list(temp.iterdir()) == []  # none before the first C-STORE
        spares = []
        for path in files:
            assert assoc.send_c_store(path).Status == 0
            waiting = wait_for(lambda: list(temp.iterdir()), what="the spare file")
            assert len(waiting) == 1 and waiting[0].stat().st_size == 0
            spares.append(waiting[0].name)
        assert len(set(spares)) == len(files)  # each C-STORE took the one made before it
        stored = {Path(r.path).name for r in node.instances()}
        assert len(stored) == len(files)
        assoc.abort()
        assert wait_for(lambda: [a for a in node.associations() if a.state == "aborted"],
                        what="the abort")
        assert wait_for(lambda: not list(temp.iterdir()), what="the spare's removal")
    finally:
        node.scp.stop(grace_seconds=1)


@pytest.mark.skipif(not (STORESCU.exists() and ECHOSCU.exists()), reason="dcmtk not installed")
def test_dcmtk_echoscu_and_storescu(tmp_path: Path) -> None:
    node = ScpNode(tmp_path)
    try:
        files = make_series(tmp_path / "src", np.random.default_rng(3).uniform(0, 900, (6, 32, 32)))
        echo = subprocess.run([str(ECHOSCU), "-aet", "DCMTK", "-aec", "RTFSYN", "127.0.0.1",
                               str(node.port)], capture_output=True, timeout=60)
        assert echo.returncode == 0, echo.stderr.decode(errors="replace")
        store = subprocess.run([str(STORESCU), "-aet", "DCMTK", "-aec", "RTFSYN", "127.0.0.1",
                                str(node.port), *map(str, files)], capture_output=True,
                               timeout=120)
        assert store.returncode == 0, store.stderr.decode(errors="replace")
        rows = node.instances()
        assert len(rows) == len(files) and all(Path(r.path).is_file() for r in rows)
        released = wait_for(lambda: [a for a in node.associations() if a.state == "released"
                                     and a.n_instances == len(files)], what="the release")
        assert released[0].calling_aet == "DCMTK"
    finally:
        node.scp.stop(grace_seconds=1)


# -- configuration ----------------------------------------------------------------------
def test_receiver_option() -> None:
    assert parse_config({}).node.receiver == "native"
    assert parse_config({"node": {"receiver": "pynetdicom"}}).node.receiver == "pynetdicom"
    with pytest.raises(ConfigError, match="node.receiver must be one of 'native', 'pynetdicom'. "
                                          "Found 'dcmtk'."):
        parse_config({"node": {"receiver": "dcmtk"}})
    assert load_config(REPO / "config" / "node.toml").node.receiver == "native"
