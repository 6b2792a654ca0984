"""Ingest cost A/B: the node's CPU time per received instance, this checkout against an older one.

On a machine shared with other work, wall-clock ingest rates swing by 2x from one run to the
next (the other processes take the CPU). The CPU seconds the node process itself spends per
instance move much less, so a before/after of a change is measured here as that: for each
repeat, a fresh node of each version (``bench.peers.NodeServer``, waited for until its
warm-up is done) receives the benchmark series from dcmtk ``storescu`` over one
association; the node's user + system CPU time (``/proc/PID/stat``) is read before and after.
The versions alternate (and which goes first), so a change of background load hits both
alike.

    python -m bench.ingest_cpu --baseline-src /tmp/node-before --repeats 5

prints, per version, the median CPU milliseconds per instance and instances/s, and the
ratio now / before.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench.ingest import mr_series
from bench.peers import NodeServer, send_concurrently

CACHE = Path(__file__).resolve().parents[1] / "var" / "bench-cache"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(files: Sequence[Path], src: Path | None) -> dict[str, float]:
    """One fresh node (``src``: an older checkout) receiving ``files``; its CPU ms per
    instance and instances/s."""
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        node = NodeServer(Path(tmp), stable_seconds=5.0, src=src)
        node.start()
        try:
            before, started = cpu_seconds(node.pid), time.perf_counter()
            send_concurrently(files, node.port, node.ae_title, 1)
            wall, cpu = time.perf_counter() - started, cpu_seconds(node.pid) - before
            stored = node.count()
        finally:
            node.stop()
    if stored != len(files):
        raise RuntimeError(f"the node stored {stored} of {len(files)} instances")
    return {"cpu_ms_per_instance": 1000.0 * cpu / len(files),
            "instances_per_s": len(files) / wall}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True,
                        help="folder holding the older dicom_node package")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    files = mr_series(CACHE)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
    load = [os.getloadavg()[0]]
    versions = [("before", args.baseline_src), ("now", None)]
    for k in range(args.repeats):
        for version, src in versions if k % 2 == 0 else versions[::-1]:  # order alternates
            result = measure(files, src)
            runs[version].append(result)
            print(f"repeat {k + 1} {version:<6} {result['cpu_ms_per_instance']:.2f} CPU ms "
                  f"per instance, {result['instances_per_s']:.0f} instances/s", flush=True)
        load.append(os.getloadavg()[0])
    summary: dict[str, Any] = {v: {key: statistics.median(r[key] for r in rs)
                                   for key in ("cpu_ms_per_instance", "instances_per_s")}
                               for v, rs in runs.items()}
    for version, s in summary.items():
        print(f"median {version:<6} {s['cpu_ms_per_instance']:.2f} CPU ms per instance, "
              f"{s['instances_per_s']:.0f} instances/s")
    ratio = summary["now"]["cpu_ms_per_instance"] / summary["before"]["cpu_ms_per_instance"]
    print(f"CPU per instance now / before: {ratio:.3f}; 1-min load average during the runs: "
          f"{min(load):.1f}-{max(load):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
