"""The storage SCP over loopback: echo, store, eligibility, refusals, duplicates, aborts,
the disk watermark and TLS; the tests taking the ``node`` fixture, and the TLS test, run
with both receivers (``[node] receiver``: native and pynetdicom)."""
from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
from tests.helpers.node import (fake_processor, make_ct_file, make_tls_material, node_config,
                                send_files, wait_for)
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification
from sqlalchemy import select

from dicom_node.store import db
from dicom_node.config import RECEIVERS, Config
from dicom_node.store.db import AssociationState, SeriesState
from dicom_node.store.joblog import JobLog
from dicom_node.schedule.scheduler import Scheduler
from dicom_node.dicom.status import Status
from dicom_node.receive.receiver import Receiver
from dicom_node.receive.record import NOT_ELIGIBLE_REASON
from dicom_node.receive.disk_guard import DiskGuard
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.pynetdicom_scp import handle_store
from dicom_node.store.spool import Spool, SpoolError


class Running:
    """A storage SCP with its job log, stopped by the fixture."""

    def __init__(self, config: Config, disk: DiskGuard | None = None) -> None:
        self.config = config
        self.log = JobLog(config.database_path)
        self.scp = StorageSCP(config, self.log, Spool(config.spool_dir), disk=disk)
        self.scp.start()
        self.port = self.scp.address[1]

    def rows(self, model: Any) -> list[Any]:
        with self.log.session() as s:
            return list(s.scalars(select(model).order_by(model.id)))

    def closed_associations(self) -> list[Any]:
        return [a for a in self.rows(db.Association) if a.state != AssociationState.OPEN]


@pytest.fixture(params=RECEIVERS)
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    running = Running(node_config(tmp_path, node={"allowed_calling_aets": ["SCU", "OTHER"],
                                                  "receiver": request.param}))
    yield running
    running.scp.stop(grace_seconds=1)


def test_c_echo(node: Running) -> None:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == Status.SUCCESS
    assoc.release()
    assert wait_for(lambda: node.closed_associations(), what="released association")[0].state \
        == AssociationState.RELEASED


def test_store_mr_and_ct(node: Running, mr_series: list[Path], tmp_path: Path) -> None:
    ct = make_ct_file(tmp_path / "ct")
    assert send_files([*mr_series, ct], node.port) == [Status.SUCCESS] * (len(mr_series) + 1)
    instances = node.rows(db.Instance)
    assert len(instances) == len(mr_series) + 1
    mr = [i for i in instances if i.eligible]
    ct_row = [i for i in instances if not i.eligible]
    assert len(mr) == len(mr_series) and ct_row[0].reason == NOT_ELIGIBLE_REASON
    for row in instances:  # spooled as sent, under study/series/sop
        path = Path(row.path)
        assert path.parent.name == row.series_uid and path.name == f"{row.sop_instance_uid}.dcm"
        assert path.stat().st_size == row.size_bytes
    original = dcmread(mr_series[0])
    stored = dcmread(next(Path(r.path) for r in mr if r.sop_instance_uid
                          == original.SOPInstanceUID))
    np.testing.assert_array_equal(stored.pixel_array, original.pixel_array)
    assert wait_for(node.closed_associations)[0].n_instances == len(mr_series) + 1
    series = {s.modality: s for s in node.rows(db.Series)}
    assert series["MR"].n_instances == len(mr_series) and series["CT"].n_instances == 1


def test_compressed_transfer_syntax_is_stored_as_sent(node: Running, mr_series: list[Path],
                                                      tmp_path: Path) -> None:
    ds = dcmread(mr_series[0])
    ds.compress(RLELossless)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MRImageStorage, [RLELossless])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
    assert assoc.send_c_store(path).Status == Status.SUCCESS
    assoc.release()
    row = node.rows(db.Instance)[0]
    assert row.transfer_syntax_uid == RLELossless
    np.testing.assert_array_equal(dcmread(row.path).pixel_array, ds.pixel_array)


def test_unknown_calling_ae_is_refused(node: Running, mr_series: list[Path]) -> None:
    with pytest.raises(ConnectionRefusedError, match="rejected=True"):
        send_files(mr_series, node.port, calling="STRANGER")
    row = wait_for(node.closed_associations)[0]
    assert row.state == AssociationState.REJECTED
    assert row.reason == "calling AE title not recognized: calling 'STRANGER', called 'RTFSYN'"
    assert node.rows(db.Instance) == []


def test_wrong_called_ae_is_refused(node: Running, mr_series: list[Path]) -> None:
    with pytest.raises(ConnectionRefusedError, match="rejected=True"):
        send_files(mr_series, node.port, called="NOTRTFSYN")
    row = wait_for(node.closed_associations)[0]
    assert row.state == AssociationState.REJECTED and "called AE title not recognized" in row.reason


def test_duplicates_are_idempotent(node: Running, mr_series: list[Path]) -> None:
    assert send_files(mr_series[:2], node.port) == [Status.SUCCESS, Status.SUCCESS]
    assert send_files(mr_series[:2], node.port, calling="OTHER") == [Status.SUCCESS, Status.SUCCESS]
    instances = node.rows(db.Instance)
    assert len(instances) == 2 and all(i.n_received == 2 for i in instances)
    assert node.rows(db.Series)[0].n_instances == 2


