"""dcmtk as the workstation and the archive: echoscu, storescu "send to node", storescp receives.

Every derived instance must also pass dicom3tools' ``dciodvfy`` without an
``Error`` line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.e2e.data import dciodvfy_errors, write_t1_series
from tests.helpers.harness import (DCIODVFY_BIN, ECHOSCU_BIN, STORESCU_BIN, DcmtkStoreSCP,
                                   NodeProcess, require, run_echoscu, run_storescu, wait_for_jobs)

pytestmark = [pytest.mark.external, pytest.mark.timeout(300)]


@dataclass
class Sent:
    """The module's round trip: workstation → node → storescp."""

    node: NodeProcess
    storescp: DcmtkStoreSCP
    source_files: list[Path]
    derived_files: list[Path]


@pytest.fixture(scope="module")
def node(storescp: DcmtkStoreSCP, node_factory, node_port: int) -> NodeProcess:
    """The node, routing every MR series to the dcmtk storescp as T2."""
    return node_factory(port=node_port,
                        destinations={"ARCHIVE": (storescp.ae_title, storescp.port)},
                        targets=["T2"], destination="ARCHIVE")


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory, node: NodeProcess,
         storescp: DcmtkStoreSCP) -> Sent:
    """Send a tiny T1 series with dcmtk storescu and wait until the node's job has finished."""
    require(STORESCU_BIN)
    files = write_t1_series(tmp_path_factory.mktemp("source"))
    run_storescu(files, node.port, node.ae_title, calling_ae="WORKSTATION")
    jobs = wait_for_jobs(node, timeout_s=180, alive=storescp.process.exited)
    assert [job["state"] for job in jobs] == ["done"], jobs
    return Sent(node, storescp, files, storescp.received())


def test_echoscu_gets_an_answer_from_the_node(node: NodeProcess) -> None:
    require(ECHOSCU_BIN)
    done = run_echoscu(node.port, "RTFSYN", "ECHOSCU")
    assert done.returncode == 0, done.stdout + done.stderr


def test_echoscu_from_an_unknown_calling_ae_is_refused(node: NodeProcess) -> None:
    require(ECHOSCU_BIN)
    done = run_echoscu(node.port, "RTFSYN", "INTRUDER")
    assert done.returncode != 0
    assert "reject" in (done.stdout + done.stderr).lower()


def test_run_storescu_raises_when_a_store_is_not_answered_success(tmp_path: Path) -> None:
    """storescu exits 0 when every store is answered with a warning; the helper the tests
    send with raises."""
    require(STORESCU_BIN)
    from tests.helpers.dicom_factory import make_series
    from tests.helpers.node import TestStorageSCP

    files = make_series(tmp_path / "src")
    scp = TestStorageSCP(status_for=lambda ds: 0xB007).start()
    try:
        with pytest.raises(RuntimeError, match=f"{len(files)} Success response.*Found exit 0 and 0"):
            run_storescu(files, scp.port, scp.ae_title)
    finally:
        scp.stop()


def test_derived_series_arrives_at_storescp(sent: Sent) -> None:
    assert len(sent.derived_files) == len(sent.source_files)
    source = pydicom.dcmread(sent.source_files[0], stop_before_pixels=True)
    series_uids = set()
    for path in sent.derived_files:
        ds = pydicom.dcmread(path)
        series_uids.add(ds.SeriesInstanceUID)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.SyntheticData == "YES"
        assert ds.ImageType[0] == "DERIVED"
        pixels = ds.pixel_array
        assert pixels.shape == (source.Rows, source.Columns)
        assert np.isfinite(pixels.astype(np.float64)).all()
    assert len(series_uids) == 1
    assert series_uids != {source.SeriesInstanceUID}


def test_every_derived_instance_passes_dciodvfy(sent: Sent) -> None:
    require(DCIODVFY_BIN)
    assert sent.derived_files, "no derived instance arrived"
    report = {path.name: dciodvfy_errors(path) for path in sent.derived_files}
    assert {name: errors for name, errors in report.items() if errors} == {}
