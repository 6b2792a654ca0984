"""Ingest benchmark: instances/s and MB/s received by the node, dcmtk storescp and Orthanc.

The same series (``n`` classic MR slices of 256x256, 16-bit, written once with
:func:`dicom_node.tools.simseries.write_series` into a cache folder) is sent by dcmtk
``/usr/bin/storescu`` (``TCP_NODELAY=1``) over one or several concurrent
associations to each receiver, started fresh (empty storage) for every
measurement. The time is from starting the first storescu to the exit of the
last one (storescu exits after the last C-STORE response, so every instance
has been acknowledged); the stored count is checked afterwards.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench.peers import DcmtkStoreSCP, NodeServer, OrthancServer, Receiver, send_concurrently

logger = logging.getLogger(__name__)

SERIES_SHAPE = (500, 256, 256)  # (slices, rows, columns)
RECEIVERS: dict[str, Callable[[Path], Receiver]] = {
    "node": lambda workdir: NodeServer(workdir, stable_seconds=5.0),  # the default quiet period
    "dcmtk": lambda workdir: DcmtkStoreSCP(workdir),
    "orthanc": lambda workdir: OrthancServer(workdir),
}


def mr_series(cache_dir: Path, n_slices: int = SERIES_SHAPE[0],
              size: tuple[int, int] = SERIES_SHAPE[1:]) -> list[Path]:
    """The benchmark series (written once into ``cache_dir/mr<n>_<rows>``); its files."""
    from dicom_node.tools.simseries import write_series
    from synthesis.protocol import preset

    folder = Path(cache_dir) / f"mr{n_slices}_{size[0]}"
    files = sorted(folder.glob("IM*.dcm"))
    if len(files) == n_slices:
        return files
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("writing the benchmark series (%d slices) into %s", n_slices, folder)
    return write_series(phantom_volume(n_slices, size), (1.0, 1.0, 1.0), preset("T1"), folder,
                        series_description="BENCH MR", seed=11)


def phantom_volume(n_slices: int, size: tuple[int, int]) -> np.ndarray:
    """The benchmark's pixel data: an elliptic "head" brightening along z, plus noise (seeded)."""
    rng = np.random.default_rng(7)
    z = np.linspace(0.0, 1.0, n_slices, dtype=np.float32)[:, None, None]
    yy, xx = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in size),
                         indexing="ij")
    head = ((yy**2 + xx**2) < 0.8).astype(np.float32)[None]
    return 1000.0 * head * (0.5 + 0.3 * z) + 50.0 * rng.random((n_slices, *size),
                                                                 dtype=np.float32)


def add_baseline(src: Path) -> str:
    """Register the node found in ``src`` as receiver ``node_baseline``; its key."""
    RECEIVERS["node_baseline"] = lambda workdir: NodeServer(workdir, stable_seconds=5.0,
                                                            src=Path(src).resolve())
    return "node_baseline"


def add_pynetdicom_receiver() -> str:
    """Register the node with ``[node] receiver = "pynetdicom"`` as receiver
    ``node_pynetdicom``; its key."""
    RECEIVERS["node_pynetdicom"] = lambda workdir: NodeServer(
        workdir, stable_seconds=5.0, extra_node=['receiver = "pynetdicom"'])
    return "node_pynetdicom"


def measure_once(kind: str, files: Sequence[Path], associations: int,
                 workdir: Path) -> dict[str, Any]:
    """Start a fresh ``kind`` receiver, send ``files``, check the count; one result."""
    receiver = RECEIVERS[kind](workdir)
    receiver.start()
    try:
        seconds = send_concurrently(files, receiver.port, receiver.ae_title, associations)
        stored = receiver.count()
    finally:
        receiver.stop()
    if stored != len(files):
        raise RuntimeError(f"{receiver.name} stored {stored} of {len(files)} instances")
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    return {"receiver": kind, "associations": associations, "instances": len(files),
            "seconds": seconds, "instances_per_s": len(files) / seconds,
            "mb_per_s": megabytes / seconds}


