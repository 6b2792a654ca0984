"""Webhook notifications: a small JSON document POSTed when a series is refused or a job
fails for good.

The notifier watches the job log (it changes nothing there): every couple of seconds
it looks for series that became ``not_eligible``, jobs ``rejected`` (the series cannot
be processed for that target) and jobs ``failed`` (processing error, or delivery
attempts used up). Each event is POSTed once it is seen, with retries and exponential
back-off (``[notify]``); an event still failing after ``max_attempts`` is dropped with
an error in the log. Events handled are remembered in ``data_dir/notify-cursor.json``,
so a restart notifies what the previous run had not yet delivered and nothing twice.
The document carries UIDs, AE titles, states and reasons: never a patient name, ID or
birth date (:func:`event_document` is the whole of it).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import exists, select

from dicom_node.store.db import Job, JobState, Series, SeriesState, utcnow
from dicom_node.http.settings import NotifyConfig
from dicom_node.store.joblog import DATABASE_ERRORS, JobLog

__all__ = ["Event", "Notifier", "event_document", "WINDOW", "post_json"]

logger = logging.getLogger(__name__)
WINDOW = dt.timedelta(hours=24)  # events older than this at a start are not notified
_JOB_STATES = (JobState.FAILED, JobState.REJECTED)


@dataclass(frozen=True)
class Event:
    """One notification: ``key`` identifies it across restarts; ``at`` is when it happened."""

    key: str
    at: dt.datetime
    document: dict[str, Any]


def _iso(value: dt.datetime) -> str:
    return value.isoformat(timespec="milliseconds") + "Z"


def event_document(node: str, kind: str, at: dt.datetime, series: Series | None,
                   job: Job | None) -> dict[str, Any]:
    """The JSON document of one event (``kind``: ``series_refused`` or ``job_failed``)."""
    row: Any = job if job is not None else series
    return {
        "event": kind, "node": node, "time": _iso(at),
        "series_uid": row.series_uid,
        "study_uid": series.study_uid if series is not None else None,
        "state": row.state.value, "reason": row.reason,
        "job": None if job is None else {
            "id": job.id, "target": job.target, "destination": job.destination,
            "dest_ae_title": job.dest_ae_title, "attempts": job.attempts,
            "send_attempts": job.send_attempts,
            "derived_series_uid": job.derived_series_uid},
    }


def recent_events(log: JobLog, node: str, since: dt.datetime) -> list[Event]:
    """Refusals and final failures recorded at or after ``since``, oldest first."""
    events = []
    with log.transaction() as s:
        has_jobs = exists().where(Job.series_uid == Series.series_uid,
                                  Job.generation == Series.generation)
        # a series whose jobs were all rejected is reported once, by its jobs' events
        for series in s.scalars(select(Series).where(
                Series.state == SeriesState.NOT_ELIGIBLE, Series.completed_at >= since,
                ~has_jobs)):
            events.append(Event(f"series:{series.id}:{series.generation}", series.completed_at,
                                event_document(node, "series_refused", series.completed_at,
                                               series, None)))
        rows = s.execute(select(Job, Series).join(Series, Series.series_uid == Job.series_uid,
                                                  isouter=True)
                         .where(Job.state.in_(_JOB_STATES), Job.finished_at >= since)).all()
        for job, series in rows:
            kind = "series_refused" if job.state == JobState.REJECTED else "job_failed"
            events.append(Event(f"job:{job.id}:{job.state.value}:{_iso(job.finished_at)}",
                                job.finished_at,
                                event_document(node, kind, job.finished_at, series, job)))
    return sorted(events, key=lambda e: (e.at, e.key))


def post_json(url: str, document: dict[str, Any], *, token: str | None,
              timeout: float) -> None:
    """POST ``document`` as JSON; raises ``OSError`` (``urllib.error.URLError``) unless the
    receiver answers 2xx."""
    headers = {"Content-Type": "application/json", "User-Agent": "rtfsyn-node"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(document).encode("utf-8"),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s)
        response.read()


class Notifier:
    """Watches the job log and POSTs each new event (one background thread)."""

    def __init__(self, config: NotifyConfig, log: JobLog, node: str, cursor_path: Path, *,
                 poll_seconds: float = 2.0,
                 post: Callable[..., None] = post_json) -> None:
        self.config, self.log, self.node = config, log, node
        self.cursor_path, self.poll_seconds, self._post = Path(cursor_path), poll_seconds, post
        self.counts: Counter[str] = Counter()  # sent / failed, read by the metrics
        self._handled: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the cursor: events handled (delivered or given up), kept for WINDOW ----------------
    def load_cursor(self) -> None:
        """Read the events already handled (first start: mark the log's recent events as
        history, so that a node upgraded with an old log does not notify its past)."""
        try:
            self._handled = dict(json.loads(self.cursor_path.read_text())["handled"])
        except FileNotFoundError:  # first start: what is already in the log is history
            self._handled = {e.key: _iso(e.at) for e in self._events()}
            self._save_cursor()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("notify cursor %s unreadable (%s); starting from now", self.cursor_path,
                         type(exc).__name__)
            self._handled = {e.key: _iso(e.at) for e in self._events()}

    def _save_cursor(self) -> None:
        cutoff = _iso(utcnow() - WINDOW)
        self._handled = {k: at for k, at in self._handled.items() if at >= cutoff}
        tmp = self.cursor_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"handled": self._handled}))
        os.replace(tmp, self.cursor_path)

    def _events(self) -> list[Event]:
        return recent_events(self.log, self.node, utcnow() - WINDOW)

    # -- the thread ---------------------------------------------------------------------
    def start(self) -> "Notifier":
        """Read the cursor and start watching."""
        self.load_cursor()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rtfsyn-notify", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching; an event not yet delivered is notified after the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except DATABASE_ERRORS as exc:
                logger.warning("notify: job log unreachable (%s)", type(exc).__name__)
            except Exception:  # the watcher must survive any one bad step
                logger.exception("notify step failed")
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> int:
        """Deliver every event not yet handled; returns how many were handled."""
        handled = 0
        for event in self._events():
            if event.key in self._handled or self._stop.is_set():
                continue
            if not self._deliver(event):
                break  # stopped while retrying: left for the next start
            self._handled[event.key] = _iso(event.at)
            self._save_cursor()
            handled += 1
        return handled

    def _deliver(self, event: Event) -> bool:
        """POST with retries; True when done (sent or given up), False when stopped."""
        cfg = self.config
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                self._post(cfg.webhook_url, event.document, token=cfg.token,
                           timeout=cfg.timeout_seconds)
            except (OSError, ValueError) as exc:
                detail = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) \
                    else type(exc).__name__
                if attempt == cfg.max_attempts:
                    logger.error("webhook: %s for series %s dropped after %d attempt(s) (%s)",
                                 event.document["event"], event.document["series_uid"],
                                 attempt, detail)
                    self.counts["failed"] += 1
                    return True
                wait = cfg.backoff(attempt)
                logger.warning("webhook attempt %d of %d failed (%s); next in %g s", attempt,
                               cfg.max_attempts, detail, wait)
                if self._stop.wait(wait):
                    return False
                continue
            logger.info("webhook: %s for series %s sent", event.document["event"],
                        event.document["series_uid"])
            self.counts["sent"] += 1
            return True
        return True
