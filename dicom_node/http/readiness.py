"""Readiness of a node process: what ``GET /ready`` answers.

Ready means the node can do its work now: the model checkpoint is on disk, the data
folder's file system is under ``[node] disk_watermark_percent`` (above it the node
refuses new associations) and the job log answers a query. The destinations' last
delivery outcome is reported beside the checks but does not make the node unready:
a PACS that is down does not stop the node from receiving (its jobs wait and retry).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from dicom_node.config import Config
from dicom_node.store.db import Delivery, Job
from dicom_node.store.joblog import DATABASE_ERRORS, JobLog
from dicom_node.receive.disk_guard import DiskGuard

__all__ = ["Check", "Readiness", "checkpoint_path"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One readiness condition: passed or not, and what was found (no patient data)."""

    ok: bool
    detail: str


def checkpoint_path(checkpoint: str) -> Path:
    """The file ``[model] checkpoint`` names (``"default"``: the bundled weights)."""
    if checkpoint == "default":
        from synthesis.checkpoint import default_checkpoint_path

        return default_checkpoint_path()
    return Path(checkpoint)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


class Readiness:
    """The checks of one node: its configuration, job log and disk guard."""

    def __init__(self, config: Config, log: JobLog, disk: DiskGuard) -> None:
        self.config, self.log, self.disk = config, log, disk

    def model(self) -> Check:
        """The configured checkpoint file exists and is not empty."""
        path = checkpoint_path(self.config.model.checkpoint)
        try:
            size = path.stat().st_size
        except OSError:
            return Check(False, f"no model checkpoint at {path}")
        if size == 0:
            return Check(False, f"the model checkpoint {path} is empty")
        return Check(True, f"checkpoint {path.name} ({size / 2**20:.1f} MiB)")

    def disk_space(self) -> Check:
        """The data folder's file system is under the watermark."""
        try:
            used = self.disk.percent_used()
        except OSError as exc:
            return Check(False, f"cannot read the disk usage: {type(exc).__name__}")
        ok = used < self.disk.watermark
        word = "under" if ok else "at or above"
        return Check(ok, f"{used:.1f}% used, {word} the watermark {self.disk.watermark:g}%")

    def job_log(self) -> Check:
        """The job log answers a query."""
        try:
            with self.log.transaction() as s:
                s.execute(select(Job.id).limit(1)).all()
        except (*DATABASE_ERRORS, OSError) as exc:
            return Check(False, f"job log unreachable: {type(exc).__name__}")
        return Check(True, "job log answers")

    def destinations(self) -> dict[str, dict[str, Any]]:
        """Per destination key: the last delivery attempt's status, end time and error
        (``None`` values for a destination never tried)."""
        out: dict[str, dict[str, Any]] = {
            name: {"last_outcome": None, "at": None, "error": None}
            for name in self.config.destinations}
        latest = (select(func.max(Delivery.id)).join(Job, Delivery.job_id == Job.id)
                  .group_by(Job.destination))
        try:
            with self.log.transaction() as s:
                rows = s.execute(select(Job.destination, Delivery.status, Delivery.ended_at,
                                        Delivery.started_at, Delivery.error)
                                 .join(Job, Delivery.job_id == Job.id)
                                 .where(Delivery.id.in_(latest))).all()
        except DATABASE_ERRORS:
            return out
        for name, status, ended, started, error in rows:
            out[name] = {"last_outcome": status.value, "at": _iso(ended or started),
                         "error": error}
        return out

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the document ``/ready`` returns)."""
        checks = {"model": self.model(), "disk": self.disk_space(), "job_log": self.job_log()}
        ready = all(c.ok for c in checks.values())
        if not ready:
            logger.debug("not ready: %s", {k: c.detail for k, c in checks.items() if not c.ok})
        return ready, {
            "ready": ready,
            "checks": {k: {"ok": c.ok, "detail": c.detail} for k, c in checks.items()},
            "destinations": self.destinations() if checks["job_log"].ok else {}}
