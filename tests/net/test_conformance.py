"""The native acceptor held to PS3.8 / PS3.7, one test per defect of issue 11: association
slots, ARTIM and deadlines, PDU and data-set limits, the disk watermark while streaming, the
affected SOP class, context ids and application context, the protocol version, A-ABORT and
Sta13, AE titles, A-RELEASE mid-data-set. Raw sockets play the requestor."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.dicom.status import Status
from dicom_node.net import acceptor as ul
from dicom_node.net import dimse, pdu
from tests.helpers.dicom_factory import make_series
from tests.helpers.node import wait_for
from tests.net.helpers import (RawPeer, Recorder, data_set_bytes, echo_command, files_in, p_data,
                               rq, start_acceptor, store_command)

IMPLICIT, EXPLICIT = str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian)
VERIFICATION, MR = str(Verification), str(MRImageStorage)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def acceptor(tmp_path: Path, recorder: Recorder) -> Iterator[ul.Acceptor]:
    running = start_acceptor(tmp_path, recorder, max_associations=2, artim_timeout=2.0)
    yield running
    running.stop(grace_seconds=1)


def _echo(port: int, calling: str = "ECHOSCU") -> tuple[bool, tuple[int, int, int] | None]:
    """(C-ECHO answered with Success, the rejection if the association was refused)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="RTFSYN")
    if not assoc.is_established:
        rsp = assoc.acceptor.primitive
        return False, (rsp.result, rsp.result_source, rsp.diagnostic) if rsp else None
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok, None


def _mr_data_set(tmp_path: Path, size: int = 64) -> tuple[bytes, str]:
    """An Explicit VR Little Endian MR data set (no file meta) and its SOP Instance UID."""
    path = make_series(tmp_path / f"src{size}", np.random.default_rng(size).uniform(
        0, 900, (1, size, size)))[0]
    data, uid, _ts = data_set_bytes(path)
    return data, uid


# -- 1. slots count associated peers; the rest are answered ----------------------------------
def test_idle_connections_do_not_take_association_slots(acceptor: ul.Acceptor) -> None:
    idle = [RawPeer(acceptor.address[1]) for _ in range(5)]  # more than max_associations (2)
    try:
        assert _echo(acceptor.address[1]) == (True, None)
    finally:
        for peer in idle:
            peer.close()


def test_connections_over_the_cap_get_an_associate_rj(tmp_path: Path,
                                                      recorder: Recorder) -> None:
    running = start_acceptor(tmp_path, recorder, max_associations=3, max_connections=3,
                             artim_timeout=5.0)
    held = [RawPeer(running.address[1]) for _ in range(3)]
    try:
        assert [p.associate()[0] for p in held] == [pdu.A_ASSOCIATE_AC] * 3
        ok, rejection = _echo(running.address[1])
        assert (ok, rejection) == (False, ul.REJECT_TOO_MANY)
    finally:
        for peer in held:
            peer.close()
        running.stop(grace_seconds=1)


def test_idle_connections_over_the_cap_make_room_for_new_ones(tmp_path: Path,
                                                              recorder: Recorder) -> None:
    running = start_acceptor(tmp_path, recorder, max_associations=2, max_connections=3,
                             artim_timeout=30.0)
    idle = [RawPeer(running.address[1]) for _ in range(6)]
    try:
        assert _echo(running.address[1]) == (True, None)
        assert sum(p.closed_within(5.0) for p in idle) >= 4, "the oldest idle ones are closed"
    finally:
        for peer in idle:
            peer.close()
        running.stop(grace_seconds=1)


def test_established_associations_over_the_limit_are_rejected(acceptor: ul.Acceptor) -> None:
    held = [RawPeer(acceptor.address[1]) for _ in range(2)]
    try:
        assert [p.associate()[0] for p in held] == [pdu.A_ASSOCIATE_AC] * 2
        assert _echo(acceptor.address[1]) == (False, ul.REJECT_TOO_MANY)
    finally:
        for peer in held:
            peer.close()
    wait_for(lambda: _echo(acceptor.address[1])[0], what="a slot free again")


# -- 2. ARTIM and the association deadline --------------------------------------------------
def test_artim_closes_a_connection_that_never_asks(acceptor: ul.Acceptor) -> None:
    with RawPeer(acceptor.address[1]) as silent:  # network_timeout is 10 s, ARTIM 2 s
        assert silent.closed_within(6.0)


