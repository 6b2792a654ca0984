"""``rtfsyn status --config PATH [--json]``: what the node did, read from the job log.

``--json`` prints one object: ``associations`` (counts per state and the most
recent ones), ``instances`` (counts), ``series``, ``jobs`` and ``deliveries``
(lists, newest first), and ``nodes`` (the node processes that used the job log,
with their roles and whether they are live). Every series and job has a ``state`` and, for failures
and rejections, a ``reason``; the states are documented in ``docs/JOBLOG.md``.
Without ``--json`` the same is printed as tables. Nothing here is patient data.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from dicom_node.commands.common import EXIT_CONFIG, load_config_or_report

EXIT_ERROR = 2


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show series, jobs and deliveries from the job log",
                              description="Report what the node received, synthesized and sent.")
    p.add_argument("--config", required=True, type=Path, help="node.toml")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, default=None,
                   help="newest N rows per list (default: all with --json, 20 otherwise)")
    p.set_defaults(func=run)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def _row(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for name in fields:
        value = getattr(obj, name)
        if isinstance(value, dt.datetime):
            value = _iso(value)
        elif hasattr(value, "value"):  # an enum state
            value = value.value
        out[name] = value
    return out


_SERIES = ("series_uid", "study_uid", "modality", "description", "series_number", "n_instances",
           "state", "reason", "generation", "routes_applied", "first_received_at",
           "last_received_at", "completed_at")
_JOBS = ("id", "series_uid", "generation", "route", "target", "destination", "dest_ae_title",
         "dest_host", "dest_port", "output_format", "state", "reason", "attempts",
         "send_attempts", "next_attempt_at", "derived_series_uid", "prompt", "created_at",
         "started_at", "processed_at", "finished_at", "process_seconds", "send_seconds",
         "claimed_by", "processed_by", "lease_expires_at")
_DELIVERIES = ("id", "job_id", "attempt", "dest_ae_title", "dest_host", "dest_port", "status",
               "n_sent", "n_warning", "n_failed", "error", "started_at", "ended_at")
_ASSOCIATIONS = ("id", "calling_aet", "called_aet", "peer_host", "peer_port", "state", "reason",
                 "n_instances", "started_at", "ended_at")


def build_report(database: Path | str, limit: int | None = None,
                 lease_seconds: float = 30.0) -> dict[str, Any]:
    """The status object (see the module docstring) from the job log at ``database`` (a
    SQLite file or a database URL); a node is live when its heartbeat is younger than
    ``lease_seconds``."""
    from sqlalchemy import func, select

    from dicom_node.store import db
    from dicom_node.store.joblog import JobLog
    from dicom_node.store.nodes import node_rows

    def newest(s: Any, model: Any, order: Any) -> list[Any]:
        query = select(model).order_by(order.desc())
        return list(s.scalars(query.limit(limit) if limit else query))

    log = JobLog(database)
    with log.transaction() as s:
        by_state = dict(s.execute(select(db.Association.state, func.count(db.Association.id))
                                  .group_by(db.Association.state)).all())
        n_inst, n_eligible, n_dup = s.execute(select(
            func.count(db.Instance.id), func.count(db.Instance.id).filter(db.Instance.eligible),
            func.coalesce(func.sum(db.Instance.n_received - 1), 0))).one()
        jobs = []
        for job in newest(s, db.Job, db.Job.id):
            item = _row(job, _JOBS)
            item["n_derived"] = len(json.loads(job.derived_files or "[]"))
            item["stage_seconds"] = json.loads(job.stage_seconds or "{}")
            jobs.append(item)
        return {
            "database": log.where,
            "associations": {
                "total": sum(by_state.values()),
                "by_state": {state.value: n for state, n in by_state.items()},
                "recent": [_row(a, _ASSOCIATIONS) for a in newest(
                    s, db.Association, db.Association.id)[:limit or 20]]},
            "instances": {"total": n_inst, "eligible": int(n_eligible),
                          "not_eligible": n_inst - int(n_eligible), "duplicates": int(n_dup)},
            "series": [_row(r, _SERIES) for r in newest(s, db.Series, db.Series.id)],
            "jobs": jobs,
            "deliveries": [_row(d, _DELIVERIES) for d in newest(s, db.Delivery, db.Delivery.id)],
            "nodes": [{k: _iso(v) if isinstance(v, dt.datetime) else v for k, v in n.items()}
                      for n in node_rows(s, dt.timedelta(seconds=lease_seconds))],
        }


def _table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str, int], ...]) -> str:
    """Fixed-width text table: columns are (key, heading, width)."""
    def cell(value: Any, width: int, tail: bool = False) -> str:
        text = "" if value is None else str(value)
        if len(text) > width:  # UIDs differ at the end: keep their tail
            text = "~" + text[1 - width:] if tail else text[: width - 1] + "~"
        return text.ljust(width)

    lines = ["  ".join(cell(h, w) for _k, h, w in columns)]
    lines += ["  ".join(cell(r.get(k), w, k.endswith("uid")) for k, _h, w in columns)
              for r in rows]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The report as readable tables."""
    a, i = report["associations"], report["instances"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(a["by_state"].items())) or "none"
    parts = [f"job log: {report['database']}",
             f"associations: {a['total']} ({states})",
             f"instances: {i['total']} ({i['eligible']} eligible, {i['not_eligible']} not "
             f"eligible, {i['duplicates']} duplicate receptions)", "", "SERIES",
             _table(report["series"], (("series_uid", "series", 28), ("modality", "mod", 4),
                                       ("n_instances", "n", 4), ("state", "state", 12),
                                       ("reason", "reason", 60))), "", "JOBS",
             _table(report["jobs"], (("id", "id", 5), ("target", "target", 6),
                                     ("destination", "destination", 12), ("state", "state", 8),
                                     ("attempts", "proc", 4), ("send_attempts", "send", 4),
                                     ("n_derived", "n", 4), ("reason", "reason", 60))),
             "", "DELIVERIES",
             _table(report["deliveries"], (("id", "id", 5), ("job_id", "job", 5),
                                           ("attempt", "try", 3), ("dest_ae_title", "to", 16),
                                           ("status", "status", 8), ("n_sent", "sent", 5),
                                           ("n_failed", "failed", 6), ("error", "error", 60)))]
    nodes = report.get("nodes") or []
    if len(nodes) > 1 or any(n["roles"] != ["receive", "process"] for n in nodes):
        parts += ["", "NODES", _table([{**n, "roles": "+".join(n["roles"])} for n in nodes],
                                      (("node_id", "node", 36), ("roles", "roles", 15),
                                       ("live", "live", 5), ("last_seen_at", "last seen", 24)))]
    return "\n".join(parts)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    config = load_config_or_report("status", args.config)
    if config is None:
        return EXIT_CONFIG
    if not config.shared_database and not config.database_path.exists():
        print(f"rtfsyn status: no job log at {config.database_path} (has the node run?)",
              file=sys.stderr)
        return EXIT_ERROR
    limit = args.limit if args.limit is not None else (None if args.json else 20)
    try:
        report = build_report(config.database_url, limit, config.node.lease_seconds)
    except SQLAlchemyError as exc:
        print(f"rtfsyn status: cannot read the job log: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
