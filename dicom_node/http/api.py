"""The JSON API's content: ``rtfsyn status --json``'s report, filtered by query parameters.

The report comes from the status command's own query
(:func:`dicom_node.store.status.build_report`); this module only selects rows of it.
Filters (all optional): ``state`` (one or more, comma-separated), ``series`` (a Series
Instance UID), ``target`` (jobs), ``since`` (ISO 8601 time, UTC when no zone is given:
series last received, jobs created at or after it), ``limit`` (newest N rows, default 100).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Mapping

from dicom_node.store.status import StatusFilter, build_report

__all__ = ["BadQuery", "DEFAULT_LIMIT", "MAX_LIMIT", "query_rows", "report"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000
_KEYS = {"series": {"state", "series", "since", "limit"},
         "jobs": {"state", "series", "target", "since", "limit"}}
_SINCE_FIELD = {"series": "last_received_at", "jobs": "created_at"}


class BadQuery(ValueError):
    """A query parameter breaks a rule; the message names it and the value found."""


def _since(value: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadQuery(f"since must be an ISO 8601 time such as 2026-12-06T08:00:00Z. "
                       f"Found {value!r}.") from exc
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadQuery(f"limit must be an integer in [1, {MAX_LIMIT}]. Found {value!r}.")
    return int(value)


def _stamp(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text.rstrip("Z"))


def report(database: Path | str, limit: int | None) -> dict[str, Any]:
    """The whole status report (what ``rtfsyn status --json --limit N`` prints)."""
    return build_report(database, StatusFilter(limit=limit))


def query_rows(database: Path | str, kind: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ``kind`` (``series`` or ``jobs``) rows of the status report that match
    ``params``, newest first; raises :class:`BadQuery` for an unknown or bad parameter."""
    unknown = sorted(set(params) - _KEYS[kind])
    if unknown:
        raise BadQuery(f"unknown query parameter(s) {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(_KEYS[kind]))}.")
    limit = _limit(params.get("limit"))
    states = {s.strip() for s in params["state"].split(",")} if "state" in params else None
    since = _since(params["since"]) if "since" in params else None
    filtered = bool(states or since or "series" in params or "target" in params)
    rows = build_report(database, StatusFilter(limit=None if filtered else limit))[kind]
    out = []
    for row in rows:
        if states and row["state"] not in states:
            continue
        if "series" in params and row["series_uid"] != params["series"]:
            continue
        if "target" in params and row.get("target") != params["target"].upper():
            continue
        stamp = _stamp(row.get(_SINCE_FIELD[kind]))
        if since and (stamp is None or stamp < since):
            continue
        out.append(row)
        if len(out) >= limit:
            break
    return out