def test_artim_bounds_a_dripping_associate_rq(acceptor: ul.Acceptor) -> None:
    with RawPeer(acceptor.address[1]) as slow:
        started = time.monotonic()
        assert not slow.drip(rq(), interval=0.3, until=8.0), "closed while dripping"
        assert time.monotonic() - started < 6.0


def test_association_deadline_aborts_a_slow_established_peer(tmp_path: Path,
                                                             recorder: Recorder) -> None:
    running = start_acceptor(tmp_path, recorder, association_timeout=2.0)
    try:
        with RawPeer(running.address[1]) as slow:
            assert slow.associate()[0] == pdu.A_ASSOCIATE_AC
            echo = p_data(1, echo_command(), command=True)
            assert not slow.drip(echo * 40, interval=0.2, until=10.0)
            assert slow.recv_pdu()[0] == pdu.A_ABORT
        event = recorder.wait("aborted")
        assert event[1] == ul.AbortCause.TIMEOUT and "2 s" in event[2]
    finally:
        running.stop(grace_seconds=1)


# -- 3. maximum PDU length, data-set size, disk watermark while streaming -------------------
def test_p_data_longer_than_the_maximum_pdu_is_aborted(acceptor: ul.Acceptor,
                                                       recorder: Recorder) -> None:
    with RawPeer(acceptor.address[1]) as peer:
        assert peer.associate()[0] == pdu.A_ASSOCIATE_AC
        peer.send(pdu.PDU_HEADER.pack(pdu.P_DATA_TF, 100 << 20), bytes(1000))
        kind, body = peer.recv_pdu(timeout=5.0)
        assert (kind, pdu.decode_abort(body)) == (pdu.A_ABORT, (2, ul.ABORT_INVALID_PARAMETER))
    assert "16382" in recorder.wait("aborted")[2]


def test_data_set_over_the_size_limit_is_refused(tmp_path: Path, recorder: Recorder) -> None:
    data, uid = _mr_data_set(tmp_path, 128)  # ~33 KB
    (tmp_path / "tmp").mkdir()
    running = start_acceptor(tmp_path / "tmp", recorder, max_dataset_bytes=20_000)
    try:
        with RawPeer(running.address[1]) as peer:
            assert peer.associate()[0] == pdu.A_ASSOCIATE_AC
            assert peer.store(3, data, uid, fragment=4000) == Status.OUT_OF_RESOURCES
            assert peer.store(3, data[:15_000], "1.2.3.4", fragment=4000) != \
                Status.OUT_OF_RESOURCES, "a smaller data set is still taken"
        assert uid not in recorder.stored
        wait_for(lambda: files_in(tmp_path / "tmp") == [], what="no temporary file left")
    finally:
        running.stop(grace_seconds=1)


def test_disk_watermark_is_checked_while_streaming(tmp_path: Path, recorder: Recorder) -> None:
    limit = 3 << 20  # the disk "fills up" once 3 MiB of this data set are written
    asked: list[int] = []

    def room(n_bytes: int) -> bool:
        asked.append(n_bytes)
        return n_bytes < limit

    temp = tmp_path / "tmp"
    temp.mkdir()
    running = start_acceptor(temp, recorder, disk_room=room, max_pdu=0)
    try:
        with RawPeer(running.address[1]) as peer:
            assert peer.associate(rq(max_pdu=0))[0] == pdu.A_ASSOCIATE_AC
            peer.send(p_data(3, store_command("1.2.3.9"), command=True))
            block = bytes(1 << 20)
            for _ in range(5):  # 5 MiB, not the last fragment
                peer.send(p_data(3, block, command=False, last=False))
            wait_for(lambda: max(asked, default=0) >= limit, what="the space check")
            wait_for(lambda: files_in(temp) == [], what="the partial file removed mid-stream")
            peer.send(p_data(3, block, command=False, last=True))
            status = dimse.command_us(peer.response(), dimse.STATUS)
            assert status == Status.OUT_OF_RESOURCES
        assert recorder.stored == {}
    finally:
        running.stop(grace_seconds=1)


