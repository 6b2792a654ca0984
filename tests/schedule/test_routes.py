"""Route rules: regex match/exclude on tags, destinations (named and caller), loop guard."""
from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicom_node.dicom.identity import NODE_MANUFACTURER
from dicom_node.config import parse_config
from dicom_node.store.db import SeriesState
from dicom_node.schedule.routes import attribute_text, loop_guard, plan_routes, route_matches


def _ds(**tags: Any) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SeriesDescription = "t1_mprage_sag"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _config(*routes: dict[str, Any], callers: dict | None = None) -> Any:
    return parse_config({
        "destinations": {"PACS": {"ae_title": "PACS", "host": "10.0.0.1", "port": 4242}},
        "callers": callers or {},
        "routes": [{"targets": ["T2"], "destination": "PACS", **r} for r in routes]})


def _plan(config: Any, ds: Dataset, caller: tuple = ("WS1", "10.0.0.9"),
          ours: frozenset = frozenset()) -> Any:
    return plan_routes(ds, config.routes, destinations=config.destinations,
                       callers=config.callers, caller=caller, is_ours=lambda uid: uid in ours)


def test_attribute_text_joins_multiple_values_and_skips_missing() -> None:
    ds = _ds()
    assert attribute_text(ds, "ImageType") == "ORIGINAL\\PRIMARY\\M"
    assert attribute_text(ds, "Modality") == "MR"
    assert attribute_text(ds, "ProtocolName") is None


@pytest.mark.parametrize("route, selected", [
    ({"match": {"Modality": "MR"}}, True),
    ({"match": {"Modality": "^CT$"}}, False),
    ({"match": {"SeriesDescription": "MPRAGE"}}, False),  # case-sensitive by default
    ({"match": {"SeriesDescription": "(?i)MPRAGE"}}, True),
    ({"match": {"Modality": "MR", "SeriesDescription": "t2"}}, False),  # every regex must match
    ({"match": {"ProtocolName": ".*"}}, False),  # a missing attribute fails match
    ({"match": {"Modality": "MR"}, "exclude": {"ImageType": "PRIMARY"}}, False),
    ({"match": {"Modality": "MR"}, "exclude": {"ProtocolName": ".*"}}, True),  # missing: no exclude
    ({}, True),  # no match rules: everything
])
def test_route_matching(route: dict, selected: bool) -> None:
    assert route_matches(_config(route).routes[0], _ds()) is selected


def test_every_matching_route_contributes_targets_once() -> None:
    config = _config({"name": "a", "match": {"Modality": "MR"}, "targets": ["T2", "FLAIR"]},
                     {"name": "b", "match": {"Modality": "MR"}, "targets": ["T2", "PD"]},
                     {"name": "c", "match": {"Modality": "CT"}, "targets": ["T1"]})
    decision = _plan(config, _ds())
    assert decision.state == SeriesState.ROUTED and decision.routes == ("a", "b")
    assert [(j.route, j.target) for j in decision.jobs] == [("a", "T2"), ("a", "FLAIR"),
                                                            ("b", "PD")]
    assert decision.jobs[0].dest_ae_title == "PACS" and decision.jobs[0].dest_port == 4242


def test_no_matching_route_ignores_the_series() -> None:
    decision = _plan(_config({"match": {"Modality": "CT"}}), _ds())
    assert decision.state == SeriesState.IGNORED and decision.reason == "no route matched"
    assert decision.jobs == ()


def test_caller_destination_uses_the_peer_address_and_configured_port() -> None:
    config = _config({"destination": "caller"}, callers={"WS1": {"port": 11113}})
    job = _plan(config, _ds()).jobs[0]
    assert (job.dest_ae_title, job.dest_host, job.dest_port) == ("WS1", "10.0.0.9", 11113)


def test_caller_without_a_port_gets_a_failed_job_with_the_fix_in_the_reason() -> None:
    decision = _plan(_config({"destination": "caller"}), _ds(), caller=("WS2", "10.0.0.8"))
    assert decision.failed == {0: "destination 'caller': no port configured for calling AE "
                                  "'WS2'; add [callers.WS2] port = ..."}


@pytest.mark.parametrize("tags, reason", [
    ({"SyntheticData": "YES"}, "loop guard: Synthetic Data (0008,001C) is YES"),
    ({"ImageType": ["DERIVED", "SECONDARY"], "ContributingEquipmentSequence":
      [Dataset()]}, "loop guard: a DERIVED image whose Contributing Equipment is this node"),
    ({"SeriesInstanceUID": "9.9.9"}, "loop guard: this node produced the series"),
])
def test_loop_guard_refuses_synthetic_and_own_series(tags: dict, reason: str) -> None:
    if "ContributingEquipmentSequence" in tags:
        tags["ContributingEquipmentSequence"][0].Manufacturer = NODE_MANUFACTURER
    ds = _ds(**tags)
    assert loop_guard(ds, is_ours=lambda uid: uid == "9.9.9").startswith(reason)
    decision = _plan(_config({"match": {"Modality": "MR"}}), ds, ours=frozenset({"9.9.9"}))
    assert decision.state == SeriesState.NOT_ELIGIBLE and decision.reason.startswith(reason)
    assert decision.jobs == ()


def test_loop_guard_lets_other_derived_series_through() -> None:
    item = Dataset()
    item.Manufacturer = "Another vendor"
    ds = _ds(ImageType=["DERIVED", "PRIMARY"], ContributingEquipmentSequence=[item],
             SyntheticData="NO")
    assert loop_guard(ds, is_ours=lambda uid: False) is None
