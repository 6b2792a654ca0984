"""Send benchmark: the node's C-STORE export against dcmtk storescu, into dcmtk storescp.

The same files (the ingest series) go to a fresh ``/usr/bin/storescp`` once
with :func:`dicom_node.send.sender.send_files` (in this process, one association,
as a job's delivery does) and once with ``/usr/bin/storescu`` (one
association). Time: from the call (or process start) to its return (exit),
association set-up and release included; the stored count is checked.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench.peers import LOOPBACK, DcmtkStoreSCP, send_concurrently

logger = logging.getLogger(__name__)


def _node_send(files: Sequence[Path], scp: DcmtkStoreSCP) -> float:
    from dicom_node.store.db import DeliveryStatus
    from dicom_node.send.sender import Endpoint, send_files

    start = time.perf_counter()
    outcome = send_files(files, Endpoint(scp.ae_title, LOOPBACK, scp.port),
                         calling_aet="RTFSYN", timeout=60.0)
    elapsed = time.perf_counter() - start
    if outcome.status != DeliveryStatus.OK:
        raise RuntimeError(f"the node's sender failed: {outcome.error}")
    return elapsed


def measure_send_once(sender: str, files: Sequence[Path], workdir: Path) -> dict[str, Any]:
    """One send of ``files`` by ``sender`` ("node" or "storescu") to a fresh storescp."""
    scp = DcmtkStoreSCP(workdir)
    scp.start()
    try:
        if sender == "node":
            seconds = _node_send(files, scp)
        else:
            seconds = send_concurrently(files, scp.port, scp.ae_title, 1)
        stored = scp.count()
    finally:
        scp.stop()
    if stored != len(files):
        raise RuntimeError(f"storescp stored {stored} of {len(files)} instances sent by {sender}")
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    return {"sender": sender, "instances": len(files), "seconds": seconds,
            "instances_per_s": len(files) / seconds, "mb_per_s": megabytes / seconds}


def run_send(files: Sequence[Path], *, repeats: int = 1,
             progress: Any = None) -> list[dict[str, Any]]:
    """The node's sender and storescu, interleaved, ``repeats`` times each; all runs."""
    runs = []
    for repeat in range(repeats):
        for sender in ("node", "storescu"):
            with tempfile.TemporaryDirectory(prefix=f"bench-send-{sender}-") as tmp:
                result = measure_send_once(sender, files, Path(tmp))
            result["repeat"] = repeat
            runs.append(result)
            logger.info("send by %-8s: %.0f instances/s", sender, result["instances_per_s"])
            if progress is not None:
                progress.update(1)
    return runs


def summarize_send(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{sender: {median, best instances/s, median MB/s}}``."""
    import statistics

    out = {}
    for sender in sorted({r["sender"] for r in runs}):
        rates = [r["instances_per_s"] for r in runs if r["sender"] == sender]
        mbs = [r["mb_per_s"] for r in runs if r["sender"] == sender]
        out[sender] = {"median_instances_per_s": statistics.median(rates),
                       "best_instances_per_s": max(rates),
                       "median_mb_per_s": statistics.median(mbs), "n": len(rates)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Send only (e.g. to compare an older ``dicom_node`` put first on ``PYTHONPATH``)."""
    import argparse
    import json

    import dicom_node

    from bench.ingest import mr_series

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path,
                        default=Path(__file__).resolve().parents[1] / "var" / "bench-cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    runs = run_send(mr_series(args.cache), repeats=args.repeats)
    print(json.dumps({"dicom_node": str(Path(dicom_node.__file__).parent),
                      "summary": summarize_send(runs), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
