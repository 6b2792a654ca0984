"""Scale-out benchmark: derived series per hour with one and with two worker processes.

    python bench/scaleout.py                      # 4 series x 60 slices, 3 repeats, 1 and 2 workers
    python bench/scaleout.py --series 2 --repeats 1 --slices 32   # a quick look

A PostgreSQL server of the benchmark's own (Debian's binaries, durable settings)
holds the job log; one ``receive`` process and W ``process`` processes
(``rtfsyn serve`` children, one torch thread each, the shipped model on the CPU
unless ``--checkpoint``) share it and a spool, as in docs/OPERATIONS.md. Each
worker first synthesizes a warm-up series (model loading is not measured). Then
``--series`` simulated T1 series (``bench.e2e.t1_series``: 1 mm axial slices)
are sent by storescu at once; every one is routed to T2 and delivered to a dcmtk
``storescp``. Throughput = series / (last job finished - first job started),
from the job log, per hour. The load average before and after each run is kept:
this machine is shared, and a figure is only as good as the load it ran under.

Writes ``bench/results/scaleout.json``: the command, the host, every run and the
median per worker count.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bench.e2e import t1_series  # noqa: E402
from bench.peers import DcmtkStoreSCP, send_concurrently, wait_until  # noqa: E402
from bench.run import host_info, load  # noqa: E402
from tests.helpers.postgres import PostgresCluster, free_port  # noqa: E402
from tests.helpers.scaleout import ScaleOut  # noqa: E402

logger = logging.getLogger("bench.scaleout")
RESULTS = ROOT / "bench" / "results" / "scaleout.json"
CACHE = ROOT / "var" / "bench-cache"  # git-ignored
_FINAL = "('done', 'failed', 'rejected')"


def _checkpoint(name: str) -> Path:
    if name != "default":
        return Path(name).resolve()
    from synthesis.checkpoint import default_checkpoint_path

    return default_checkpoint_path()


def _wait_final(nodes: ScaleOut, n_jobs: int, timeout_s: float) -> None:
    wait_until(lambda: nodes.query(f"SELECT count(*) FROM jobs WHERE state IN {_FINAL}")[0][0]
               >= n_jobs, timeout_s=timeout_s, what=f"{n_jobs} final jobs", interval_s=0.5)


def _warm_up(nodes: ScaleOut, workers: int, slices: int, timeout_s: float) -> int:
    """Send warm-up series until every worker has synthesized one; how many were sent."""
    sent = 0
    while (missing := workers - len(nodes.query(
            "SELECT DISTINCT processed_by FROM jobs WHERE processed_by IS NOT NULL"))) > 0:
        for _ in range(missing):
            sent += 1
            send_concurrently(t1_series(CACHE, slices, uid_seed=1000 + sent), nodes.receiver_port,
                              "RTFSYN", 1)
        _wait_final(nodes, sent, timeout_s)
    return sent


def measure_once(workers: int, args: argparse.Namespace, cluster: PostgresCluster,
                 run: int) -> dict[str, Any]:
    """One deployment with ``workers`` worker processes: warm up, send, time; one result."""
    url = cluster.create_database(f"bench_{workers}w_{run}")
    with tempfile.TemporaryDirectory(prefix="rtfsyn-scaleout-", dir=ROOT / "var") as tmp:
        pacs = DcmtkStoreSCP(Path(tmp) / "pacs")
        pacs.start()
        nodes = ScaleOut(Path(tmp), url, _checkpoint(args.checkpoint), pacs.port,
                         lease_seconds=args.lease, stable_seconds=args.stable,
                         dest_ae=pacs.ae_title)
        load_before = load()
        try:
            nodes.start_receiver()
            for i in range(workers):
                nodes.start_worker(f"worker-{i + 1}")
            warm = _warm_up(nodes, workers, args.slices, args.timeout)
            first_id = nodes.query("SELECT coalesce(max(id), 0) FROM jobs")[0][0]
            for k in range(args.series):
                send_concurrently(t1_series(CACHE, args.slices, uid_seed=2000 + k),
                                  nodes.receiver_port, "RTFSYN", 1)
            _wait_final(nodes, warm + args.series, args.timeout)
            rows = nodes.query("SELECT state, started_at, finished_at, process_seconds, "
                               "processed_by FROM jobs WHERE id > :first", first=first_id)
        finally:
            nodes.stop_all()
            pacs.stop()
    states = sorted({r[0] for r in rows})
    span = (max(r[2] for r in rows) - min(r[1] for r in rows)).total_seconds()
    result = {"workers": workers, "run": run, "series": len(rows), "states": states,
              "span_s": round(span, 2), "series_per_hour": round(3600.0 * len(rows) / span, 1),
              "process_s_median": round(statistics.median(r[3] for r in rows), 2),
              "jobs_per_worker": sorted(
                  sum(1 for r in rows if r[4] == w) for w in {r[4] for r in rows}),
              "load_before": load_before, "load_after": load()}
    logger.info("%d worker(s), run %d: %s series/h (%d series in %.1f s; load %s -> %s)",
                workers, run, result["series_per_hour"], len(rows), span, load_before,
                result["load_after"])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=4, help="measured series per run")
    parser.add_argument("--slices", type=int, default=60, help="1 mm slices per series")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--checkpoint", default="default", help="'default' or a checkpoint")
    parser.add_argument("--lease", type=float, default=30.0, help="[node] lease_seconds")
    parser.add_argument("--stable", type=float, default=1.0, help="[node] stable_seconds")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per wait")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    (ROOT / "var").mkdir(exist_ok=True)
    runs = []
    with PostgresCluster(free_port(), durable=True) as cluster:
        for run in range(1, args.repeats + 1):
            for workers in args.workers:  # interleaved: load drifts hit both alike
                runs.append(measure_once(workers, args, cluster, run))
    summary = {str(w): {"median_series_per_hour": round(statistics.median(
        r["series_per_hour"] for r in runs if r["workers"] == w), 1),
        "runs": [r["series_per_hour"] for r in runs if r["workers"] == w]}
        for w in args.workers}
    report = {"command": "python bench/scaleout.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
              "host": host_info(), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                for k, v in vars(args).items()},
              "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for w, s in summary.items():
        print(f"{w} worker process(es): median {s['median_series_per_hour']} series/h "
              f"(runs {s['runs']})")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