# -- 4. the affected SOP class must be the context's abstract syntax -----------------------
def test_c_store_on_the_verification_context_is_refused(acceptor: ul.Acceptor,
                                                        recorder: Recorder,
                                                        tmp_path: Path) -> None:
    data, uid = _mr_data_set(tmp_path)
    with RawPeer(acceptor.address[1]) as peer:
        assert peer.associate()[0] == pdu.A_ASSOCIATE_AC
        assert peer.store(1, data, uid) == Status.SOP_CLASS_NOT_SUPPORTED
        assert peer.store(3, data, uid) == 0, "the same data set on its own context is taken"
    assert list(recorder.stored) == [uid]


# -- 5. context ids, zero contexts, application context name -------------------------------
@pytest.mark.parametrize("context_id", [2, 0])
def test_even_or_zero_context_id_is_aborted(acceptor: ul.Acceptor, context_id: int) -> None:
    with RawPeer(acceptor.address[1]) as peer:
        kind, body = peer.associate(rq((context_id, VERIFICATION, (IMPLICIT,))))
        assert (kind, pdu.decode_abort(body)) == (pdu.A_ABORT, (2, ul.ABORT_INVALID_PARAMETER))


def test_no_presentation_context_is_rejected(acceptor: ul.Acceptor) -> None:
    raw = pdu.encode_associate_rq(pdu.AssociateRQ("RTFSYN", "SCU", (), pdu.UserInformation(
        max_pdu_length=16382)))
    with RawPeer(acceptor.address[1]) as peer:
        kind, body = peer.associate(raw)
        assert (kind, pdu.decode_associate_rj(body)) == (pdu.A_ASSOCIATE_RJ,
                                                         ul.REJECT_NO_REASON)


def test_wrong_application_context_is_rejected(acceptor: ul.Acceptor,
                                               recorder: Recorder) -> None:
    with RawPeer(acceptor.address[1]) as peer:
        kind, body = peer.associate(rq(app="1.2.840.10008.3.1.1.2"))
        assert (kind, pdu.decode_associate_rj(body)) == (pdu.A_ASSOCIATE_RJ,
                                                         ul.REJECT_APPLICATION_CONTEXT)
    assert recorder.wait("rejected")[1] == ul.REJECT_APPLICATION_CONTEXT


# -- 6. protocol version: bit 0 ------------------------------------------------------------
@pytest.mark.parametrize("version, expected", [(0x0003, pdu.A_ASSOCIATE_AC),
                                               (0xFFFF, pdu.A_ASSOCIATE_AC),
                                               (0x0002, pdu.A_ASSOCIATE_RJ)])
def test_protocol_version_tests_bit_0_only(acceptor: ul.Acceptor, version: int,
                                           expected: int) -> None:
    with RawPeer(acceptor.address[1]) as peer:
        kind, body = peer.associate(rq(version=version))
        assert kind == expected
        if kind == pdu.A_ASSOCIATE_RJ:
            assert pdu.decode_associate_rj(body) == ul.REJECT_PROTOCOL_VERSION


# -- 7. A-ABORT before association; Sta13 --------------------------------------------------
def test_a_abort_before_association_is_not_answered(acceptor: ul.Acceptor) -> None:
    with RawPeer(acceptor.address[1]) as peer:
        peer.send(pdu.encode_abort(0, 0))
        peer.sock.settimeout(5.0)
        assert peer.sock.recv(64) == b"", "the connection is closed without a PDU"


@pytest.mark.parametrize("ending", ["reject", "release", "abort"])
def test_acceptor_waits_for_the_peer_to_close(acceptor: ul.Acceptor, ending: str) -> None:
    with RawPeer(acceptor.address[1]) as peer:
        if ending == "reject":
            assert peer.associate(rq(called="SOMEONE"))[0] == pdu.A_ASSOCIATE_RJ
        else:
            assert peer.associate()[0] == pdu.A_ASSOCIATE_AC
            peer.send(pdu.encode_release_rq() if ending == "release"
                      else pdu.pdu(0x09, bytes(4)))
            assert peer.recv_pdu()[0] == (pdu.A_RELEASE_RP if ending == "release"
                                          else pdu.A_ABORT)
        assert not peer.closed_within(0.7), "Sta13: the acceptor waits for the peer to close"
        assert peer.closed_within(5.0), "... for ARTIM (2 s) at most"
    wait_for(lambda: not acceptor.active_associations, what="the thread to end")


