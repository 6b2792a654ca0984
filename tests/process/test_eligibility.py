"""Eligibility on realistic vendor headers: every refusal class is decided before any
synthesis, recorded with its reason in the job log, and nothing reaches the destination;
an eligible series still goes through exactly once.

The node runs for real (storage SCP, job log, scheduler, the pipeline with a stub
synthesizer); the destination is a test storage SCP.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.store import db
from dicom_node.config import ConfigError
from dicom_node.process.eligibility import (HEADER_RULES, RULE_NAMES, VOLUME_RULES,
                                            EligibilityRules, check_header, check_volume)
from dicom_node.errors import RejectedSeries
from dicom_node.node import Node
from dicom_node.store.db import DeliveryStatus, JobState, SeriesState
from tests.helpers.clinical_headers import CASES, IMPOSSIBLE_VALUES, Case, write_case
from tests.helpers.node import (StubSynthesizer, TestStorageSCP, node_config, send_files,
                                wait_for)

REFUSED = {name: case for name, case in CASES.items() if case.rule}
ELIGIBLE = {name: case for name, case in CASES.items() if not case.rule}
HEADER_RULE_NAMES = {r.name for r in HEADER_RULES} | {"contrast"}


class Running:
    """One node with two routes (the second relaxes two rules for series described
    'relaxed') and its destination, shared by the tests of this module."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pacs = TestStorageSCP().start()
        self.config = node_config(
            folder, destinations={"PACS": {"ae_title": "TESTPACS", "host": "127.0.0.1",
                                           "port": self.pacs.port}},
            routes=[{"name": "mr", "match": {"Modality": "MR"},
                     "exclude": {"SeriesDescription": "relaxed"}, "targets": ["T2"],
                     "destination": "PACS"},
                    {"name": "relaxed", "match": {"SeriesDescription": "relaxed"},
                     "targets": ["T2"], "destination": "PACS",
                     "eligibility": {"disable": ["localizer"], "min_slices": 4}}])
        self.node = Node(self.config, synthesizer=StubSynthesizer())
        self.node.start()

    def stop(self) -> None:
        self.node.stop(grace_seconds=1)
        self.pacs.stop()

    def send(self, case: Case, name: str) -> tuple[str, str]:
        """Send a case's series; wait until the node settled it. (series UID, study UID)"""
        files = write_case(case, self.folder / name.replace(" ", "_"))
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert all(s == 0 for s in send_files(files, self.node.address[1]))
        series_uid = str(header.SeriesInstanceUID)
        wait_for(lambda: self.settled(series_uid), timeout=60, what=f"{name} settled")
        return series_uid, str(header.StudyInstanceUID)

    def settled(self, series_uid: str) -> bool:
        series, jobs = self.rows(series_uid)
        if series is None or series.state in (SeriesState.RECEIVING, SeriesState.COMPLETE):
            return False
        final = {JobState.DONE, JobState.FAILED, JobState.REJECTED}
        return all(j.state in final for j in jobs)

    def rows(self, series_uid: str) -> tuple[Any, list[Any]]:
        with self.node.log.session() as s:
            series = s.scalar(select(db.Series).where(db.Series.series_uid == series_uid))
            jobs = list(s.scalars(select(db.Job).where(db.Job.series_uid == series_uid)))
        return series, jobs

    def deliveries(self, jobs: list[Any]) -> list[Any]:
        with self.node.log.session() as s:
            return list(s.scalars(select(db.Delivery).where(
                db.Delivery.job_id.in_([j.id for j in jobs]))))

    def at_destination(self, study_uid: str) -> list[Any]:
        return [ds for ds in list(self.pacs.datasets) if ds.StudyInstanceUID == study_uid]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    node = Running(tmp_path_factory.mktemp("eligibility"))
    yield node
    node.stop()


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_reason_and_nothing_sent(running: Running, name: str) -> None:
    case = REFUSED[name]
    series_uid, study_uid = running.send(case, name)
    series, jobs = running.rows(series_uid)
    assert series.state == SeriesState.NOT_ELIGIBLE, (series.state, series.reason)
    assert f"not eligible ({case.rule})" in series.reason
    if case.rule in HEADER_RULE_NAMES:  # decided at routing: no job at all
        assert jobs == []
    else:  # decided after assembly, before synthesis
        assert [(j.state, j.processed_at) for j in jobs] == [(JobState.REJECTED, None)]
        assert f"not eligible ({case.rule})" in jobs[0].reason
    assert running.deliveries(jobs) == []
    assert running.at_destination(study_uid) == []
    assert "FACTORY" not in series.reason and "19700101" not in series.reason


