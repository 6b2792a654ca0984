"""Series completion and routing: a ``receiving`` series becomes ``complete`` after
``stable_seconds`` without new instances (only instances that came on cleanly released
associations count; a series whose instances all came on aborted associations becomes
``partial`` and triggers nothing); a complete series gets its routes applied (jobs, or
``ignored`` / ``not_eligible`` with a reason: the eligibility rules refuse a series
before any job exists, announced in one ``REFUSED`` line)."""
from __future__ import annotations

import logging

from pydicom import dcmread

from dicom_node.config import Config
from dicom_node.errors import refused
from dicom_node.schedule.routes import plan_routes
from dicom_node.store.db import SeriesState
from dicom_node.store.joblog import JobLog

__all__ = ["complete_and_route", "route_series"]

logger = logging.getLogger(__name__)


def complete_and_route(log: JobLog, config: Config) -> int:
    """Complete quiet series and route complete ones; the number of jobs created."""
    for uid in log.complete_quiet_series(config.node.stable_seconds):
        logger.info("series %s complete", uid)
    return sum(route_series(log, config, series_uid, generation)
               for series_uid, generation in log.series_to_route())


def route_series(log: JobLog, config: Config, series_uid: str, generation: int) -> int:
    """Apply the routes to one complete series; returns the number of jobs created."""
    files = log.released_instances(series_uid)
    if not files:
        return log.apply_routing(series_uid, generation, [], SeriesState.NOT_ELIGIBLE,
                                 "no eligible instance (SOP class not eligible)", [])
    try:
        header = dcmread(files[0], stop_before_pixels=True)
    except Exception as exc:  # a spooled file that cannot be parsed: record, not crash
        return log.apply_routing(
            series_uid, generation, [], SeriesState.NOT_ELIGIBLE,
            f"cannot read the series header: {type(exc).__name__}", [])
    decision = plan_routes(header, config.routes, destinations=config.destinations,
                           callers=config.callers, caller=log.caller_of(series_uid),
                           is_ours=log.is_derived_series)
    created = log.apply_routing(series_uid, generation, decision.jobs, decision.state,
                                decision.reason, decision.routes, decision.failed,
                                source_contrast=decision.source_contrast,
                                warnings=decision.warnings)
    if decision.state == SeriesState.NOT_ELIGIBLE:
        refused(f"series {series_uid} not processed: {decision.reason}")
    logger.info("series %s %s%s: %d job(s)", series_uid, decision.state.value,
                f" ({decision.reason})" if decision.reason else "", created)
    return created