def run_ingest(files: Sequence[Path], *, receivers: Sequence[str] = ("node", "dcmtk", "orthanc"),
               associations: Sequence[int] = (1, 4), repeats: int = 1,
               progress: Any = None) -> list[dict[str, Any]]:
    """Every (receiver, associations) pair ``repeats`` times, interleaved so that a change
    of background load hits every receiver alike (the receivers' order reverses every other
    repeat, so none always goes first); all runs (see :func:`summarize`,
    :func:`paired_ratios`)."""
    runs = []
    for repeat in range(repeats):
        for n_assoc in associations:
            for kind in (receivers if repeat % 2 == 0 else list(receivers)[::-1]):
                with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
                    result = measure_once(kind, files, n_assoc, Path(tmp))
                result["repeat"] = repeat
                runs.append(result)
                logger.info("%-8s %d assoc: %.0f instances/s", kind, n_assoc,
                            result["instances_per_s"])
                if progress is not None:
                    progress.update(1)
                time.sleep(0.5)
    return runs


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{receiver: {associations: {median, best instances/s, MB/s}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    keys = sorted({(r["receiver"], r["associations"]) for r in runs})
    for kind, n_assoc in keys:
        rates = [r["instances_per_s"] for r in runs
                 if r["receiver"] == kind and r["associations"] == n_assoc]
        mbs = [r["mb_per_s"] for r in runs
               if r["receiver"] == kind and r["associations"] == n_assoc]
        out.setdefault(kind, {})[str(n_assoc)] = {
            "median_instances_per_s": float(np.median(rates)), "best_instances_per_s": max(rates),
            "median_mb_per_s": float(np.median(mbs)), "n": len(rates)}
    return out


def paired_ratios(runs: Sequence[dict[str, Any]], numerator: str,
                  denominator: str) -> dict[str, dict[str, float]]:
    """``numerator`` / ``denominator`` instances/s within each repeat (the two measured minutes
    apart, under the same background load), per association count: ``{associations: {median,
    q1, q3, min, max, n}}`` of those per-repeat ratios. Drift between repeats cancels here,
    where it does not in a ratio of medians."""
    rates: dict[tuple[str, int, int], float] = {
        (r["receiver"], r["associations"], r.get("repeat", 0)): r["instances_per_s"] for r in runs}
    out: dict[str, dict[str, float]] = {}
    for n_assoc in sorted({a for _, a, _ in rates}):
        ratios = [rates[(numerator, n_assoc, k)] / rates[(denominator, n_assoc, k)]
                  for (kind, a, k) in sorted(rates)
                  if kind == numerator and a == n_assoc and (denominator, a, k) in rates]
        if ratios:
            q1, median, q3 = np.percentile(ratios, [25, 50, 75])
            out[str(n_assoc)] = {"median": float(median), "q1": float(q1), "q3": float(q3),
                                 "min": min(ratios), "max": max(ratios), "n": len(ratios)}
    return out


def ratio_table(summary: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Rows (associations, node, dcmtk, Orthanc instances/s, node/dcmtk, node/Orthanc)."""
    rows = []
    for n_assoc in sorted(summary.get("node", {}), key=int):
        node = summary["node"][n_assoc]["median_instances_per_s"]
        dcmtk = summary.get("dcmtk", {}).get(n_assoc, {}).get("median_instances_per_s")
        orthanc = summary.get("orthanc", {}).get(n_assoc, {}).get("median_instances_per_s")
        rows.append({"associations": int(n_assoc), "node": node, "dcmtk": dcmtk,
                     "orthanc": orthanc, "node_over_dcmtk": node / dcmtk if dcmtk else None,
                     "node_over_orthanc": node / orthanc if orthanc else None})
    return rows


def format_ratio_table(rows: Sequence[dict[str, Any]]) -> str:
    """The ratio table as Markdown."""
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = ["| associations | node (inst/s) | dcmtk storescp | Orthanc | node / dcmtk "
             "| node / Orthanc |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['associations']} | {num(r['node'], '.0f')} | "
                     f"{num(r['dcmtk'], '.0f')} | {num(r['orthanc'], '.0f')} | "
                     f"{num(r['node_over_dcmtk'], '.2f')} | {num(r['node_over_orthanc'], '.2f')} |")
    return "\n".join(lines)
