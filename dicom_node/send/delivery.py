"""One delivery attempt of a processed job: resolve where it goes now
(:mod:`dicom_node.send.destinations`), claim and record the attempt, send the files
(:mod:`dicom_node.send.sender`) and record the outcome (the job queue applies the retry
policy)."""
from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.config import Config
from dicom_node.send.destinations import job_endpoint
from dicom_node.send.sender import send_files
from dicom_node.store.db import DeliveryStatus
from dicom_node.store.jobqueue import JobQueue
from dicom_node.store.joblog import DeliveryOutcome, JobSpec

__all__ = ["deliver"]

logger = logging.getLogger(__name__)


def deliver(job: JobSpec, queue: JobQueue, config: Config, out_dir: Path) -> None:
    """One export attempt of ``job``'s derived files (relative to ``out_dir``), recorded in
    ``deliveries`` (nothing when another process claimed the delivery first or it is no
    longer due)."""
    endpoint, error = job_endpoint(job, config)
    delivery_id = queue.begin_delivery(
        job.id, endpoint.ae_title if endpoint else job.dest_ae_title,
        endpoint.host if endpoint else job.dest_host,
        endpoint.port if endpoint else job.dest_port, if_due=True)
    if delivery_id is None:
        return
    if endpoint is None:
        outcome = DeliveryOutcome(DeliveryStatus.FAILED, error=error)
    else:
        files = [out_dir / f for f in job.derived_files]
        outcome = send_files(files, endpoint, calling_aet=config.node.ae_title,
                             timeout=config.export.timeout_seconds)
    state = queue.finish_delivery(delivery_id, outcome, config.export)
    logger.info("job %d delivery: %s -> job %s", job.id, outcome.status.value, state.value)
