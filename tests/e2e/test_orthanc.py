"""Orthanc as the PACS: auto-routing by the deployed Lua rule, derived series back in Orthanc.

Flow: dcmtk ``storescu`` stores a tiny T1 series into Orthanc; after
``StableAge`` Orthanc's ``OnStableSeries`` (deploy/orthanc/autoroute.lua)
sends it to the node; the node synthesizes T2 and sends the derived series
back to Orthanc. Everything is checked through Orthanc's REST API.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from e2e_data import write_t1_series
from e2e_harness import STORESCU_BIN, NodeProcess, OrthancServer, run_storescu, wait_until

pytestmark = [pytest.mark.external, pytest.mark.timeout(300)]


@dataclass
class Routed:
    """What the module fixture did: the servers, the source series and the derived one in Orthanc."""

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
    from conftest import require

    require(STORESCU_BIN)
    orthanc = orthanc_factory(node_ae="RTFSYN", node_port=node_port)
    node = node_factory(port=node_port, destinations={"PACS": (orthanc.ae_title, orthanc.dicom_port)},
                        targets=["T2"], destination="PACS")
    files = write_t1_series(tmp_path_factory.mktemp("source"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    run_storescu(files, orthanc.dicom_port, orthanc.ae_title)

    def derived_complete() -> tuple[str, str] | None:
        series = _series_of_study(orthanc, study_uid)
        source = [s for s in series if len(s["Instances"]) and s["ID"] and
                  s["MainDicomTags"].get("SeriesDescription") == "E2E T1 phantom"]
        others = [s for s in series if s not in source]
        if len(source) == 1 and others and len(others[0]["Instances"]) >= len(files):
            return source[0]["ID"], others[0]["ID"]
        return None

    def gave_up() -> str | None:
        return node.process.exited() or orthanc.process.exited()

    source_id, derived_id = wait_until(derived_complete, timeout_s=180, interval_s=0.5,
                                       what="derived series in Orthanc", alive=gave_up)
    return Routed(orthanc, node, files, study_uid, source_id, derived_id)


def test_derived_series_is_stored_in_the_source_study(routed: Routed) -> None:
    derived = routed.orthanc.get(f"/series/{routed.derived_series_id}")
    source = routed.orthanc.get(f"/series/{routed.source_series_id}")
    assert derived["ParentStudy"] == source["ParentStudy"]
    assert derived["MainDicomTags"]["Modality"] == "MR"
    assert derived["MainDicomTags"]["SeriesInstanceUID"] != source["MainDicomTags"]["SeriesInstanceUID"]


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


def test_derived_series_is_not_routed_back_to_the_node(routed: Routed) -> None:
    """The Lua loop guard: the synthetic series becomes stable and is skipped."""
    line = wait_until(
        lambda: next((ln for ln in routed.orthanc.process.log_tail(20000).splitlines()
                      if routed.derived_series_id in ln and "not routed" in ln), None),
        timeout_s=30, what="Lua decision on the derived series")
    assert "Synthetic Data is YES" in line


def test_node_job_log_shows_one_done_job(routed: Routed) -> None:
    status = wait_until(
        lambda: (lambda s: s if any(j["state"] == "done" for j in s["jobs"]) else None)(
            routed.node.status()),
        timeout_s=60, interval_s=1.0, what="job done in rtfsyn status")
    assert [(j["state"], j["target"], j["destination"]) for j in status["jobs"]] == [
        ("done", "T2", "PACS")]
