"""The synthesis worker's step: claim a queued job, run the processor on the series' released
instances in an empty folder of its own (``out/job-<id>/attempt-<n>``), record the result
(processed, rejected with the reason, or failed with the error). A worker that lost the job's
claim (:class:`~dicom_node.store.jobqueue.LostClaim`) records nothing. The processor is what
:mod:`dicom_node.node` gives the scheduler (:class:`dicom_node.process.processor.SynthesisProcessor`
in production)."""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dicom_node.errors import RejectedSeries, refused
from dicom_node.store.jobqueue import JobQueue, LostClaim
from dicom_node.store.joblog import JobLog, JobSpec

__all__ = ["ProcessResult", "Processor", "run_one_job", "job_dir"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessResult:
    """What a processor made: the derived files (inside the job folder) and the prompt."""

    files: list[Path]
    prompt: str | None = None
    extra: dict = field(default_factory=dict)


# processor(job, source files (released, eligible), empty output folder) -> result
Processor = Callable[[JobSpec, list[Path], Path], ProcessResult]


def job_dir(out_root: Path, job_id: int) -> Path:
    """A job's output folder: ``out_root/job-<id>`` (``out_root`` is ``data_dir/out``)."""
    return out_root / f"job-{job_id}"


def run_one_job(queue: JobQueue, log: JobLog, processor: Processor, out_root: Path, *,
                on_processed: Callable[[], None] = lambda: None) -> bool:
    """Claim and process one queued job; False when the queue was empty, or when this process
    lost the claim of a job it rejected or failed. ``on_processed`` is called once a result
    is recorded (the scheduler wakes its sender)."""
    job = queue.claim_next()
    if job is None:
        return False
    folder = job_dir(out_root, job.id)
    if folder.exists():  # left by an interrupted attempt: rebuild from scratch
        shutil.rmtree(folder, ignore_errors=True)
    out_dir = folder / f"attempt-{job.attempts}"
    out_dir.mkdir(parents=True)
    files = log.released_instances(job.series_uid)
    logger.info("job %d: %s from series %s (%d instances, attempt %d)", job.id, job.target,
                job.series_uid, len(files), job.attempts)
    started = time.monotonic()
    try:
        if not files:
            raise RejectedSeries("no eligible instance arrived on a released association")
        result = processor(job, files, out_dir)
    except RejectedSeries as exc:
        why = exc.reason
        refused(f"job {job.id} ({job.target} from series {job.series_uid}): {why}")
        return _settle(lambda: queue.rejected(job.id, why, attempt=job.attempts))
    except Exception as exc:  # any processing error ends this job, not the worker
        logger.exception("job %d failed while processing", job.id)
        reason = f"processing error: {type(exc).__name__}: {str(exc)[:300]}"
        return _settle(lambda: queue.failed(job.id, reason, attempt=job.attempts))
    relative = [str(Path(f).resolve().relative_to(folder.resolve()))
                if Path(f).resolve().is_relative_to(folder.resolve()) else str(f)
                for f in result.files]
    seconds = time.monotonic() - started
    if not _settle(lambda: queue.processed(job.id, relative, result.prompt, seconds,
                                           result.extra.get("timings"), attempt=job.attempts)):
        return True
    on_processed()
    logger.info("job %d: %d derived instance(s) in %.1f s", job.id, len(relative), seconds)
    return True


def _settle(step: Callable[[], None]) -> bool:
    """Record a job's outcome; False (logged) when this process lost the job's claim."""
    try:
        step()
    except LostClaim as exc:
        logger.warning("%s", exc)
        return False
    return True
