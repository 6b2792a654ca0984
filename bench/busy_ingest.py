"""Does synthesis block receiving? The node's ingest rate while it synthesizes a job, next to
its ingest rate when idle, measured in the same run.

One real node (``rtfsyn serve``, CPU, ``threads`` torch threads) routes every MR series
to T1 at a dcmtk ``storescp`` standing in for the PACS, except the series described
``BENCH INGEST ...``, which it receives, spools and records but never processes. Three
copies of the same ingest series (``n_slices`` MR slices of 256x256, each copy its own
study and UIDs, written once into the cache) are sent by dcmtk ``storescu`` over one
association (the clock as in :mod:`bench.ingest`: first storescu start to its exit),
after a small excluded series sent unmeasured (start-up work is not counted):

1. ``idle_before``: nothing queued or running;
2. ``busy``: while a job synthesizes the T1 series of another study (sent first; the
   copy is sent as soon as the job log says the job is ``running``). An earlier job on a
   third study has loaded the model, so this one synthesizes from its start. Whether
   the job was still running when the last instance was acknowledged is recorded (the
   figure only counts if it was);
3. ``idle_after``: once that job is done.

The result: instances/s of each phase, the load average around each, and
``busy_over_idle`` = busy / mean(idle_before, idle_after).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from bench.e2e import checkpoint_for, newest_job
from bench.ingest import phantom_volume
from bench.peers import DcmtkStoreSCP, NodeServer, send_concurrently, wait_until

logger = logging.getLogger(__name__)

INGEST_DESCRIPTION = "BENCH INGEST"
_SIZE = (256, 256)


def ingest_copies(cache_dir: Path, n_slices: int = 500, copies: int = 3,
                  name: str = "copy") -> list[list[Path]]:
    """``copies`` copies of the ingest series (same pixels, each its own study), cached."""
    from dicom_node.tools.simseries import write_series
    from synthesis.protocol import preset

    out = []
    for copy in range(copies):
        folder = Path(cache_dir) / f"ingest{n_slices}_{_SIZE[0]}_{name}{copy}"
        files = sorted(folder.glob("IM*.dcm"))
        if len(files) != n_slices:
            shutil.rmtree(folder, ignore_errors=True)
            volume = phantom_volume(n_slices, _SIZE)
            logger.info("writing ingest series copy %d (%d slices) into %s", copy, n_slices,
                        folder)
            files = write_series(volume, (1.0, 1.0, 1.0), preset("T1"), folder,
                                 series_description=f"{INGEST_DESCRIPTION} {name} {copy}",
                                 seed=(2000 if name == "prime" else 1000) + copy)
        out.append(files)
    return out


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _timed_ingest(node: NodeServer, files: list[Path]) -> dict[str, Any]:
    before = _load()
    seconds = send_concurrently(files, node.port, node.ae_title, 1)
    return {"instances": len(files), "seconds": seconds,
            "instances_per_s": len(files) / seconds,
            "load_average": {"before": before, "after": _load()}}


def _job(database: Path, job_id: int, state: str, *,
         past: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Job ``job_id`` once in ``state``; raises if it failed, or already went ``past`` it."""
    job = newest_job(database)
    if not job or job["id"] != job_id:
        return None
    if job["state"] in ("failed", "rejected"):
        raise RuntimeError(f"job {job_id} ended {job['state']}: {job['reason']}")
    if job["state"] in past:
        raise RuntimeError(f"job {job_id} was already {job['state']} before the busy ingest "
                           "could start (synthesis too short to measure against)")
    return job if job["state"] == state else None


