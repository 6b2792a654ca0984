"""``rtfsyn resend JOB_ID|--waiting|--failed --config PATH``: deliver again, now.

A job waiting for its destination (the destination is back; do not wait for
the backoff) is sent at once; a failed or done job with output goes back to
``sending``; a failed job without output is queued for processing again. Each
gets a fresh retry window (``[export] retry_window_hours``). A running node
picks the change up within a second; a stopped one at its next start. A job is
never delivered twice by itself: only ``resend`` of a ``done`` job sends it
again (same UIDs, so the PACS keeps one copy).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicom_node.commands.common import EXIT_CONFIG, load_config_or_report

EXIT_ERROR = 2


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "resend", help="re-send a job's derived series (or every failed job)",
        description="Requeue deliveries from the job log; the running node sends them.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", type=int, metavar="JOB_ID", help="the job to re-send")
    which.add_argument("--failed", action="store_true", help="re-send every failed job")
    which.add_argument("--waiting", action="store_true",
                       help="retry every job waiting for its destination now")
    p.add_argument("--config", required=True, type=Path, help="node.toml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dicom_node.store.db import JobState
    from dicom_node.store.jobqueue import JobQueue
    from dicom_node.store.joblog import JobLog, UnknownJob

    config = load_config_or_report("resend", args.config)
    if config is None:
        return EXIT_CONFIG
    queue = JobQueue(JobLog(config.database_url), config.node.lease_seconds)
    if args.failed or args.waiting:
        kind = JobState.FAILED if args.failed else JobState.WAITING
        ids = queue.jobs_in(kind)
        if not ids:
            print(f"no {kind.value} jobs")
            return 0
    else:
        ids = [args.job_id]
    status = 0
    for job_id in ids:
        try:
            state = queue.requeue(job_id)
        except (UnknownJob, ValueError) as exc:
            print(f"rtfsyn resend: job {job_id}: {exc}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        print(f"job {job_id}: {state.value}")
    return status
