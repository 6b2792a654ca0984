"""The JSON API: ``rtfsyn status --json``'s report, with the status command's filters.

The rows come from the status query itself (:func:`dicom_node.store.status.build_report`
with a :class:`~dicom_node.store.status.StatusFilter`); this module only turns query
parameters into that filter. Parameters (all optional), as ``rtfsyn status`` takes them:
``since`` (``30m``, ``2h``, ``1d`` or an ISO 8601 time, UTC unless it says otherwise),
``state`` (one or more, comma-separated: a series is listed when it or one of its jobs is
in one, a job when it or its series is), ``series`` (a Series Instance UID or part of
one), ``limit`` (newest N rows per list; default 100 for ``/api/series`` and
``/api/jobs``); ``target`` (``/api/jobs`` only: a target preset).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dicom_node.store.status import ALL_STATES, StatusFilter, build_report, parse_since

__all__ = ["BadQuery", "DEFAULT_LIMIT", "MAX_LIMIT", "status_filter", "query_rows", "report"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000
_FILTERS = {"since", "state", "series", "limit"}
_KEYS = {"status": _FILTERS, "series": _FILTERS, "jobs": _FILTERS | {"target"}}


class BadQuery(ValueError):
    """A query parameter breaks a rule; the message names it and the value found."""


def _limit(value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadQuery(f"limit must be an integer in [1, {MAX_LIMIT}]. Found {value!r}.")
    return int(value)


def status_filter(kind: str, params: Mapping[str, str],
                  default_limit: int | None = None) -> StatusFilter:
    """The :class:`StatusFilter` that ``params`` ask for on ``/api/<kind>``; raises
    :class:`BadQuery` for an unknown parameter or a bad value."""
    unknown = sorted(set(params) - _KEYS[kind])
    if unknown:
        raise BadQuery(f"unknown query parameter(s) {', '.join(unknown)}; known: "
                       f"{', '.join(sorted(_KEYS[kind]))}.")
    since = None
    if "since" in params:
        try:
            since = parse_since(params["since"])
        except ValueError as exc:
            raise BadQuery(f"since: {exc}.") from exc
    states = frozenset(s.strip() for s in params.get("state", "").split(",") if s.strip())
    wrong = sorted(states - set(ALL_STATES))
    if wrong:
        raise BadQuery(f"state must be among {', '.join(ALL_STATES)}. Found "
                       f"{', '.join(wrong)}.")
    return StatusFilter(since=since, states=states, series=params.get("series") or None,
                        limit=_limit(params.get("limit"), default_limit))


def report(database: Path | str, params: Mapping[str, str]) -> dict[str, Any]:
    """The whole status report (``rtfsyn status --json`` with the same filters)."""
    return build_report(database, status_filter("status", params))


def query_rows(database: Path | str, kind: str, params: Mapping[str, str]
               ) -> list[dict[str, Any]]:
    """The ``kind`` (``series`` or ``jobs``) rows of the filtered status report, newest
    first; ``target`` keeps the jobs of one target preset."""
    wanted = status_filter(kind, params, DEFAULT_LIMIT)
    target = params.get("target", "").upper()
    if not target:
        return build_report(database, wanted)[kind]
    every = StatusFilter(since=wanted.since, states=wanted.states, series=wanted.series)
    rows = [r for r in build_report(database, every)[kind] if r.get("target") == target]
    return rows[: wanted.limit]