def _phases(node: NodeServer, warm_job: list[Path], busy_job: list[Path],
            copies: list[list[Path]], timeout_s: float) -> dict[str, Any]:
    """idle, (job 1: loads the model), busy during job 2, idle."""
    database = node.data_dir / "joblog.sqlite"
    alive = node.process.exited if node.process else None
    out = {"idle_before": _timed_ingest(node, copies[0])}
    started = time.perf_counter()
    send_concurrently(warm_job, node.port, node.ae_title, 1)
    wait_until(lambda: _job(database, 1, "done"), timeout_s=timeout_s,
               what="job 1 (model loading) to be done", interval_s=0.2, alive=alive)
    out["job_1_seconds"] = round(time.perf_counter() - started, 1)
    send_concurrently(busy_job, node.port, node.ae_title, 1)
    wait_until(lambda: _job(database, 2, "running", past=("sending", "done")),
               timeout_s=timeout_s, what="job 2 to start", interval_s=0.05, alive=alive)
    busy = _timed_ingest(node, copies[1])
    job = newest_job(database)
    busy["job_still_running_at_end"] = bool(job and job["id"] == 2 and
                                            job["state"] == "running")
    out["busy"] = busy
    wait_until(lambda: _job(database, 2, "done"), timeout_s=timeout_s,
               what="job 2 to be done", interval_s=0.2, alive=alive)
    out["idle_after"] = _timed_ingest(node, copies[2])
    return out


def run_busy_ingest(warm_job: list[Path], busy_job: list[Path], copies: list[list[Path]],
                    workdir: Path, *, prime: Sequence[Path] = (), stable_seconds: float = 5.0,
                    threads: int = 2, settle_seconds: float = 3.0,
                    timeout_s: float = 900.0) -> dict[str, Any]:
    """The phases above on one fresh node. ``warm_job`` and ``busy_job``: two MR series of
    other studies, processed one after the other (the first loads the model, so the busy
    ingest overlaps synthesis, not model loading); ``copies`` from :func:`ingest_copies`.
    Before it all the node is left ``settle_seconds`` after its start and ``prime`` (a
    small excluded series) is sent unmeasured, so start-up work is not counted."""
    if len(copies) != 3:
        raise ValueError(f"three ingest series copies are needed. Found {len(copies)}.")
    checkpoint, which = checkpoint_for(workdir)
    pacs = DcmtkStoreSCP(workdir / "pacs", ae_title="PACS")
    pacs.start()
    node = NodeServer(workdir / "node", destinations={"PACS": ("PACS", pacs.port)},
                      route_modality="MR", stable_seconds=stable_seconds,
                      checkpoint=checkpoint, threads=threads,
                      route_exclude={"SeriesDescription": f"^{INGEST_DESCRIPTION}"})
    try:
        node.start()
        time.sleep(settle_seconds)
        if prime:
            send_concurrently(prime, node.port, node.ae_title, 1)
        result = _phases(node, warm_job, busy_job, copies, timeout_s)
        received = node.count()
    finally:
        node.stop()
        pacs.stop()
    idle = (result["idle_before"]["instances_per_s"] + result["idle_after"]["instances_per_s"]) / 2
    expected = len(warm_job) + len(busy_job) + len(prime) + sum(len(c) for c in copies)
    result.update({"model": which, "torch_threads": threads, "stable_seconds": stable_seconds,
                   "job_series_instances": len(busy_job), "instances_spooled": received,
                   "instances_expected": expected,
                   "busy_over_idle": result["busy"]["instances_per_s"] / idle})
    logger.info("ingest: idle %.0f/s, while synthesizing %.0f/s (%.2fx)", idle,
                result["busy"]["instances_per_s"], result["busy_over_idle"])
    return result


def format_busy(result: dict[str, Any]) -> str:
    """One line per phase, for the summary."""
    lines = [f"Ingest of {result['busy']['instances']} MR 256x256 instances (dcmtk storescu, "
             f"one association), same run:"]
    for phase in ("idle_before", "busy", "idle_after"):
        r = result[phase]
        extra = (f" (job still running at the end: {r['job_still_running_at_end']})"
                 if phase == "busy" else "")
        lines.append(f"  {phase:<12} {r['instances_per_s']:6.0f} instances/s, load "
                     f"{r['load_average']['before'][0]:.2f}{extra}")
    lines.append(f"  busy / mean(idle) = {result['busy_over_idle']:.2f}; spooled "
                 f"{result['instances_spooled']} of {result['instances_expected']}")
    return "\n".join(lines)
