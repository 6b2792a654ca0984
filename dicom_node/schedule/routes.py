"""Route rules: which complete series are synthesized, into what, and sent where.

A route (``[[routes]]`` in ``node.toml``) selects a series when each ``match``
regex is found in its attribute (``re.search`` on the value as text,
case-sensitive unless the regex says ``(?i)``) and no ``exclude`` regex is.
Multi-valued attributes are matched as their values joined by backslashes
(``DERIVED\\SECONDARY``); a missing attribute fails ``match`` and never
triggers ``exclude``. Every matching route contributes its targets; a (target,
destination) pair is planned once, by the first route that names it.

Destination ``"caller"`` sends the result back to the AE that sent the series:
its address is the association's peer address (or ``[callers.<AE>] host``) and
its port comes from ``[callers.<AE>] port``; a caller without that entry gets a
job that fails with a reason saying what to configure.

Loop guard (before any route): never process Synthetic Data = YES, a DERIVED
image that this node's equipment contributed to, or a series UID that one of
our jobs produced.

Eligibility (after the match, per route, with the route's ``eligibility``
overrides): the header rules of :mod:`dicom_node.process.eligibility`. A
matching route whose rules refuse the series plans no job; when no route
plans a job because of a refusal, the series is ``not_eligible`` with the
reason.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.config import CALLER, Caller, Destination, Route
from dicom_node.dicom.identity import own_output_reason
from dicom_node.process.eligibility import EligibilityRules, HeaderVerdict, check_header
from dicom_node.send.destinations import caller_address
from dicom_node.store.db import SeriesState
from dicom_node.store.joblog import PlannedJob

__all__ = ["RouteDecision", "attribute_text", "route_matches", "loop_guard", "plan_routes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteDecision:
    """What routing decided for one series: jobs (maybe none) and the series' new state."""

    state: SeriesState
    reason: str | None = None
    jobs: tuple[PlannedJob, ...] = ()
    routes: tuple[str, ...] = field(default=())
    failed: Mapping[int, str] = field(default_factory=dict)  # job index -> reason
    source_contrast: str | None = None  # e.g. "T1w", when the header rules classified it
    warnings: tuple[str, ...] = ()  # impossible protocol values dropped (patient-free)


def attribute_text(ds: Dataset, keyword: str) -> str | None:
    """The attribute's value as matchable text; None when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "" or (isinstance(value, (list, MultiValue)) and not value):
        return None
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def route_matches(route: Route, ds: Dataset) -> bool:
    """True when every ``match`` regex finds its attribute and no ``exclude`` regex does."""
    for keyword, pattern in route.match:
        text = attribute_text(ds, keyword)
        if text is None or pattern.search(text) is None:
            return False
    for keyword, pattern in route.exclude:
        text = attribute_text(ds, keyword)
        if text is not None and pattern.search(text) is not None:
            return False
    return True


def loop_guard(ds: Dataset, *, is_ours: Callable[[str], bool]) -> str | None:
    """The reason this series must never be processed, or None: the node's own output
    (:func:`dicom_node.dicom.identity.own_output_reason`), or a series one of our jobs
    produced (``is_ours(series_uid)``)."""
    reason = own_output_reason(ds)
    if reason:
        return reason
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    if series_uid and is_ours(series_uid):
        return "loop guard: this node produced the series"
    return None


def plan_routes(ds: Dataset, routes: tuple[Route, ...], *,
                destinations: Mapping[str, Destination], callers: Mapping[str, Caller],
                caller: tuple[str | None, str | None],
                is_ours: Callable[[str], bool]) -> RouteDecision:
    """Decide what to do with a complete series whose header (one instance) is ``ds``.

    ``caller`` is (calling AE title, peer host) of the association that sent it.
    """
    reason = loop_guard(ds, is_ours=is_ours)
    if reason:
        return RouteDecision(SeriesState.NOT_ELIGIBLE, reason)
    jobs: list[PlannedJob] = []
    failed: dict[int, str] = {}
    applied: list[str] = []
    seen: set[tuple[str, str]] = set()
    verdicts: dict[EligibilityRules, HeaderVerdict] = {}
    refusals: list[tuple[str, str]] = []  # (route name, refusal)
    for route in routes:
        if not route_matches(route, ds):
            continue
        if route.eligibility not in verdicts:
            verdicts[route.eligibility] = check_header(ds, route.eligibility)
        verdict = verdicts[route.eligibility]
        if verdict.refusal:
            refusals.append((route.name, verdict.refusal))
            continue
        applied.append(route.name)
        for target in route.targets:
            if (target, route.destination) in seen:
                continue
            seen.add((target, route.destination))
            if route.destination == CALLER:
                host, port, error = caller_address(caller[0], caller[1], callers)
                ae_title = caller[0]
                if error:
                    failed[len(jobs)] = error
            else:
                dest = destinations[route.destination]
                ae_title, host, port = dest.ae_title, dest.host, dest.port
            jobs.append(PlannedJob(route=route.name, target=target,
                                   destination=route.destination, dest_ae_title=ae_title,
                                   dest_host=host, dest_port=port,
                                   output_format=str(route.output_format),
                                   series_number_offset=route.series_number_offset))
    first = next(iter(verdicts.values()), HeaderVerdict())
    found = dict(source_contrast=first.contrast, warnings=first.warnings)
    refused = "; ".join(text if len(refusals) == 1 and not applied else f"route {name}: {text}"
                        for name, text in refusals) or None
    if not jobs:
        if refusals:
            return RouteDecision(SeriesState.NOT_ELIGIBLE, refused, **found)
        return RouteDecision(SeriesState.IGNORED, "no route matched", **found)
    return RouteDecision(SeriesState.ROUTED, refused, tuple(jobs), tuple(applied), failed,
                         **found)
