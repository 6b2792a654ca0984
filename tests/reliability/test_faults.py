"""Faults: destination down or refusing, disk short, aborted associations, timeouts and
stalled peers. Nothing is lost, nothing is delivered twice, and the node keeps serving."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from dicom_node.store import db
from dicom_node.cli import main
from dicom_node.receive.disk_guard import DiskGuard
from tests.helpers.node import TestStorageSCP, free_port, send_files, wait_for
from tests.reliability.figures import delivered, fault_survived
from tests.helpers.pdus import read_pdu
from tests.reliability.helpers import (NodeFactory, RelNode, associate_rq_pdu, connection_closed,
                                       echo_ok, raw_connect, received_by, series_uid_of,
                                       small_series)

RETRYING = {"export": {"max_attempts": 50, "backoff_seconds": 0.2, "backoff_max_seconds": 0.8}}


def _deliveries(node: RelNode, job_id: int) -> list[dict[str, Any]]:
    return [d for d in node.status()["deliveries"] if d["job_id"] == job_id]


def test_destination_down_then_back(make_node: NodeFactory, tmp_path: Path) -> None:
    port = free_port()
    node = make_node(dest_port=port, **RETRYING)
    files = small_series(tmp_path / "src")
    assert set(send_files(files, node.port)) == {0}
    uid = series_uid_of(files[0])
    wait_for(lambda: len(node.jobs_of(uid)) == 1 and node.jobs_of(uid)[0]["send_attempts"] >= 3,
             timeout=60, what="three failed delivery attempts")
    job = node.jobs_of(uid)[0]
    assert job["state"] in ("waiting", "sending") and "next attempt" in job["reason"], job
    attempts = _deliveries(node, job["id"])
    assert all(d["status"] == "failed" and d["error"] for d in attempts if d["ended_at"])
    pacs = TestStorageSCP(port=port).start()
    try:
        jobs = node.wait_jobs_final(uid, timeout=60)
        assert jobs[0]["state"] == "done", jobs
        n = jobs[0]["n_derived"]
        assert received_by(pacs, jobs[0]["derived_series_uid"]) == (n, n)
        delivered(1, n)
        fault_survived("destination down, then back",
                       f"delivered after {len(_deliveries(node, job['id'])) - 1} failed attempts")
        node.assert_serving(pacs, tmp_path)
    finally:
        pacs.stop()


def test_destination_down_past_max_attempts_then_resend(make_node: NodeFactory,
                                                        tmp_path: Path) -> None:
    port = free_port()
    node = make_node(dest_port=port, export={"max_attempts": 2, "backoff_seconds": 0.1,
                                             "backoff_max_seconds": 0.2})
    files = small_series(tmp_path / "src")
    assert set(send_files(files, node.port)) == {0}
    jobs = node.wait_jobs_final(series_uid_of(files[0]), timeout=90)
    assert jobs[0]["state"] == "failed", jobs
    assert "delivery failed after 2 attempt(s)" in jobs[0]["reason"], jobs[0]["reason"]
    pacs = TestStorageSCP(port=port).start()
    try:
        assert main(["resend", "--failed", "--config", str(node.config_path)]) == 0
        wait_for(lambda: node.jobs_of(series_uid_of(files[0]))[0]["state"] == "done",
                 timeout=60, what="the re-sent job done")
        n = jobs[0]["n_derived"]
        assert received_by(pacs, jobs[0]["derived_series_uid"]) == (n, n)
        delivered(1, n)
        fault_survived("destination down past max_attempts", "failed with reason; "
                       "`rtfsyn resend --failed` delivered it")
    finally:
        pacs.stop()


def test_destination_refuses_some_instances(make_node: NodeFactory, tmp_path: Path) -> None:
    refused: set[str] = set()

    def status_for(ds: Any) -> int:
        if int(ds.InstanceNumber) % 3 == 0:
            refused.add(str(ds.SOPInstanceUID))
            return 0xA700
        return 0x0000
    pacs = TestStorageSCP(status_for=status_for).start()
    try:
        node = make_node(dest_port=pacs.port, export={"max_attempts": 2,
                                                      "backoff_seconds": 0.1})
        files = small_series(tmp_path / "src")
        assert set(send_files(files, node.port)) == {0}
        jobs = node.wait_jobs_final(series_uid_of(files[0]), timeout=90)
        assert jobs[0]["state"] == "failed" and "0xA700" in jobs[0]["reason"], jobs
        with node.node.log.session() as s:
            rows = list(s.scalars(select(db.DeliveryInstance)
                                  .join(db.Delivery,
                                        db.DeliveryInstance.delivery_id == db.Delivery.id)
                                  .where(db.Delivery.job_id == jobs[0]["id"])))
        codes = {r.sop_instance_uid: r.status_code for r in rows}
        assert {u for u, c in codes.items() if c == 0xA700} == refused
        assert all(c == 0 for u, c in codes.items() if u not in refused)
        assert len(codes) == jobs[0]["n_derived"]
        assert {d["status"] for d in _deliveries(node, jobs[0]["id"])} == {"partial"}
        fault_survived("destination refuses some instances",
                       f"{len(refused)} of {len(codes)} recorded 0xA700 per instance")
    finally:
        pacs.stop()


def _spool_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.dcm"))}


def test_disk_above_watermark_refuses_new_associations(make_node: NodeFactory,
                                                       tmp_path: Path, pacs: TestStorageSCP
                                                       ) -> None:
    data_dir = tmp_path / "shared-var"
    first = make_node(dest_port=pacs.port, node={"data_dir": str(data_dir)})
    files = small_series(tmp_path / "src")
    assert set(send_files(files, first.port)) == {0}
    first.wait_jobs_final(series_uid_of(files[0]))
    before = _spool_digest(data_dir / "spool")
    report_before = first.status()
    first.stop()
    short = make_node(dest_port=pacs.port, node={"data_dir": str(data_dir),
                                                 "disk_watermark_percent": 1})
    with pytest.raises(ConnectionRefusedError):
        send_files(small_series(tmp_path / "more"), short.port)
    assert not echo_ok(short.port), "every new association is refused above the watermark"
    rejected = wait_for(lambda: [a for a in short.status()["associations"]["recent"]
                                 if a["state"] == "rejected"], what="the refusal recorded")
    assert "watermark" in rejected[0]["reason"], rejected
    assert _spool_digest(data_dir / "spool") == before, "existing data must stay intact"
    assert short.status()["jobs"] == report_before["jobs"]
    fault_survived("disk above the watermark (1 %)",
                   f"association rejected: {rejected[0]['reason']}"[:90])


def test_disk_short_during_an_association_answers_out_of_resources(
        make_node: NodeFactory, tmp_path: Path, pacs: TestStorageSCP) -> None:
    used = {"percent": 10.0}
    guard = DiskGuard(tmp_path, 80.0, cache_seconds=0.0,
                      usage=lambda _p: (100 << 30, int(used["percent"]) << 30,
                                        (100 - int(used["percent"])) << 30))  # GiB
    node = make_node(dest_port=pacs.port, disk=guard)
    files = small_series(tmp_path / "src")
    ae = AE(ae_title="SCU")
    from pynetdicom.sop_class import MRImageStorage

    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(f).Status) for f in files[:4]]
    used["percent"] = 95.0
    statuses += [int(assoc.send_c_store(f).Status) for f in files[4:]]
    assoc.release()
    assert statuses == [0] * 4 + [0xA700] * (len(files) - 4)
    used["percent"] = 10.0
    assert set(send_files(files, node.port)) == {0}  # the sender retries later: all stored
    # The first four slices alone may have completed first and been refused (too few slices
    # for a volume); the re-sent, complete series is processed.
    uid = series_uid_of(files[0])
    wait_for(lambda: any(j["state"] == "done" for j in node.jobs_of(uid)), timeout=120,
             what="the complete series processed")
    assert node.series(series_uid_of(files[0]))["n_instances"] == len(files)
    fault_survived("disk short during an association", "C-STORE 0xA700; re-send processed")


def test_aborted_association_triggers_nothing(make_node: NodeFactory, tmp_path: Path,
                                              pacs: TestStorageSCP) -> None:
    node = make_node(dest_port=pacs.port)
    files = small_series(tmp_path / "src")
    assert set(send_files(files[:5], node.port, abort=True)) == {0}
    uid = series_uid_of(files[0])
    series = node.wait_series(uid, {"partial"})
    assert "aborted" in series["reason"] and node.jobs_of(uid) == []
    assert set(send_files(files, node.port)) == {0}  # the clean re-send
    jobs = node.wait_jobs_final(uid)
    assert [j["state"] for j in jobs] == ["done"]
    assert node.series(uid)["n_instances"] == len(files)
    fault_survived("aborted association", "series partial, nothing triggered; clean re-send "
                                          "processed once")


def test_peer_that_stalls_mid_transfer_is_timed_out(make_node: NodeFactory, tmp_path: Path,
                                                    pacs: TestStorageSCP) -> None:
    # after its A-ABORT the node waits up to ARTIM for the peer to close (PS3.8 Sta13), and
    # a connection that never sends its A-ASSOCIATE-RQ is closed at ARTIM: 5 s, not 30
    node = make_node(dest_port=pacs.port, node={"network_timeout_seconds": 2.0,
                                                "artim_timeout_seconds": 5.0})
    stalled = raw_connect(node.port)
    silent = raw_connect(node.port)  # connects and never says anything
    try:
        stalled.sendall(associate_rq_pdu())
        assert read_pdu(stalled)[0] == 0x02, "the A-ASSOCIATE-RQ must be accepted"
        # 4 KiB announced (within the node's max PDU of 16382: a longer one is a protocol
        # error at once, not a stall): one PDV of 4092 bytes begun, 64 bytes sent in all
        stalled.sendall(b"\x04\x00\x00\x00\x10\x00" + b"\x00\x00\x0f\xfc\x01\x01"
                        + b"\x00" * 58)
        assert echo_ok(node.port), "others are served while a peer stalls"
        assert connection_closed(stalled, timeout=20.0, abort_counts=False)
        assert connection_closed(silent, timeout=40.0, abort_counts=False)
    finally:
        stalled.close()
        silent.close()
    raw = wait_for(lambda: [a for a in node.status()["associations"]["recent"]
                            if a["calling_aet"] == "RAWPEER" and a["state"] != "open"],
                   what="the stalled association recorded")
    assert raw[0]["state"] == "aborted" and "no data for 2 s" in raw[0]["reason"], raw
    fault_survived("peer stalls mid-transfer", f"timed out, association aborted "
                                               f"({raw[0]['reason']})"[:90])
    node.assert_serving(pacs, tmp_path)


def test_idle_association_is_aborted_after_the_network_timeout(make_node: NodeFactory, tmp_path: Path,
                                            pacs: TestStorageSCP) -> None:
    node = make_node(dest_port=pacs.port, node={"network_timeout_seconds": 3.0})
    ae = AE(ae_title="IDLE")
    ae.add_requested_context(Verification)
    idle = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
    assert idle.is_established
    assert echo_ok(node.port), "others are served while one association idles"
    wait_for(lambda: not idle.is_established, timeout=30, what="the idle association to end")
    assert idle.is_aborted, "the node must abort an association idle past the timeout"
    assert echo_ok(node.port)
    fault_survived("network timeout (idle association)", "aborted by the node after 3 s")


def test_too_many_associations_are_refused_then_served(make_node: NodeFactory, tmp_path: Path,
                                                       pacs: TestStorageSCP) -> None:
    node = make_node(dest_port=pacs.port, node={"max_associations": 2})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.port, ae_title="RTFSYN") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert not echo_ok(node.port, calling="THIRD"), "a third association must be refused"
        refused = wait_for(lambda: [a for a in node.status()["associations"]["recent"]
                                    if a["calling_aet"] == "THIRD" and a["state"] != "open"],
                           what="the refusal recorded")
        assert refused[0]["state"] == "rejected" and "too many" in refused[0]["reason"]
    finally:
        for assoc in held:
            assoc.release()
    wait_for(lambda: echo_ok(node.port), timeout=20, what="C-ECHO once the others ended")
    fault_survived("too many associations", f"rejected: {refused[0]['reason']}"[:90])
    node.assert_serving(pacs, tmp_path)
