"""Issue 3 must-show: a simulated T1 series sent by an SCU to the node is synthesized by
the tiny model and the derived series arrives at a test storage SCP with the source's
geometry, provenance tags and decodable pixels; ``rtfsyn status --json`` shows the job done;
unknown callers are refused; no patient data reaches the logs. Once in process, once
through the real ``rtfsyn serve`` subprocess stopped with SIGTERM."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.node import (NODE_AET, TestStorageSCP, node_settings, send_files, wait_for,
                                write_config)
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.dicom.identity import NODE_MANUFACTURER
from dicom_node.cli import main
from dicom_node.config import load_config
from dicom_node.node import Node
from dicom_node.tools.simseries import PatientInfo, write_series
from synthesis.protocol import preset

pytestmark = pytest.mark.slow
PATIENT = PatientInfo(name="E2E^SENTINEL", patient_id="E2E-ID-4711", birth_date="19800101")
PHI = ("E2E^SENTINEL", "E2E-ID-4711", "19800101")
SHAPE, SPACING = (24, 32, 32), (1.2, 1.0, 1.0)  # the node's working grid: output grid = input


def _t1_volume() -> np.ndarray:
    """(z, y, x) float32: a head-like ellipsoid with a few tissue-like blobs."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    zc, yc, xc = (np.array(SHAPE, dtype=np.float32) - 1) / 2
    head = ((z - zc) / 11) ** 2 + ((y - yc) / 14) ** 2 + ((x - xc) / 13) ** 2 < 1
    vol = np.where(head, 300.0, 5.0).astype(np.float32)
    for (cz, cy, cx), r, value in (((12, 16, 16), 6, 600.0), ((9, 10, 20), 3, 150.0),
                                   ((15, 21, 11), 4, 450.0)):
        vol[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < r * r] = value
    return vol


@pytest.fixture
def t1_series(tmp_path: Path) -> list[Path]:
    return write_series(_t1_volume(), SPACING, preset("T1", field_t=3.0), tmp_path / "t1",
                        series_description="T1 MPRAGE E2E", series_number=3, patient=PATIENT,
                        origin_mm=(-16.0, -20.0, 30.0), seed=7)


def _settings(tmp_path: Path, pacs: TestStorageSCP, checkpoint: Path) -> dict[str, Any]:
    return node_settings(
        tmp_path, node={"allowed_calling_aets": ["MODALITY"], "stable_seconds": 0.5},
        model={"checkpoint": str(checkpoint), "device": "cpu"},
        destinations={"PACS": {"ae_title": "TESTPACS", "host": "127.0.0.1",
                               "port": pacs.port}},
        routes=[{"name": "t1-to-t2", "match": {"Modality": "MR", "SeriesDescription": "(?i)t1"},
                 "targets": ["T2"], "destination": "PACS"}])


def _check_derived(received: list[Any], sources: list[Path]) -> None:
    """Geometry equal to the source's, provenance present, pixels decodable."""
    source = sorted((dcmread(f) for f in sources), key=lambda d: float(d.ImagePositionPatient[2]))
    derived = sorted(received, key=lambda d: float(d.ImagePositionPatient[2]))
    assert len(derived) == len(source) == SHAPE[0]
    assert len({str(d.SeriesInstanceUID) for d in derived}) == 1
    assert str(derived[0].SeriesInstanceUID) != str(source[0].SeriesInstanceUID)
    for d, s in zip(derived, source):
        assert d.StudyInstanceUID == s.StudyInstanceUID
        assert d.FrameOfReferenceUID == s.FrameOfReferenceUID
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient],
                                   [float(v) for v in s.ImagePositionPatient], atol=1e-3)
        np.testing.assert_allclose([float(v) for v in d.ImageOrientationPatient],
                                   [float(v) for v in s.ImageOrientationPatient], atol=1e-6)
        np.testing.assert_allclose([float(v) for v in d.PixelSpacing],
                                   [float(v) for v in s.PixelSpacing], atol=1e-6)
        assert (d.Rows, d.Columns) == (s.Rows, s.Columns)
        assert d.SyntheticData == "YES" and d.ImageType[0] == "DERIVED"
        assert d.DerivationDescription
        assert any(item.Manufacturer == NODE_MANUFACTURER
                   for item in d.ContributingEquipmentSequence)
        referenced = {str(i.ReferencedSOPInstanceUID) for i in d.SourceImageSequence}
        assert str(s.SOPInstanceUID) in referenced
        pixels = d.pixel_array
        assert pixels.shape == (SHAPE[1], SHAPE[2]) and np.isfinite(pixels).all()
    assert np.ptp(np.stack([d.pixel_array for d in derived])) > 0


def _job_report(config_path: Path, capsys: pytest.CaptureFixture) -> dict[str, Any]:
    assert main(["status", "--config", str(config_path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_node_in_process_synthesizes_and_delivers(
        tmp_path: Path, pacs: TestStorageSCP, t1_series: list[Path], tiny_synthesizer: Any,
        tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dicom_node")
    config_path = write_config(_settings(tmp_path, pacs, tiny_checkpoint), tmp_path / "n.toml")
    with Node(load_config(config_path), synthesizer=tiny_synthesizer) as node:
        port = node.address[1]
        with pytest.raises(ConnectionRefusedError):
            send_files(t1_series, port, calling="INTRUDER")
        assert send_files(t1_series, port, calling="MODALITY") == [0] * len(t1_series)
        wait_for(lambda: pacs.count >= SHAPE[0], timeout=300, what="derived series at PACS")
        wait_for(lambda: _job_report(config_path, capsys)["jobs"][0]["state"] == "done",
                 timeout=60, what="job done")
    _check_derived(pacs.datasets, t1_series)
    report = _job_report(config_path, capsys)
    job = report["jobs"][0]
    assert (job["state"], job["target"], job["destination"]) == ("done", "T2", "PACS")
    assert job["derived_series_uid"] == str(pacs.datasets[0].SeriesInstanceUID)
    assert set(job["stage_seconds"]) >= {"assembly", "synthesis", "encoding"}
    assert report["associations"]["by_state"] == {"rejected": 1, "released": 1}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [p for p in PHI if p in logged or p in json.dumps(report)]


def test_rtfsyn_serve_subprocess_end_to_end(tmp_path: Path, pacs: TestStorageSCP,
                                            t1_series: list[Path], tiny_checkpoint: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    config_path = write_config(_settings(tmp_path, pacs, tiny_checkpoint), tmp_path / "n.toml")
    port = load_config(config_path).node.port
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "-v", "serve",
                                 "--config", str(config_path), "--grace", "2"],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: proc.poll() is not None or _echo(port), timeout=120,
                 interval=0.2, what="rtfsyn serve answering C-ECHO")
        assert proc.poll() is None, log_path.read_text()[-3000:]
        with pytest.raises(ConnectionRefusedError):
            send_files(t1_series[:1], port, calling="INTRUDER")
        send_files(t1_series, port, calling="MODALITY")
        wait_for(lambda: proc.poll() is not None or pacs.count >= SHAPE[0], timeout=300,
                 interval=0.2, what="derived series at PACS")
        assert pacs.count == SHAPE[0], log_path.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]
    _check_derived(pacs.datasets, t1_series)
    report = _job_report(config_path, capsys)
    assert [(j["state"], j["target"], j["destination"]) for j in report["jobs"]] == \
        [("done", "T2", "PACS")]
    assert report["associations"]["by_state"]["rejected"] == 1
    logged = log_path.read_text(errors="replace")
    assert "listening on 127.0.0.1:" in logged and "stopped" in logged
    assert not [p for p in PHI if p in logged]


def _echo(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0
