"""Orthanc as the PACS: auto-routing by the deployed Lua rule, derived series back in Orthanc.

Flow: dcmtk ``storescu`` stores a tiny T1 series into Orthanc; after
``StableAge`` Orthanc's ``OnStableSeries`` (deploy/orthanc/autoroute.lua)
sends it to the node; the node synthesizes T2 and sends the derived series
back to Orthanc. Everything is checked through Orthanc's REST API.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.e2e.data import SOURCE_DESCRIPTION, write_t1_series
from tests.helpers.harness import (STORESCU_BIN, NodeProcess, OrthancServer, require, run_storescu,
                                   wait_for_jobs, wait_until)

pytestmark = [pytest.mark.external, pytest.mark.timeout(300)]


@dataclass
class Routed:
    """What the module fixture did: servers, source series, derived series in Orthanc."""

    orthanc: OrthancServer
    node: NodeProcess
    source_files: list[Path]
    source_study_uid: str
    source_series_id: str   # Orthanc identifiers
    derived_series_id: str


def _series_of_study(orthanc: OrthancServer, study_uid: str) -> list[dict[str, Any]]:
    """Orthanc's expanded series of the study with this Study Instance UID."""
    for study in orthanc.get("/studies?expand"):
        if study["MainDicomTags"].get("StudyInstanceUID") == study_uid:
            return [orthanc.get(f"/series/{sid}") for sid in study["Series"]]
    return []


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory, orthanc_factory, node_factory,
           node_port: int) -> Routed:
    """Run the whole Orthanc → node → Orthanc round trip once for the module."""
    require(STORESCU_BIN)
    orthanc = orthanc_factory(node_ae="RTFSYN", node_port=node_port)
    node = node_factory(port=node_port,
                        destinations={"PACS": (orthanc.ae_title, orthanc.dicom_port)},
                        targets=["T2"], destination="PACS")
    files = write_t1_series(tmp_path_factory.mktemp("source"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    run_storescu(files, orthanc.dicom_port, orthanc.ae_title)

    jobs = wait_for_jobs(node, timeout_s=180, alive=orthanc.process.exited)
    assert [job["state"] for job in jobs] == ["done"], jobs
    series = _series_of_study(orthanc, study_uid)
    source = [s for s in series
              if s["MainDicomTags"].get("SeriesDescription") == SOURCE_DESCRIPTION]
    derived = [s for s in series if s not in source]
    assert len(source) == 1 and len(derived) == 1, [s["MainDicomTags"] for s in series]
    return Routed(orthanc, node, files, study_uid, source[0]["ID"], derived[0]["ID"])


def test_derived_series_is_stored_in_the_source_study(routed: Routed) -> None:
    derived = routed.orthanc.get(f"/series/{routed.derived_series_id}")
    source = routed.orthanc.get(f"/series/{routed.source_series_id}")
    assert derived["ParentStudy"] == source["ParentStudy"]
    assert derived["MainDicomTags"]["Modality"] == "MR"
    uid = "SeriesInstanceUID"
    assert derived["MainDicomTags"][uid] != source["MainDicomTags"][uid]


def test_derived_series_has_one_instance_per_source_slice(routed: Routed) -> None:
    derived = routed.orthanc.get(f"/series/{routed.derived_series_id}")
    assert len(derived["Instances"]) == len(routed.source_files)


def test_every_derived_instance_is_marked_synthetic(routed: Routed) -> None:
    derived = routed.orthanc.get(f"/series/{routed.derived_series_id}")
    for instance_id in derived["Instances"]:
        tags = routed.orthanc.get(f"/instances/{instance_id}/tags?simplify")
        assert tags["SyntheticData"] == "YES", instance_id
        assert tags["ImageType"].split("\\")[0] == "DERIVED", instance_id
        assert tags["StudyInstanceUID"] == routed.source_study_uid


def test_orthanc_store_job_to_the_node_succeeded(routed: Routed) -> None:
    jobs = [job for job in routed.orthanc.get("/jobs?expand")
            if job["Type"] == "DicomModalityStore"]
    assert jobs, "Orthanc ran no store job: the Lua rule did not route the series"
    assert all(job["State"] == "Success" for job in jobs), jobs
    assert {job["Content"]["RemoteAet"] for job in jobs} == {"RTFSYN"}
    assert sum(job["Content"]["InstancesCount"] for job in jobs) == len(routed.source_files)


def _lua_decision(orthanc: OrthancServer, series_id: str) -> str:
    """The autoroute rule's log line about ``series_id`` (waits until the series is stable)."""
    assert orthanc.process is not None
    return wait_until(
        lambda: next((ln for ln in orthanc.process.log_tail(50000).splitlines()
                      if "rtfsyn autoroute" in ln and series_id in ln), None),
        timeout_s=30, what=f"the Lua decision on series {series_id}")


def test_derived_series_is_not_routed_back_to_the_node(routed: Routed) -> None:
    """The Lua loop guard: the node's series becomes stable and is skipped."""
    line = _lua_decision(routed.orthanc, routed.derived_series_id)
    assert re.search(r"not routed: (made by the RTFSyn node|Synthetic Data is YES)", line)


def test_synthetic_series_from_elsewhere_is_not_routed(routed: Routed,
                                                       tmp_path: Path) -> None:
    """Any series with Synthetic Data YES is skipped, whoever made it."""
    files = write_t1_series(tmp_path / "synthetic", seed=8)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SyntheticData = "YES"
        ds.SeriesDescription = "E2E synthetic from elsewhere"
        ds.save_as(path)
    run_storescu(files, routed.orthanc.dicom_port, routed.orthanc.ae_title)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    [series_id] = [s["ID"] for s in routed.orthanc.get("/series?expand")
                   if s["MainDicomTags"]["SeriesInstanceUID"] == uid]
    line = _lua_decision(routed.orthanc, series_id)
    assert "not routed: Synthetic Data is YES" in line


def test_node_job_log_shows_one_done_job(routed: Routed) -> None:
    jobs = routed.node.status()["jobs"]
    assert [(j["state"], j["target"], j["destination"]) for j in jobs] == [("done", "T2", "PACS")]