def test_aborted_association_is_recorded_and_triggers_nothing(node: Running,
                                                               mr_series: list[Path]) -> None:
    send_files(mr_series, node.port, abort=True)
    row = wait_for(node.closed_associations)[0]
    assert row.state == AssociationState.ABORTED and row.n_instances == len(mr_series)
    calls: list = []
    scheduler = Scheduler(node.config, node.log, fake_processor(calls))
    wait_for(lambda: (scheduler.tick(), node.rows(db.Series)[0].state)[1] == SeriesState.PARTIAL,
             what="series marked partial")
    assert node.rows(db.Job) == [] and calls == []
    assert all(Path(i.path).exists() for i in node.rows(db.Instance))  # kept on disk


def test_disk_above_watermark_refuses_associations_and_stores(tmp_path: Path,
                                                              mr_series: list[Path]) -> None:
    usage = {"used": 10}
    config = node_config(tmp_path, node={"disk_watermark_percent": 75})
    disk = DiskGuard(config.node.data_dir, 75, usage=lambda _p: (100 << 30, usage["used"] << 30, 0),
                     cache_seconds=0)
    running = Running(config, disk)
    try:
        usage["used"] = 80
        with pytest.raises(ConnectionRefusedError):
            send_files(mr_series, running.port)
        row = wait_for(running.closed_associations)[0]
        assert row.state == AssociationState.REJECTED and "watermark 75%" in row.reason
        usage["used"] = 10
        ae = AE(ae_title="SCU")
        ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", running.port, ae_title="RTFSYN")
        assert assoc.send_c_store(mr_series[0]).Status == Status.SUCCESS
        usage["used"] = 90  # fills up mid-association
        assert assoc.send_c_store(mr_series[1]).Status == Status.OUT_OF_RESOURCES
        assoc.release()
        assert len(running.rows(db.Instance)) == 1
    finally:
        running.scp.stop(grace_seconds=1)


def test_store_handler_answers_cannot_understand_for_garbage(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "joblog.sqlite")
    rx = Receiver(log=log, spool=Spool(tmp_path / "spool"),
                  disk=DiskGuard(tmp_path, 100.0, usage=lambda _p: (1, 0, 1)))

    class GarbageEvent:
        """A C-STORE event whose data set is not DICOM (received in memory, not chunked)."""

        request = SimpleNamespace(AffectedSOPClassUID=MRImageStorage,
                                  AffectedSOPInstanceUID="1.2")
        context = SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian)
        assoc = object()

        @property
        def dataset_path(self) -> Path:
            raise AttributeError("not received in chunks")

        def encoded_dataset(self, include_meta: bool = True) -> bytes:
            return b"\x00" * 10 + b"not dicom at all"

    event = GarbageEvent()
    assert handle_store(event, rx) == Status.CANNOT_UNDERSTAND
    assert list((tmp_path / "spool").rglob("*.dcm")) == []


@pytest.mark.parametrize("receiver", RECEIVERS)
def test_tls_round_trip_with_client_certificates(tmp_path: Path, mr_series: list[Path],
                                                 receiver: str) -> None:
    pki = make_tls_material(tmp_path / "pki")
    config = node_config(tmp_path, node={"receiver": receiver, "tls": {
        "certificate": str(pki["server_cert"]), "private_key": str(pki["server_key"]),
        "ca_certificates": str(pki["ca"]), "require_client_certificate": True}})
    running = Running(config)
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
        client.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
        statuses = send_files(mr_series, running.port, tls_args=(client, "127.0.0.1"))
        assert statuses == [Status.SUCCESS] * len(mr_series)
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
        with pytest.raises((ConnectionRefusedError, ssl.SSLError, OSError)):
            send_files(mr_series, running.port, tls_args=(anonymous, "127.0.0.1"))
        plain_ae = AE(ae_title="SCU")
        plain_ae.add_requested_context(Verification)
        assert not plain_ae.associate("127.0.0.1", running.port, ae_title="RTFSYN").is_established
        assert len(running.rows(db.Instance)) == len(mr_series)
    finally:
        running.scp.stop(grace_seconds=1)


def test_spool_places_files_atomically_and_refuses_bad_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    placed = spool.place_bytes(b"DICM-bytes", "1.2", "1.2.3", "1.2.3.4")
    placed.sync()
    path, size = placed.path, placed.size
    assert path == tmp_path / "spool" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICM-bytes" and size == 10
    source = tmp_path / "incoming.dcm"
    source.write_bytes(b"x" * 3_000_000)
    copied, size = spool.store_file(source, "1.2", "1.2.3", "1.2.3.5", move=False)
    assert size == 3_000_000 and copied.read_bytes() == source.read_bytes()
    moved, _ = spool.store_file(source, "1.2", "1.2.3", "1.2.3.6")
    assert moved.exists() and not source.exists()
    (path.parent / ".incoming-x.part").write_bytes(b"half")  # left by a crash
    assert spool.remove_stale_parts() == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "1.2.3.4.dcm", "1.2.3.5.dcm", "1.2.3.6.dcm"]
    for bad in ("../../etc", "1.2.x", "", "1." * 40):
        with pytest.raises(SpoolError, match="must be a DICOM UID"):
            spool.path_for("1.2", "1.2.3", bad)
