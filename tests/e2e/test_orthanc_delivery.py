"""Orthanc as the destination PACS: what a PACS administrator checks after go-live.

* A route with two targets puts two derived series into the source's study, each with
  its own Series Number and Series Description.
* The PACS is down for longer than the 30 s after which earlier versions gave up (5
  attempts), then comes back inside the retry window: the job waits for it (visible in
  ``rtfsyn status``, with its attempts and next attempt), and the series is delivered
  once. The backoff is set small (2 s doubling to 8 s) so the test waits about 40 s.

The series is sent straight to the node with dcmtk's ``storescu`` (the workstation's
"send to node"); Orthanc is checked through its REST API.
"""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pydicom
import pytest

from tests.e2e.data import write_t1_series
from tests.helpers.harness import (ORTHANC_BIN, STORESCU_BIN, NodeProcess, OrthancServer,
                                  free_port, require, run_storescu, wait_for_jobs, wait_until)

pytestmark = [pytest.mark.external, pytest.mark.timeout(420)]

OLD_GIVE_UP_S = 30.0  # earlier versions: 5 attempts, 2-4-8-16 s apart, then failed
DOWN_FOR_S = 40.0
SMALL_BACKOFF = {"backoff_seconds": 2, "backoff_max_seconds": 8, "retry_window_hours": 0.25}


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    """A plain Orthanc (no routing rule): the destination of the node's results."""
    require(ORTHANC_BIN, STORESCU_BIN)
    server = OrthancServer(tmp_path / "orthanc", extra={"Name": "rtfsyn-pacs"})
    server.start()
    yield server
    server.stop()


def _derived_series(pacs: OrthancServer, study_uid: str) -> list[dict[str, Any]]:
    found = []
    for study in pacs.get("/studies?expand"):
        if study["MainDicomTags"].get("StudyInstanceUID") == study_uid:
            found += [pacs.get(f"/series/{sid}") for sid in study["Series"]]
    return found


def _send(node: NodeProcess, folder: Path) -> tuple[list[Path], pydicom.Dataset]:
    files = write_t1_series(folder)
    run_storescu(files, node.port, node.ae_title)
    return files, pydicom.dcmread(files[0], stop_before_pixels=True)


def test_two_targets_get_two_series_numbers(tmp_path: Path, pacs: OrthancServer,
                                            node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(port=free_port(), destinations={"PACS": (pacs.ae_title,
                                                                 pacs.dicom_port)},
                        targets=["T2", "FLAIR"], destination="PACS")
    files, source = _send(node, tmp_path / "source")
    jobs = wait_for_jobs(node, timeout_s=240, expected=2)
    assert sorted((j["target"], j["state"]) for j in jobs) == [("FLAIR", "done"),
                                                               ("T2", "done")]
    series = _derived_series(pacs, str(source.StudyInstanceUID))
    tags = sorted((s["MainDicomTags"]["SeriesNumber"], s["MainDicomTags"]["SeriesDescription"])
                  for s in series)
    number = int(source.SeriesNumber)
    assert [t[0] for t in tags] == [str(1000 + 100 * number + 3),   # T2: slot 3
                                    str(1000 + 100 * number + 5)]   # FLAIR: slot 5
    assert tags[0][1].startswith("SYN T2w (RTFSyn)") and tags[1][1].startswith("SYN FLAIR")
    assert all(len(s["Instances"]) == len(files) for s in series)


def _status_text(node: NodeProcess) -> str:
    args = [sys.executable, "-m", "dicom_node.cli", "status", "--config",
            str(node.config_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_pacs_down_longer_than_30_s_then_back_is_delivered_once(
        tmp_path: Path, pacs: OrthancServer, node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory(port=free_port(), destinations={"PACS": (pacs.ae_title,
                                                                 pacs.dicom_port)},
                        targets=["T2"], destination="PACS", export=SMALL_BACKOFF)
    pacs.stop()  # a routine PACS restart, longer than the old 30 s give-up
    files, source = _send(node, tmp_path / "source")

    def first_failure() -> dict[str, Any] | None:
        report = node.status()
        return report if report["deliveries"] else None

    report = wait_until(first_failure, timeout_s=240, interval_s=1.0,
                        what="a first failed delivery")
    first = dt.datetime.fromisoformat(report["deliveries"][-1]["started_at"].rstrip("Z"))
    down_since = time.monotonic()
    while time.monotonic() - down_since < DOWN_FOR_S:
        [job] = node.status()["jobs"]
        assert job["state"] in ("waiting", "sending"), job  # never failed inside the window
        time.sleep(2.0)
    waiting = node.status()
    [job] = waiting["jobs"]
    assert job["state"] == "waiting" and job["send_attempts"] >= 6 and job["next_attempt_at"]
    text = _status_text(node)
    assert "waiting for destination" in text and "next attempt" in text
    shown = re.search(r"delivery attempts (\d+)", text)  # attempts visible in the text too
    assert shown and int(shown.group(1)) >= job["send_attempts"]

    pacs.start()  # back, within the window
    [job] = wait_for_jobs(node, timeout_s=120)
    report = node.status()
    deliveries = sorted(report["deliveries"], key=lambda d: d["attempt"])
    assert job["state"] == "done"
    assert [d["status"] for d in deliveries].count("ok") == 1  # delivered once
    assert deliveries[-1]["status"] == "ok" and len(deliveries) >= 7
    done_at = dt.datetime.fromisoformat(deliveries[-1]["ended_at"].rstrip("Z"))
    assert (done_at - first).total_seconds() > OLD_GIVE_UP_S
    [series] = _derived_series(pacs, str(source.StudyInstanceUID))
    assert len(series["Instances"]) == len(files) == job["n_derived"]
    assert pacs.count() == len(files)  # nothing stored twice
    print(f"\nPACS down {DOWN_FOR_S:.0f} s: {len(deliveries) - 1} failed attempts, delivered "
          f"{(done_at - first).total_seconds():.1f} s after the first failure; "
          f"{len(series['Instances'])} instances in Orthanc")
