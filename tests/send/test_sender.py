"""Export: per-instance statuses, unreachable destinations, retries with back-off, the
maximum number of attempts and the admin re-send command."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from tests.helpers.node import (TestStorageSCP, fake_processor, free_port, node_settings,
                                send_files, wait_for, write_config)
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.store import db
from dicom_node.cli import main
from dicom_node.config import load_config
from dicom_node.store.db import DeliveryStatus, JobState
from dicom_node.send.sender import Endpoint, classify_status
from dicom_node.send.sender import send_files as export
from dicom_node.node import Node


@pytest.mark.parametrize("code, outcome", [(0x0000, "success"), (0xB000, "warning"),
                                           (0x0001, "warning"), (0xA700, "failure"),
                                           (0xC000, "failure"), (None, "failure")])
def test_status_classes(code: int | None, outcome: str) -> None:
    assert classify_status(code) == outcome


def test_send_series_in_one_association(pacs: TestStorageSCP, mr_series: list[Path]) -> None:
    outcome = export(mr_series, Endpoint("TESTPACS", "127.0.0.1", pacs.port),
                     calling_aet="RTFSYN")
    assert outcome.status == DeliveryStatus.OK and outcome.n_sent == len(mr_series)
    assert [code for _uid, code, _o in outcome.instances] == [0] * len(mr_series)
    assert pacs.count == len(mr_series) and set(pacs.calling_aets) == {"RTFSYN"}


def test_refused_instances_are_recorded_one_by_one(mr_series: list[Path]) -> None:
    refused, warned = (str(dcmread(f).SOPInstanceUID) for f in mr_series[:2])
    codes = {refused: 0xA700, warned: 0xB000}
    scp = TestStorageSCP(status_for=lambda ds: codes.get(str(ds.SOPInstanceUID), 0)).start()
    try:
        outcome = export(mr_series, Endpoint("TESTPACS", "127.0.0.1", scp.port),
                         calling_aet="RTFSYN")
    finally:
        scp.stop()
    assert outcome.status == DeliveryStatus.PARTIAL
    assert (outcome.n_sent, outcome.n_warning, outcome.n_failed) == (len(mr_series) - 1, 1, 1)
    assert (refused, 0xA700, "failure") in outcome.instances
    assert (warned, 0xB000, "warning") in outcome.instances
    assert "refused 1 of 5 instance(s) (status 0xA700)" in outcome.error


def test_unreachable_destination_fails_the_attempt(mr_series: list[Path]) -> None:
    outcome = export(mr_series, Endpoint("NOBODY", "127.0.0.1", free_port()),
                     calling_aet="RTFSYN", timeout=2)
    assert outcome.status == DeliveryStatus.FAILED and outcome.n_sent == 0
    assert "NOBODY@127.0.0.1" in outcome.error


class NodeWithLatePacs:
    """A node (fake processor) routing MR to a PACS port nobody listens on yet."""

    def __init__(self, tmp_path: Path, **export: Any) -> None:
        self.pacs_port = free_port()
        self.settings = node_settings(
            tmp_path, export=export,
            destinations={"PACS": {"ae_title": "TESTPACS", "host": "127.0.0.1",
                                   "port": self.pacs_port}},
            routes=[{"match": {"Modality": "MR"}, "targets": ["T2"], "destination": "PACS"}])
        self.config_path = write_config(self.settings, tmp_path / "node.toml")
        self.node = Node(load_config(self.config_path), processor=fake_processor()).start()
        self.pacs: TestStorageSCP | None = None

    def rows(self, model: Any) -> list[Any]:
        with self.node.log.session() as s:
            return list(s.scalars(select(model).order_by(model.id)))

    def job(self) -> Any:
        jobs = self.rows(db.Job)
        return jobs[0] if jobs else None

    def start_pacs(self) -> TestStorageSCP:
        self.pacs = TestStorageSCP(port=self.pacs_port).start()
        return self.pacs

    def close(self) -> None:
        self.node.stop(grace_seconds=1)
        if self.pacs is not None:
            self.pacs.stop()


@pytest.fixture
def late(tmp_path: Path) -> Iterator[NodeWithLatePacs]:
    setup = NodeWithLatePacs(tmp_path, max_attempts=20, backoff_seconds=0.2,
                             backoff_max_seconds=0.5)
    yield setup
    setup.close()


def test_delivery_retries_until_the_destination_comes_up(late: NodeWithLatePacs,
                                                         mr_series: list[Path]) -> None:
    send_files(mr_series, late.node.address[1])
    wait_for(lambda: any(d.status == DeliveryStatus.FAILED for d in late.rows(db.Delivery)),
             what="a failed delivery attempt")
    assert late.job().state in (JobState.WAITING, JobState.SENDING)
    assert "failed" in late.job().reason
    pacs = late.start_pacs()
    wait_for(lambda: late.job().state == JobState.DONE, what="job done")
    deliveries = late.rows(db.Delivery)
    assert deliveries[0].status == DeliveryStatus.FAILED
    assert deliveries[-1].status == DeliveryStatus.OK and deliveries[-1].n_sent == len(mr_series)
    assert [d.attempt for d in deliveries] == list(range(1, len(deliveries) + 1))
    assert pacs.count == len(mr_series)
    assert {str(ds.SeriesInstanceUID) for ds in pacs.datasets} == {late.job().derived_series_uid}
    assert all(ds.SyntheticData == "YES" for ds in pacs.datasets)


def test_max_attempts_fail_the_job_and_resend_delivers_it(tmp_path: Path,
                                                          mr_series: list[Path],
                                                          capsys: pytest.CaptureFixture) -> None:
    setup = NodeWithLatePacs(tmp_path, max_attempts=2, backoff_seconds=0.1,
                             backoff_max_seconds=0.1)
    try:
        send_files(mr_series, setup.node.address[1])
        wait_for(lambda: setup.job() is not None and setup.job().state == JobState.FAILED,
                 what="job failed")
        assert setup.job().reason.startswith("delivery failed after 2 attempt(s): association "
                                             "with TESTPACS@127.0.0.1")
        assert len(setup.rows(db.Delivery)) == 2
        pacs = setup.start_pacs()
        assert main(["resend", "--failed", "--config", str(setup.config_path)]) == 0
        assert f"job {setup.job().id}: sending" in capsys.readouterr().out
        wait_for(lambda: setup.job().state == JobState.DONE, what="re-sent job done")
        assert pacs.count == len(mr_series) and len(setup.rows(db.Delivery)) == 3
        assert main(["resend", "999", "--config", str(setup.config_path)]) == 2
        assert "no job with id 999" in capsys.readouterr().err
    finally:
        setup.close()


def test_tls_destination_with_mutual_authentication(tmp_path: Path,
                                                    mr_series: list[Path]) -> None:
    import ssl

    from tests.helpers.node import make_tls_material

    from dicom_node.config import TLSConfig
    from dicom_node.net.tls import TLSConfigError, client_context, server_context

    pki = make_tls_material(tmp_path / "pki")
    tls = TLSConfig(pki["server_cert"], pki["server_key"], pki["ca"],
                    require_client_certificate=True)
    scp = TestStorageSCP(ssl_context=server_context(tls)).start()
    try:
        # the node verifies the destination against the CA and presents its own certificate
        client = TLSConfig(pki["client_cert"], pki["client_key"], pki["ca"])
        outcome = export(mr_series, Endpoint("TESTPACS", "127.0.0.1", scp.port,
                                             client_context(client)), calling_aet="RTFSYN")
        assert outcome.status == DeliveryStatus.OK and scp.count == len(mr_series)
        untrusted = ssl.create_default_context()  # does not trust the test CA
        refused = export(mr_series, Endpoint("TESTPACS", "127.0.0.1", scp.port, untrusted),
                         calling_aet="RTFSYN", timeout=5)
        assert refused.status == DeliveryStatus.FAILED and scp.count == len(mr_series)
    finally:
        scp.stop()
    with pytest.raises(TLSConfigError, match="needs \\[node.tls\\] with ca_certificates"):
        client_context(None)
