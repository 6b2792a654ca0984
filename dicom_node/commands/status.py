"""``rtfsyn status --config PATH [--since T] [--state S] [--series UID] [--json]``.

What the node received, refused, synthesized and sent, read from the job log
(:func:`dicom_node.store.status.build_report`): the queue and the health of
each destination first, then rejected associations, series (time received,
description, source contrast, state, reason, warnings), jobs (target,
destination, attempts, duration, next attempt, the last error in full) and
deliveries. ``--json`` prints the same content as one object. The states are
documented in ``docs/JOBLOG.md``. Nothing here is patient data.
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
                              description="Report what the node received, refused, "
                                          "synthesized and sent.")
    p.add_argument("--config", required=True, type=Path, help="node.toml")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--since", type=since_time, metavar="TIME",
                   help="only what happened since TIME: 30m, 2h, 1d, or an ISO time (UTC "
                        "unless it says otherwise)")
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="only series/jobs in STATE (repeatable or comma-separated), e.g. "
                        "waiting, failed, rejected, not_eligible")
    p.add_argument("--series", metavar="UID",
                   help="only series whose Series Instance UID contains UID (e.g. the tail "
                        "that the text view shows)")
    p.add_argument("--limit", type=int, default=None,
                   help="newest N rows per list (default: all with --json, 20 otherwise)")
    p.set_defaults(func=run)


def since_time(text: str) -> dt.datetime:
    """``30m``/``2h``/``1d`` ago, or an ISO 8601 time, as naive UTC (argparse type)."""
    from dicom_node.store.status import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _states(values: list[str]) -> frozenset[str]:
    from dicom_node.store.status import ALL_STATES

    states = frozenset(v.strip() for value in values for v in value.split(",") if v.strip())
    unknown = sorted(states - set(ALL_STATES))
    if unknown:
        raise ValueError(f"unknown state(s) {', '.join(unknown)}; known: "
                         f"{', '.join(ALL_STATES)}")
    return states


def _short(uid: str | None, width: int = 12) -> str:
    """The tail of a UID (UIDs differ at the end)."""
    return "" if not uid else ("~" + uid[-(width - 1):] if len(uid) > width else uid)


def _time(value: str | None) -> str:
    return "" if not value else value.replace("T", " ")[:19]


def _overview(report: dict[str, Any]) -> list[str]:
    q, a, i = report["queue"], report["associations"], report["instances"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(a["by_state"].items())) or "none"
    lines = [f"job log: {report['database']} (as of {_time(report['generated_at'])} UTC)",
             f"queue: {q['depth']} job(s) — {q['queued']} queued, {q['running']} synthesizing, "
             f"{q['sending']} sending, {q['waiting']} waiting for destination",
             f"associations: {a['total']} ({states}); instances: {i['total']} "
             f"({i['not_eligible']} not eligible, {i['duplicates']} duplicate receptions)"]
    lines.append("DESTINATIONS" if report["destinations"] else "DESTINATIONS: no delivery yet")
    for d in report["destinations"]:
        lines.append(f"  {d['destination']} ({d['ae_title']}@{d['host']}:{d['port']}): "
                     f"{d['health']}; last attempt {_time(d['last_attempt_at'])} "
                     f"{d['last_status']}, last success {_time(d['last_success_at']) or 'never'}"
                     f", {d['consecutive_failures']} failure(s) in a row, "
                     f"{d['jobs_waiting']} job(s) waiting")
        if d["health"] == "failing" and d["last_error"]:
            lines.append(f"    last error: {d['last_error']}")
    rejected = a["rejected"]
    lines.append(f"REJECTED ASSOCIATIONS ({len(rejected)} shown)" if rejected
                 else "REJECTED ASSOCIATIONS: none")
    for r in rejected:
        lines.append(f"  {_time(r['started_at'])}  from {r['peer_host']}:{r['peer_port']} "
                     f"calling {r['calling_aet']!r}: {r['reason']}")
    return lines


def _series_lines(series: list[dict[str, Any]]) -> list[str]:
    lines = ["SERIES" if series else "SERIES: none"]
    for s in series:
        jobs = ", ".join(f"#{j['id']} {j['target']} {j['state']}" for j in s["jobs"])
        lines.append(f"  {_time(s['last_received_at'])}  {_short(s['series_uid'])}  "
                     f"{s['n_instances']:>4} inst  {s['description'] or '(no description)'}"
                     f"  [{s['source_contrast'] or '?'}]  {s['state']}"
                     + (f"  jobs: {jobs}" if jobs else ""))
        if s["reason"]:
            lines.append(f"      reason: {s['reason']}")
        for warning in s["warnings"]:
            lines.append(f"      warning: {warning}")
    return lines


def _job_lines(jobs: list[dict[str, Any]]) -> list[str]:
    lines = ["JOBS" if jobs else "JOBS: none"]
    for j in jobs:
        lines.append(f"  #{j['id']:<4} {j['target']:<5} -> {j['destination']} "
                     f"({j['dest_ae_title']}@{j['dest_host']}:{j['dest_port']})  {j['state']}"
                     f"  synthesis tries {j['attempts']}, delivery attempts "
                     f"{j['send_attempts']}  {j['duration_seconds']:.1f} s  "
                     f"series {_short(j['series_uid'])}")
        if j["state"] == "waiting":
            lines.append(f"      next attempt {_time(j['next_attempt_at'])} UTC, retrying "
                         f"until {_time(j['retry_until'])} UTC")
        if j["last_error"]:
            lines.append(f"      last error: {j['last_error']}")
        elif j["reason"]:
            lines.append(f"      reason: {j['reason']}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a person (every error and reason in full)."""
    deliveries = ["DELIVERIES" if report["deliveries"] else "DELIVERIES: none"]
    deliveries += [f"  {_time(d['started_at'])}  job #{d['job_id']} attempt {d['attempt']} to "
                   f"{d['dest_ae_title']}@{d['dest_host']}:{d['dest_port']}: {d['status']}, "
                   f"{d['n_sent']} sent, {d['n_failed']} failed"
                   + (f" — {d['error']}" if d["error"] else "") for d in report["deliveries"]]
    nodes = report.get("nodes") or []
    if len(nodes) > 1 or any(n["roles"] != ["receive", "process"] for n in nodes):
        deliveries += ["NODES"] + [f"  {n['node_id']}  {'+'.join(n['roles'])}  "
                                   f"{'live' if n['live'] else 'gone'}, last seen "
                                   f"{_time(n['last_seen_at'])}" for n in nodes]
    return "\n".join([*_overview(report), *_series_lines(report["series"]),
                      *_job_lines(report["jobs"]), *deliveries])


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.store.status import StatusFilter, build_report

    config = load_config_or_report("status", args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        states = _states(args.state)
    except ValueError as exc:
        print(f"rtfsyn status: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not config.shared_database and not config.database_path.exists():
        print(f"rtfsyn status: no job log at {config.database_path} (has the node run with "
              f"this configuration, {config.source}?)", file=sys.stderr)
        return EXIT_ERROR
    limit = args.limit if args.limit is not None else (None if args.json else 20)
    try:
        report = build_report(config.database_url, StatusFilter(
            since=args.since, states=states, series=args.series, limit=limit,
            lease_seconds=config.node.lease_seconds))
    except SQLAlchemyError as exc:
        print(f"rtfsyn status: cannot read the job log: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
