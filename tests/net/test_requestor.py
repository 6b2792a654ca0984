"""The native requestor behind the exports (dicom_node.net.requestor, used by
dicom_node.send.sender) against the node's own acceptor as the destination: data sets sent as
they are or re-encoded, the peer's maximum PDU length, rejections, a destination that
fails or falls silent mid-series, and no usable presentation context."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, \
    MRImageStorage

from dicom_node.net import acceptor as ul
from dicom_node.store.db import DeliveryStatus
from dicom_node.send.sender import Endpoint, _data_set_offset, send_files
from dicom_node.net.requestor import AssociationRejected, Requestor

BOTH = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})


class Destination:
    """An AssociationHandler keeping what it receives; ``fail_at`` (1-based) raises on that
    C-STORE (the acceptor then aborts), ``stall_seconds`` delays every answer."""

    def __init__(self, fail_at: int | None = None, stall_seconds: float = 0.0) -> None:
        self.stored: dict[str, tuple[str, bytes]] = {}
        self.events: list[str] = []
        self.fail_at, self.stall_seconds = fail_at, stall_seconds
        self.lock = threading.Lock()

    def requested(self, assoc: Any) -> None:
        return None

    def rejected(self, assoc: Any, rejection: Any) -> None:
        self.events.append("rejected")

    def released(self, assoc: Any) -> None:
        self.events.append("released")

    def aborted(self, assoc: Any, cause: Any, detail: str) -> None:
        self.events.append("aborted")

    def echo(self, assoc: Any) -> int:
        return 0

    def store(self, assoc: Any, instance: ul.ReceivedInstance) -> int:
        with self.lock:
            if self.fail_at is not None and len(self.stored) + 1 == self.fail_at:
                raise RuntimeError("destination failure (test)")
            self.stored[instance.sop_instance_uid] = (instance.transfer_syntax,
                                                      instance.path.read_bytes())
        time.sleep(self.stall_seconds)
        return 0


def start(tmp_path: Path, handler: Destination, supported: Any = None,
          **settings: Any) -> ul.Acceptor:
    values = {"ae_title": "PACS", "supported": supported or {str(MRImageStorage): BOTH},
              "network_timeout": 10.0, "temp_dir": tmp_path, **settings}
    acceptor = ul.Acceptor(("127.0.0.1", 0), ul.AcceptorSettings(**values), handler)
    acceptor.start()
    return acceptor


@pytest.fixture
def destination() -> Destination:
    return Destination()


@pytest.fixture
def stop_later() -> Iterator[list[ul.Acceptor]]:
    started: list[ul.Acceptor] = []
    yield started
    for acceptor in started:
        acceptor.stop(grace_seconds=1)


def endpoint(acceptor: ul.Acceptor, ae_title: str = "PACS") -> Endpoint:
    return Endpoint(ae_title, "127.0.0.1", acceptor.address[1])


@pytest.mark.parametrize("max_pdu", [0, 16382, 4096])
def test_data_sets_arrive_as_they_are_in_the_files(tmp_path: Path, mr_series: list[Path],
                                                   destination: Destination, max_pdu: int,
                                                   stop_later: list[ul.Acceptor]) -> None:
    acceptor = start(tmp_path, destination, max_pdu=max_pdu)
    stop_later.append(acceptor)
    outcome = send_files(mr_series, endpoint(acceptor), calling_aet="RTFSYN")
    assert outcome.status == DeliveryStatus.OK and outcome.n_sent == len(mr_series)
    assert [code for _uid, code, _o in outcome.instances] == [0] * len(mr_series)
    for path in mr_series:
        data = path.read_bytes()
        syntax, received = destination.stored[str(dcmread(path).SOPInstanceUID)]
        assert syntax == str(ExplicitVRLittleEndian)
        assert received[_data_set_offset(received):] == data[_data_set_offset(data):]
    assert _wait_for_event(destination, "released")


def _wait_for_event(destination: Destination, kind: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kind in destination.events:
            return True
        time.sleep(0.02)
    return False


def test_a_destination_accepting_only_implicit_vr_gets_re_encoded_data_sets(
        tmp_path: Path, mr_series: list[Path], destination: Destination,
        stop_later: list[ul.Acceptor]) -> None:
    acceptor = start(tmp_path, destination,
                     supported={str(MRImageStorage): frozenset({str(ImplicitVRLittleEndian)})})
    stop_later.append(acceptor)
    outcome = send_files(mr_series, endpoint(acceptor), calling_aet="RTFSYN")
    assert outcome.status == DeliveryStatus.OK
    for path in mr_series:
        original = dcmread(path)
        syntax, _received = destination.stored[str(original.SOPInstanceUID)]
        assert syntax == str(ImplicitVRLittleEndian)
    for uid, (_syntax, raw) in destination.stored.items():
        back = dcmread(_as_file(tmp_path, uid, raw))
        original = next(dcmread(p) for p in mr_series if str(dcmread(p).SOPInstanceUID) == uid)
        assert np.array_equal(back.pixel_array, original.pixel_array)
        assert back.SeriesInstanceUID == original.SeriesInstanceUID


def _as_file(folder: Path, uid: str, raw: bytes) -> Path:
    path = folder / f"{uid}.dcm"
    path.write_bytes(raw)
    return path


def test_a_rejection_names_the_destination_and_the_reason(
        tmp_path: Path, mr_series: list[Path], destination: Destination,
        stop_later: list[ul.Acceptor]) -> None:
    acceptor = start(tmp_path, destination)
    stop_later.append(acceptor)
    outcome = send_files(mr_series, endpoint(acceptor, "NOTPACS"), calling_aet="RTFSYN")
    assert outcome.status == DeliveryStatus.FAILED and outcome.n_failed == len(mr_series)
    assert outcome.error == (f"association with NOTPACS@127.0.0.1:{acceptor.address[1]} "
                             "rejected (permanent rejection, source 1, reason 7)")
    with pytest.raises(AssociationRejected) as refused:
        Requestor.associate("127.0.0.1", acceptor.address[1], calling_ae_title="RTFSYN",
                            called_ae_title="NOTPACS", contexts=[(str(MRImageStorage),
                                                                  [str(ExplicitVRLittleEndian)])],
                            timeout=5)
    assert refused.value.rejection == ul.REJECT_CALLED_AE


def test_a_destination_that_aborts_mid_series_leaves_the_rest_failed(
        tmp_path: Path, mr_series: list[Path], stop_later: list[ul.Acceptor]) -> None:
    destination = Destination(fail_at=3)
    acceptor = start(tmp_path, destination)
    stop_later.append(acceptor)
    outcome = send_files(mr_series, endpoint(acceptor), calling_aet="RTFSYN")
    assert outcome.status == DeliveryStatus.PARTIAL
    assert (outcome.n_sent, outcome.n_failed) == (2, len(mr_series) - 2)
    assert [code for _uid, code, _o in outcome.instances] == [0, 0] + [None] * 3
    assert "status no response" in outcome.error


def test_a_silent_destination_times_out(tmp_path: Path, mr_series: list[Path],
                                        stop_later: list[ul.Acceptor]) -> None:
    destination = Destination(stall_seconds=3.0)
    acceptor = start(tmp_path, destination)
    stop_later.append(acceptor)
    started = time.monotonic()
    outcome = send_files(mr_series, endpoint(acceptor), calling_aet="RTFSYN", timeout=1.0)
    assert time.monotonic() - started < 2.9
    assert outcome.status == DeliveryStatus.FAILED and outcome.n_failed == len(mr_series)


def test_no_accepted_context_fails_every_instance(tmp_path: Path, mr_series: list[Path],
                                                  destination: Destination,
                                                  stop_later: list[ul.Acceptor]) -> None:
    acceptor = start(tmp_path, destination, supported={str(CTImageStorage): BOTH})
    stop_later.append(acceptor)
    outcome = send_files(mr_series, endpoint(acceptor), calling_aet="RTFSYN")
    assert outcome.status == DeliveryStatus.FAILED and outcome.n_failed == len(mr_series)
    assert destination.stored == {}
