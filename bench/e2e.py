"""End-to-end benchmark: last source instance acknowledged -> derived series stored at a PACS.

A simulated subject's T1 (``synthesis.simulate.make_subject(seed)`` rendered
with ``preset("T1")``, cropped to ``n_slices`` axial 1 mm slices, written once
into the cache) is sent by ``/usr/bin/storescu`` to the real ``rtfsyn serve``
with one route (every MR series -> T2) to a dcmtk ``storescp`` standing in for
the PACS. The clock starts when storescu exits (the last instance has been
acknowledged) and stops when the job log says the job is ``done`` (every
derived instance acknowledged by storescp); the stored count is checked. The
split comes from the job log: quiet period (series ``last_received_at`` ->
``completed_at``), waiting (-> job ``started_at``), the pipeline's stage
timings (assembly, conditioning, synthesis, encoding), model loading and other
work of the job (the rest of ``started_at`` -> ``processed_at``), sending
(``send_seconds``) and the wait before it (the rest of ``processed_at`` -> ``finished_at``).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers import DcmtkStoreSCP, NodeServer, send_concurrently, wait_until

logger = logging.getLogger(__name__)
_STAGES = ("assembly", "conditioning", "synthesis", "encoding")


def t1_series(cache_dir: Path, n_slices: int = 180, seed: int = 3,
              uid_seed: int | None = None) -> list[Path]:
    """The simulated subject's T1, ``n_slices`` central axial slices at 1 mm (cached);
    ``uid_seed`` (default ``seed``) seeds the UIDs: another value, another series."""
    uid_seed = seed if uid_seed is None else uid_seed
    from dicom_node.tools.simseries import write_series
    from synthesis.protocol import preset
    from synthesis.simulate import make_subject, render

    folder = Path(cache_dir) / f"t1_seed{seed}_{n_slices}" if uid_seed == seed else \
        Path(cache_dir) / f"t1_seed{seed}_{n_slices}_uid{uid_seed}"
    files = sorted(folder.glob("IM*.dcm"))
    if files:
        return files
    subject = make_subject(seed)
    volume = render(subject, preset("T1"))
    start = max(0, (volume.shape[0] - n_slices) // 2)
    volume = np.ascontiguousarray(volume[start:start + n_slices])
    logger.info("writing the end-to-end T1 series %s into %s", volume.shape, folder)
    return write_series(1000.0 * volume / max(float(volume.max()), 1e-6), (1.0, 1.0, 1.0),
                        preset("T1"), folder, series_description="BENCH T1", seed=uid_seed)


def checkpoint_for(workdir: Path) -> tuple[str, str]:
    """("default", why) when ``synthesis/weights/default.pt`` exists, else a freshly
    initialised default-architecture checkpoint written into ``workdir`` (same cost)."""
    import torch

    from synthesis.checkpoint import default_checkpoint_path, save
    from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig

    if default_checkpoint_path().is_file():
        return "default", f"trained default model ({default_checkpoint_path()})"
    torch.manual_seed(0)
    path = save(RTFSyn(RTFSynConfig()).eval(), Path(workdir) / "fresh-default-arch.pt")
    return str(path), "freshly initialised default architecture (no trained default.pt yet)"


def newest_job(database: Path) -> dict[str, Any] | None:
    """The newest job with its series' timestamps, read-only (None before there is one)."""
    if not database.exists():
        return None
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT j.*, s.last_received_at AS s_last, s.completed_at AS s_completed "
            "FROM jobs j JOIN series s ON s.series_uid = j.series_uid "
            "ORDER BY j.id DESC LIMIT 1").fetchone()
        return dict(row) if row else None
    except sqlite3.OperationalError:  # tables not there yet, or busy
        return None
    finally:
        conn.close()


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def split(job: dict[str, Any]) -> dict[str, float | None]:
    """Seconds per phase, from one job row of the job log."""
    stages = json.loads(job.get("stage_seconds") or "{}")
    processing = _seconds(job["started_at"], job["processed_at"])
    out: dict[str, float | None] = {
        "quiet_period": _seconds(job["s_last"], job["s_completed"]),
        "routing_and_queue": _seconds(job["s_completed"], job["started_at"])}
    out.update({stage: stages.get(stage) for stage in _STAGES})
    out["model_load_and_other"] = (None if processing is None else
                                   processing - sum(v for v in stages.values() if v))
    out["sending"] = job.get("send_seconds")
    delivering = _seconds(job["processed_at"], job.get("finished_at"))
    out["waiting_to_send"] = (None if delivering is None or out["sending"] is None
                              else delivering - out["sending"])
    return out


def run_e2e(files: list[Path], workdir: Path, *, stable_seconds: float,
            timeout_s: float = 600.0, threads: int = 2,
            src: Path | None = None) -> dict[str, Any]:
    """One end-to-end run (fresh node and storescp); the result with its split. ``src``:
    run the ``dicom_node`` package found in that folder (before/after comparisons). The
    ingest while a job synthesizes is :mod:`bench.busy_ingest`."""
    checkpoint, which = checkpoint_for(workdir)
    pacs = DcmtkStoreSCP(workdir / "pacs", ae_title="PACS")
    pacs.start()
    node = NodeServer(workdir / "node", destinations={"PACS": ("PACS", pacs.port)},
                      route_modality="MR", stable_seconds=stable_seconds,
                      checkpoint=checkpoint, threads=threads, src=src)
    try:
        node.start()
        send_concurrently(files, node.port, node.ae_title, 1)
        last_acked = time.perf_counter()
        database = node.data_dir / "joblog.sqlite"

        def finished() -> dict[str, Any] | None:
            job = newest_job(database)
            if job and job["state"] in ("failed", "rejected"):
                raise RuntimeError(f"the job ended {job['state']}: {job['reason']}")
            return job if job and job["state"] == "done" else None

        job = wait_until(finished, timeout_s=timeout_s, what="the derived series at the PACS",
                         interval_s=0.1, alive=node.process.exited if node.process else None)
        total = time.perf_counter() - last_acked
        stored = pacs.count()
    finally:
        node.stop()
        pacs.stop()
    result = {"instances_in": len(files), "instances_stored_at_pacs": stored,
              "seconds_last_instance_to_stored": total, "stable_seconds": stable_seconds,
              "model": which, "torch_threads": threads, "split_seconds": split(job)}
    logger.info("end to end: %.1f s (quiet period %.0f s)", total, stable_seconds)
    return result