def test_peer_closing_in_sta13_ends_the_connection_at_once(acceptor: ul.Acceptor) -> None:
    peer = RawPeer(acceptor.address[1])
    assert peer.associate()[0] == pdu.A_ASSOCIATE_AC
    peer.send(pdu.encode_release_rq())
    assert peer.recv_pdu()[0] == pdu.A_RELEASE_RP
    peer.close()
    wait_for(lambda: not acceptor.active_associations, timeout=1.5,
             what="the connection to end well before ARTIM")


# -- 8. AE titles with control characters ------------------------------------------------
@pytest.mark.parametrize("calling, called, expected", [
    ("EVIL\x1b[2J", "RTFSYN", ul.REJECT_CALLING_AE),
    ("SCU", "RTF\x07SYN", ul.REJECT_CALLED_AE),
    ("   ", "RTFSYN", ul.REJECT_CALLING_AE),
])
def test_ae_titles_with_control_characters_are_rejected(acceptor: ul.Acceptor,
                                                        recorder: Recorder,
                                                        caplog: pytest.LogCaptureFixture,
                                                        calling: str, called: str,
                                                        expected: tuple[int, int, int]) -> None:
    caplog.set_level(logging.DEBUG)
    with RawPeer(acceptor.address[1]) as peer:
        kind, body = peer.associate(rq(calling=calling, called=called))
        assert (kind, pdu.decode_associate_rj(body)) == (pdu.A_ASSOCIATE_RJ, expected)
    recorder.wait("rejected")
    assert not any(c in caplog.text for c in "\x1b\x07"), "no raw control character logged"
    titles = [e[1:] for e in recorder.events if e[0] == "requested"]
    assert titles and not any(c in t for pair in titles for t in pair for c in "\x1b\x07")


# -- 9. A-RELEASE in the middle of a data set ----------------------------------------------
def test_release_in_the_middle_of_a_data_set_is_not_a_clean_release(
        acceptor: ul.Acceptor, recorder: Recorder, tmp_path: Path) -> None:
    data, uid = _mr_data_set(tmp_path)
    with RawPeer(acceptor.address[1]) as peer:
        assert peer.associate()[0] == pdu.A_ASSOCIATE_AC
        peer.send(p_data(3, store_command(uid), command=True),
                  p_data(3, data[:1000], command=False, last=False), pdu.encode_release_rq())
        kind, body = peer.recv_pdu()
        assert (kind, pdu.decode_abort(body)) == (pdu.A_ABORT, (2, ul.ABORT_UNEXPECTED_PDU))
    event = recorder.wait("aborted")
    assert event[1] == ul.AbortCause.PROTOCOL_ERROR and "A-RELEASE-RQ" in event[2]
    assert "released" not in recorder.kinds() and recorder.stored == {}


def test_release_in_the_middle_of_a_command_is_not_a_clean_release(
        acceptor: ul.Acceptor, recorder: Recorder) -> None:
    command = store_command("1.2.3")
    with RawPeer(acceptor.address[1]) as peer:
        assert peer.associate()[0] == pdu.A_ASSOCIATE_AC
        peer.send(p_data(3, command[:20], command=True, last=False), pdu.encode_release_rq())
        assert peer.recv_pdu()[0] == pdu.A_ABORT
    assert recorder.wait("aborted")[1] == ul.AbortCause.PROTOCOL_ERROR


# -- the limits are settings of the acceptor, configured in [node] -------------------------
def test_limits_reach_the_acceptor_from_the_configuration(tmp_path: Path) -> None:
    from dicom_node.receive.native import acceptor_settings
    from tests.helpers.node import node_config

    config = node_config(tmp_path, node={"artim_timeout_seconds": 7,
                                         "association_timeout_seconds": 90,
                                         "max_dataset_megabytes": 12})
    settings = acceptor_settings(config, tmp_path)
    assert (settings.artim_timeout, settings.association_timeout) == (7.0, 90.0)
    assert settings.max_dataset_bytes == 12 << 20 and settings.disk_room is not None


@pytest.mark.parametrize("key, value", [("artim_timeout_seconds", 0),
                                        ("association_timeout_seconds", -1),
                                        ("max_dataset_megabytes", 0),
                                        ("artim_timeout_seconds", "30")])
def test_limits_are_validated_naming_the_key(key: str, value: object) -> None:
    from dicom_node.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=f"node.{key} must be"):
        parse_config({"node": {key: value}})