@pytest.mark.parametrize("name", list(ELIGIBLE))
def test_eligible_series_is_delivered_exactly_once(running: Running, name: str) -> None:
    series_uid, study_uid = running.send(ELIGIBLE[name], name)
    series, jobs = running.rows(series_uid)
    assert series.state == SeriesState.ROUTED and series.reason is None
    assert [j.state for j in jobs] == [JobState.DONE]
    deliveries = running.deliveries(jobs)
    assert [d.status for d in deliveries] == [DeliveryStatus.OK]
    received = running.at_destination(study_uid)
    sop_uids = [str(ds.SOPInstanceUID) for ds in received]
    assert len(sop_uids) == len(set(sop_uids)) == deliveries[0].n_sent > 0
    assert {str(ds.SeriesInstanceUID) for ds in received} == {jobs[0].derived_series_uid}


def test_impossible_values_are_dropped_with_recorded_warnings(running: Running) -> None:
    series_uid, study_uid = running.send(IMPOSSIBLE_VALUES, "impossible values")
    series, jobs = running.rows(series_uid)
    warnings = json.loads(series.warnings)
    assert any("RepetitionTime" in w and "Found -5" in w for w in warnings), warnings
    assert any("EchoTime" in w and "Found 1e+09" in w for w in warnings), warnings
    assert any("FlipAngle" in w for w in warnings) and any("MagneticField" in w
                                                           for w in warnings)
    assert series.source_contrast == "T1w"
    [job] = jobs
    assert job.state == JobState.DONE
    assert not any(text in job.prompt for text in ("-5", "1e+09", "1000000000", "720"))
    assert len(running.at_destination(study_uid)) > 0


def test_route_overrides_let_a_series_through(running: Running) -> None:
    """The 'relaxed' route switches the localizer rule off and needs 4 slices only."""
    localizer = CASES["Philips survey"]
    relaxed = Case(localizer.base, {**localizer.changes, "SeriesDescription": "Survey relaxed"})
    _series, study_uid = running.send(relaxed, "relaxed survey")
    assert running.at_destination(study_uid)
    few = CASES["too few slices"]
    relaxed_few = Case(few.base, {"SeriesDescription": "Ax T2 relaxed"}, volume=few.volume,
                       spacing=few.spacing)
    series_uid, _study = running.send(relaxed_few, "relaxed few slices")
    assert [j.state for j in running.rows(series_uid)[1]] == [JobState.DONE]


# -- the rule table itself (no node) ----------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, c in REFUSED.items() if c.rule in HEADER_RULE_NAMES])
def test_header_rule_table(tmp_path: Path, name: str) -> None:
    case = REFUSED[name]
    [first, *_] = write_case(case, tmp_path)
    verdict = check_header(pydicom.dcmread(first, stop_before_pixels=True))
    assert verdict.refusal is not None and verdict.refusal.startswith(
        f"not eligible ({case.rule}):")


def test_a_disabled_rule_hands_over_to_the_next(tmp_path: Path) -> None:
    """An ADC map is refused as derived; with 'derived' off, as diffusion."""
    [first, *_] = write_case(CASES["Siemens ADC map"], tmp_path)
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    assert "(derived)" in check_header(ds).refusal
    assert "(diffusion)" in check_header(ds, EligibilityRules(
        disabled=frozenset({"derived"}))).refusal


@pytest.mark.parametrize("name", [n for n, c in REFUSED.items()
                                  if c.rule in {r.name for r in VOLUME_RULES}])
def test_volume_rule_table(name: str) -> None:
    case = REFUSED[name]
    with pytest.raises(RejectedSeries, match=rf"not eligible \({case.rule}\)"):
        check_volume(case.volume(), case.spacing)


def test_synthetic_input_is_refused(tmp_path: Path) -> None:
    """Synthetic Data YES from another vendor's AI (the node's own loop guard aside)."""
    case = Case(CASES["GE T2 FRFSE"].base, {"SyntheticData": "YES"})
    [first, *_] = write_case(case, tmp_path)
    refusal = check_header(pydicom.dcmread(first, stop_before_pixels=True)).refusal
    assert refusal == "not eligible (synthetic): Synthetic Data (0008,001C) is YES"


def test_every_rule_has_a_realistic_case() -> None:
    covered = {c.rule for c in CASES.values() if c.rule} | {"synthetic"}  # see the test above
    assert covered == set(RULE_NAMES)


@pytest.mark.parametrize("raw, message", [
    ({"disable": ["nonsense"]}, "eligibility.disable must be a list of rule names"),
    ({"min_slices": 0}, "eligibility.min_slices must be an integer >= 1"),
    ({"min_coverage_mm": -1}, "eligibility.min_coverage_mm must be a finite number >= 0"),
    ({"body_parts": []}, "eligibility.body_parts must be a non-empty list"),
    ({"min_slice": 3}, "unknown key"),
])
def test_route_eligibility_is_validated(tmp_path: Path, raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        node_config(tmp_path, destinations={"P": {"ae_title": "P", "host": "127.0.0.1",
                                                  "port": 104}},
                    routes=[{"targets": ["T2"], "destination": "P", "eligibility": raw}])
