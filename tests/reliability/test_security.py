"""Security: unknown calling AE and wrong called AE refused (and recorded); TLS with a CA the
test generates (server certificate; client certificates optional or required); and no patient
name, ID or birth date in any log, in ``rtfsyn status`` or in the job log of a whole run."""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.helpers.node import TestStorageSCP, make_tls_material, send_files, wait_for
from tests.reliability.figures import fault_survived, input_tried
from tests.reliability.helpers import (NodeFactory, connection_closed, echo_ok, raw_connect,
                                       series_uid_of, small_series)
from tests.reliability.process import ProcNode

SENTINELS = {"PatientName": "Sentinel^Patient^Zyx", "PatientID": "PID-SENTINEL-913",
             "PatientBirthDate": "19230407"}
# How the values could appear in text: as given, DICOM-formatted, or split.
NEEDLES = ("Sentinel", "Zyx", "PID-SENTINEL-913", "SENTINEL-913", "19230407", "1923-04-07")


def _recent(node: Any) -> list[dict[str, Any]]:
    return node.status()["associations"]["recent"]


def test_unknown_calling_ae_is_refused(make_node: NodeFactory, pacs: TestStorageSCP,
                                       tmp_path: Path) -> None:
    node = make_node(dest_port=pacs.port, node={"allowed_calling_aets": ["SCU", "ECHOSCU"]})
    with pytest.raises(ConnectionRefusedError):
        send_files(small_series(tmp_path / "src"), node.port, calling="INTRUDER")
    assert not echo_ok(node.port, calling="INTRUDER")
    refused = wait_for(lambda: [a for a in _recent(node) if a["calling_aet"] == "INTRUDER"
                                and a["state"] != "open"], what="the refusal recorded")
    assert all(a["state"] == "rejected" for a in refused)
    assert "calling AE title not recognized" in refused[0]["reason"], refused[0]
    assert node.status()["instances"]["total"] == 0
    assert echo_ok(node.port, calling="ECHOSCU")
    input_tried("unknown calling AE", f"A-ASSOCIATE-RJ: {refused[0]['reason']}"[:90])
    node.assert_serving(pacs, tmp_path)


def test_wrong_called_ae_is_refused(make_node: NodeFactory, pacs: TestStorageSCP,
                                    tmp_path: Path) -> None:
    node = make_node(dest_port=pacs.port)
    with pytest.raises(ConnectionRefusedError):
        send_files(small_series(tmp_path / "src"), node.port, called="NOTTHENODE")
    refused = wait_for(lambda: [a for a in _recent(node) if a["called_aet"] == "NOTTHENODE"
                                and a["state"] != "open"], what="the refusal recorded")
    assert refused[0]["state"] == "rejected"
    assert "called AE title not recognized" in refused[0]["reason"], refused[0]
    input_tried("wrong called AE", f"A-ASSOCIATE-RJ: {refused[0]['reason']}"[:90])
    node.assert_serving(pacs, tmp_path)


def _client_tls(tls: dict[str, Path], with_cert: bool) -> tuple[ssl.SSLContext, str]:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(tls["client_cert"]), str(tls["client_key"]))
    return ctx, "localhost"


def _tls_node(make_node: NodeFactory, pacs: TestStorageSCP, tls: dict[str, Path],
              require: bool) -> Any:
    return make_node(dest_port=pacs.port, node={"tls": {
        "certificate": str(tls["server_cert"]), "private_key": str(tls["server_key"]),
        "ca_certificates": str(tls["ca"]), "require_client_certificate": require}})


def test_tls_server_certificate(make_node: NodeFactory, pacs: TestStorageSCP,
                                tmp_path: Path) -> None:
    tls = make_tls_material(tmp_path / "pki")
    node = _tls_node(make_node, pacs, tls, require=False)
    assert echo_ok(node.port, tls_args=_client_tls(tls, with_cert=False))
    files = small_series(tmp_path / "src")
    assert set(send_files(files, node.port, tls_args=_client_tls(tls, False))) == {0}
    jobs = node.wait_jobs_final(series_uid_of(files[0]))
    assert jobs[0]["state"] == "done"
    assert not echo_ok(node.port, timeout=3.0), "plain DICOM must not reach a TLS node"
    wrong_ca = make_tls_material(tmp_path / "other-pki")  # a client trusting another CA
    assert not echo_ok(node.port, tls_args=_client_tls({**tls, "ca": wrong_ca["ca"]}, False)), \
        "a client must not trust a node whose certificate another CA signed"
    assert echo_ok(node.port, tls_args=_client_tls(tls, with_cert=True))
    input_tried("TLS: plain peer / untrusted server CA", "refused; verified TLS peers served")


