"""What the node did, read from the job log, as one plain object (``rtfsyn status``).

:func:`build_report` returns a dict that ``rtfsyn status --json`` prints as is
and the text view formats; both carry the same content. Nothing in it is
patient data: UIDs, AE titles, addresses, counts, times, states and reasons.

Keys: ``database``, ``generated_at``, ``filters``; ``queue`` (jobs per active
state and the depth); ``destinations`` (per destination: the last attempt, its
outcome and error, the last success, consecutive failures, jobs waiting, and a
``health`` of ``ok``/``failing``/``unknown``); ``associations`` (counts per
state, the recent ones, every ``rejected`` one with time, calling AE, address and
reason); ``instances`` (counts); ``series``, ``jobs`` and ``deliveries`` (lists,
newest first); ``nodes`` (the node processes that used the job log, their roles and
whether they are live). Times are ISO 8601 UTC with a ``Z``.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from dicom_node.store import db
from dicom_node.store.joblog import JobLog
from dicom_node.store.nodes import node_rows

__all__ = ["StatusFilter", "build_report", "parse_since", "SERIES_FIELDS", "JOB_FIELDS",
           "ALL_STATES"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}

SERIES_FIELDS = ("series_uid", "study_uid", "modality", "description", "series_number",
                 "n_instances", "source_contrast", "state", "reason", "generation",
                 "routes_applied", "first_received_at", "last_received_at", "completed_at")
JOB_FIELDS = ("id", "series_uid", "generation", "route", "target", "destination",
              "dest_ae_title", "dest_host", "dest_port", "output_format", "state", "reason",
              "attempts", "send_attempts", "next_attempt_at", "retry_until",
              "derived_series_uid", "prompt", "created_at", "started_at", "processed_at",
              "finished_at", "process_seconds", "send_seconds", "claimed_by", "processed_by",
              "lease_expires_at")
DELIVERY_FIELDS = ("id", "job_id", "attempt", "dest_ae_title", "dest_host", "dest_port",
                   "status", "n_sent", "n_warning", "n_failed", "error", "started_at",
                   "ended_at")
ASSOCIATION_FIELDS = ("id", "calling_aet", "called_aet", "peer_host", "peer_port", "state",
                      "reason", "n_instances", "started_at", "ended_at")
ACTIVE_JOB_STATES = (db.JobState.QUEUED, db.JobState.RUNNING, db.JobState.SENDING,
                     db.JobState.WAITING)
ALL_STATES = tuple(dict.fromkeys([s.value for s in db.SeriesState]
                                 + [s.value for s in db.JobState]))


def parse_since(text: str) -> dt.datetime:
    """``30m``/``2h``/``1d`` ago, or an ISO 8601 time, as naive UTC; ``ValueError`` names
    the forms and the value found."""
    match = _RELATIVE.match(text.strip())
    now = dt.datetime.now(dt.timezone.utc)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return (now - dt.timedelta(seconds=seconds)).replace(tzinfo=None)
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected 30m, 2h, 1d or an ISO time such as 2026-12-06T08:00. "
                         f"Found {text!r}") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


@dataclass(frozen=True)
class StatusFilter:
    """Which rows to report: ``since`` (naive UTC), ``states`` (series or job states:
    a series is shown when it or one of its jobs is in one; a job when it or its series
    is), ``series`` (a Series Instance UID, or any part of one), ``limit`` (newest N per
    list; None: all)."""

    since: dt.datetime | None = None
    states: frozenset[str] = field(default_factory=frozenset)
    series: str | None = None
    limit: int | None = None
    lease_seconds: float = 30.0  # a node process is live when its heartbeat is younger

    def to_dict(self) -> dict[str, Any]:
        return {"since": iso(self.since), "states": sorted(self.states) or None,
                "series": self.series, "limit": self.limit}


def iso(value: dt.datetime | None) -> str | None:
    """A naive UTC time as ISO 8601 with milliseconds and ``Z``."""
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def _row(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for name in fields:
        value = getattr(obj, name)
        if isinstance(value, dt.datetime):
            value = iso(value)
        elif hasattr(value, "value"):  # an enum state
            value = value.value
        out[name] = value
    return out


def _series_rows(s: Session, f: StatusFilter, jobs_by_series: dict[str, list[Any]]
                 ) -> list[dict[str, Any]]:
    query = select(db.Series).order_by(db.Series.last_received_at.desc(), db.Series.id.desc())
    if f.since is not None:
        query = query.where(db.Series.last_received_at >= f.since)
    if f.series:
        query = query.where(db.Series.series_uid.contains(f.series))
    rows = []
    for series in s.scalars(query):
        jobs = jobs_by_series.get(series.series_uid, [])
        item = _row(series, SERIES_FIELDS)
        item["warnings"] = json.loads(series.warnings or "[]")
        item["jobs"] = [{"id": j.id, "target": j.target, "state": j.state.value}
                        for j in jobs]
        if f.states and item["state"] not in f.states and not any(
                j["state"] in f.states for j in item["jobs"]):
            continue
        rows.append(item)
    return rows[: f.limit] if f.limit else rows


def _job_rows(s: Session, f: StatusFilter, now: dt.datetime) -> list[tuple[Any, dict]]:
    query = select(db.Job).order_by(db.Job.id.desc())
    if f.since is not None:
        query = query.where(or_(db.Job.created_at >= f.since, db.Job.finished_at.is_(None),
                                db.Job.finished_at >= f.since))
    if f.series:
        query = query.where(db.Job.series_uid.contains(f.series))
    series_state = dict(s.execute(select(db.Series.series_uid, db.Series.state)).all())
    out = []
    for job in s.scalars(query):
        if f.states and job.state.value not in f.states and getattr(
                series_state.get(job.series_uid), "value", None) not in f.states:
            continue
        item = _row(job, JOB_FIELDS)
        item["n_derived"] = len(json.loads(job.derived_files or "[]"))
        item["stage_seconds"] = json.loads(job.stage_seconds or "{}")
        end = job.finished_at or now
        item["duration_seconds"] = round((end - job.created_at).total_seconds(), 3)
        last = s.scalar(select(db.Delivery).where(db.Delivery.job_id == job.id)
                        .order_by(db.Delivery.id.desc()).limit(1))
        item["last_error"] = (last.error if last is not None and last.error
                              and job.state != db.JobState.DONE else
                              job.reason if job.state in (db.JobState.FAILED,
                                                          db.JobState.REJECTED) else None)
        out.append((job, item))
    return out[: f.limit] if f.limit else out


def _destinations(s: Session) -> list[dict[str, Any]]:
    """Per destination (the job's destination name): recent delivery health."""
    rows = s.execute(select(db.Job.destination, db.Delivery)
                     .join(db.Delivery, db.Delivery.job_id == db.Job.id)
                     .order_by(db.Delivery.id)).all()
    health: dict[str, dict[str, Any]] = {}
    for name, delivery in rows:
        h = health.setdefault(name, {"destination": name, "consecutive_failures": 0,
                                     "last_success_at": None, "attempts": 0})
        h["attempts"] += 1
        h.update(ae_title=delivery.dest_ae_title, host=delivery.dest_host,
                 port=delivery.dest_port, last_attempt_at=iso(delivery.started_at),
                 last_status=delivery.status.value, last_error=delivery.error)
        if delivery.status == db.DeliveryStatus.OK:
            h["consecutive_failures"], h["last_success_at"] = 0, iso(delivery.ended_at)
        elif delivery.status != db.DeliveryStatus.RUNNING:
            h["consecutive_failures"] += 1
    waiting = dict(s.execute(select(db.Job.destination, func.count(db.Job.id))
                             .where(db.Job.state == db.JobState.WAITING)
                             .group_by(db.Job.destination)).all())
    for name, h in health.items():
        h["jobs_waiting"] = int(waiting.get(name, 0))
        h["health"] = {"ok": "ok", "running": "unknown"}.get(h["last_status"], "failing")
    return sorted(health.values(), key=lambda h: h["destination"])


def _associations(s: Session, f: StatusFilter) -> dict[str, Any]:
    since = [db.Association.started_at >= f.since] if f.since is not None else []
    by_state = dict(s.execute(select(db.Association.state, func.count(db.Association.id))
                              .where(*since).group_by(db.Association.state)).all())
    newest = select(db.Association).where(*since).order_by(db.Association.id.desc())
    recent = s.scalars(newest.limit(f.limit or 20))
    rejected = s.scalars(newest.where(db.Association.state == db.AssociationState.REJECTED)
                         .limit(f.limit or 100))
    return {"total": sum(by_state.values()),
            "by_state": {state.value: n for state, n in by_state.items()},
            "recent": [_row(a, ASSOCIATION_FIELDS) for a in recent],
            "rejected": [_row(a, ASSOCIATION_FIELDS) for a in rejected]}


def build_report(database: Path | str, status_filter: StatusFilter = StatusFilter()
                 ) -> dict[str, Any]:
    """The status object (see the module docstring) of the job log at ``database`` (a
    SQLite file or a database URL)."""
    f, now = status_filter, db.utcnow()
    log = JobLog(database)
    with log.transaction() as s:
        n_inst, n_eligible, n_dup = s.execute(select(
            func.count(db.Instance.id), func.count(db.Instance.id).filter(db.Instance.eligible),
            func.coalesce(func.sum(db.Instance.n_received - 1), 0))).one()
        counts = dict(s.execute(select(db.Job.state, func.count(db.Job.id))
                                .group_by(db.Job.state)).all())
        queue = {state.value: int(counts.get(state, 0)) for state in ACTIVE_JOB_STATES}
        queue["depth"] = sum(queue.values())
        jobs = _job_rows(s, f, now)
        by_series: dict[str, list[Any]] = {}
        for job in s.scalars(select(db.Job).order_by(db.Job.id)):
            by_series.setdefault(job.series_uid, []).append(job)
        shown = {job.id for job, _ in jobs}
        deliveries = s.scalars(select(db.Delivery).where(db.Delivery.job_id.in_(shown))
                               .order_by(db.Delivery.id.desc()))
        return {
            "database": log.where, "generated_at": iso(now), "filters": f.to_dict(),
            "queue": queue,
            "destinations": _destinations(s),
            "associations": _associations(s, f),
            "instances": {"total": n_inst, "eligible": int(n_eligible),
                          "not_eligible": n_inst - int(n_eligible), "duplicates": int(n_dup)},
            "series": _series_rows(s, f, by_series),
            "jobs": [item for _job, item in jobs],
            "deliveries": [_row(d, DELIVERY_FIELDS) for d in deliveries],
            "nodes": [{k: iso(v) if isinstance(v, dt.datetime) else v for k, v in n.items()}
                      for n in node_rows(s, dt.timedelta(seconds=f.lease_seconds))],
        }