def test_tls_client_certificate_required(make_node: NodeFactory, pacs: TestStorageSCP,
                                         tmp_path: Path) -> None:
    tls = make_tls_material(tmp_path / "pki")
    node = _tls_node(make_node, pacs, tls, require=True)
    refused = False
    try:
        refused = not echo_ok(node.port, tls_args=_client_tls(tls, with_cert=False),
                              timeout=5.0)
    except (ssl.SSLError, OSError):
        refused = True
    assert refused, "a client without a certificate must be refused"
    assert echo_ok(node.port, tls_args=_client_tls(tls, with_cert=True))
    files = small_series(tmp_path / "src")
    assert set(send_files(files, node.port, tls_args=_client_tls(tls, True))) == {0}
    assert node.wait_jobs_final(series_uid_of(files[0]))[0]["state"] == "done"
    input_tried("TLS: client without certificate (required)", "handshake refused")


def _sentinel(ds: Dataset, k: int) -> None:
    for key, value in SENTINELS.items():
        setattr(ds, key, value)


def test_no_patient_data_in_logs_status_or_job_log(tmp_path: Path, tiny_checkpoint: Path,
                                                   pacs: TestStorageSCP) -> None:
    node = ProcNode(tmp_path / "node", tiny_checkpoint, dest_port=pacs.port, verbose=True,
                    node={"allowed_calling_aets": ["SCU", "ECHOSCU"]},
                    export={"max_attempts": 1})
    node.start()
    try:
        good = small_series(tmp_path / "good", mutate=_sentinel)
        bad = small_series(tmp_path / "bad", n_slices=1, mutate=_sentinel)  # rejected
        assert set(send_files(good + bad, node.port)) == {0}
        with pytest.raises(ConnectionRefusedError):  # a refused association, too
            send_files(good[:1], node.port, calling="INTRUDER")
        jobs = node.wait_jobs_final(2)
        assert sorted(j["state"] for j in jobs) == ["done", "rejected"], jobs
        assert any(SENTINELS["PatientID"] == str(ds.PatientID) for ds in pacs.datasets), \
            "the derived series carries the patient (so the grep below is meaningful)"
        status_json, err_json = node.status_cli()
        texts = {"node log (stderr)": node.logs(), "status --json": status_json + err_json}
        data_dir = Path(node.settings["node"]["data_dir"])
        for path in data_dir.glob("joblog.sqlite*"):
            texts[path.name] = path.read_bytes().decode("latin-1")
    finally:
        node.stop()
    texts["node log after stop"] = node.logs()
    leaks = {where: [n for n in NEEDLES if n.lower() in text.lower()]
             for where, text in texts.items()}
    assert {k: v for k, v in leaks.items() if v} == {}, "patient data found"
    assert "job" in texts["node log (stderr)"].lower(), "the log must have been captured"
    fault_survived("patient data in logs / status / job log",
                   f"none in {len(texts)} texts ({sum(map(len, texts.values()))} chars)")


def test_tls_peer_silent_before_the_handshake_blocks_nobody(make_node: NodeFactory,
                                                            pacs: TestStorageSCP,
                                                            tmp_path: Path) -> None:
    tls = make_tls_material(tmp_path / "pki")
    node = make_node(dest_port=pacs.port, node={"network_timeout_seconds": 3.0, "tls": {
        "certificate": str(tls["server_cert"]), "private_key": str(tls["server_key"]),
        "ca_certificates": str(tls["ca"])}})
    silent = raw_connect(node.port)  # TCP connected, never starts the TLS handshake
    try:
        assert echo_ok(node.port, tls_args=_client_tls(tls, with_cert=False), timeout=10.0), \
            "a peer that never starts its TLS handshake must not block other peers"
        assert connection_closed(silent, timeout=30.0, abort_counts=False), \
            "the silent TLS peer must be dropped after the network timeout"
    finally:
        silent.close()
    fault_survived("TLS peer silent before the handshake", "others served; dropped on timeout")
