"""Run the node benchmarks: ingest, send, end to end, ingest while synthesizing, model scaling.

    python bench/run.py --quick     # < 5 min: one repeat each, small sweeps; prints the ratio table
    python bench/run.py             # full: 3 repeats, full sweeps; JSON + figures for the docs
    python bench/run.py --parts busy --merge   # ingest idle vs while a job synthesizes (~4 min)

Writes ``bench/results/node_bench[_quick].json`` (every run, the summaries,
the host, the load average before and after each part) and, for the full run,
the figures in ``docs/img/``. See docs/PERFORMANCE.md for what each part measures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bench import busy_ingest, e2e, ingest, scaling, send  # noqa: E402

logger = logging.getLogger("bench.run")
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "var" / "bench-cache"  # git-ignored


def host_info() -> dict[str, Any]:
    """Where and when: host, CPUs, versions, the training process if it still runs."""
    import pynetdicom
    import pydicom
    import sqlalchemy
    import torch

    train_pid = ROOT / "runs" / "train.pid"
    training = False
    if train_pid.is_file():
        try:
            os.kill(int(train_pid.read_text().split()[0]), 0)
            training = True
        except (OSError, ValueError):
            training = False
    return {"when_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "pynetdicom": pynetdicom.__version__,
            "pydicom": pydicom.__version__, "sqlalchemy": sqlalchemy.__version__,
            "training_process_running": training}


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _part(name: str, results: dict[str, Any], fn: Any) -> None:
    before = load()
    started = time.perf_counter()
    results[name] = fn()
    results.setdefault("load_average", {})[name] = {"before": before, "after": load()}
    results.setdefault("wall_seconds", {})[name] = round(time.perf_counter() - started, 1)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every selected part; the results dictionary."""
    from tqdm import tqdm

    repeats = 1 if args.quick else args.repeats
    results: dict[str, Any] = {"host": host_info(), "quick": args.quick}
    files = ingest.mr_series(CACHE)
    receivers = ["node", "dcmtk", "orthanc"]
    if args.baseline_src:
        receivers.append(ingest.add_baseline(args.baseline_src))
        results["baseline_src"] = str(args.baseline_src)
    if args.pynetdicom_receiver:
        receivers.append(ingest.add_pynetdicom_receiver())
    n_ingest = repeats * 2 * len(receivers) if "ingest" in args.parts else 0
    with tqdm(total=n_ingest + (2 * repeats if "send" in args.parts else 0),
              desc="ingest + send runs", file=sys.stderr) as bar:
        if "ingest" in args.parts:
            _part("ingest", results, lambda: ingest.run_ingest(
                files, receivers=receivers, repeats=repeats, progress=bar))
            results["ingest_summary"] = ingest.summarize(results["ingest"])
            results["ratio_table"] = ingest.ratio_table(results["ingest_summary"])
            results["paired_ratios"] = {
                f"{a}/{b}": ingest.paired_ratios(results["ingest"], a, b)
                for a, b in [("node", "dcmtk"), ("node", "node_baseline")] if b in receivers}
        if "send" in args.parts:
            _part("send", results, lambda: send.run_send(files, repeats=repeats, progress=bar))
            results["send_summary"] = send.summarize_send(results["send"])
    if "e2e" in args.parts:
        t1 = e2e.t1_series(CACHE)
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            _part("e2e", results, lambda: e2e.run_e2e(
                t1, Path(tmp), stable_seconds=args.stable_seconds, threads=args.threads))
    if "busy" in args.parts:
        jobs = e2e.t1_series(CACHE), e2e.t1_series(CACHE, uid_seed=4)  # two other studies
        copies = busy_ingest.ingest_copies(CACHE, n_slices=args.busy_slices)
        prime = busy_ingest.ingest_copies(CACHE, n_slices=20, copies=1, name="prime")[0]
        with tempfile.TemporaryDirectory(prefix="bench-busy-") as tmp:
            _part("busy_ingest", results, lambda: busy_ingest.run_busy_ingest(
                *jobs, copies, Path(tmp), prime=prime, stable_seconds=args.stable_seconds,
                threads=args.threads))
    if "scaling" in args.parts:
        with tqdm(total=3, desc="model scaling sweeps", file=sys.stderr) as bar:
            _part("scaling", results, lambda: scaling.run_scaling(
                quick=args.quick, threads=args.threads, progress=bar))
    return results


def print_summary(results: dict[str, Any]) -> None:
    """The ratio table and the other headline figures, on stdout."""
    if "ratio_table" in results:
        print("\nIngest, 500 MR 256x256 instances sent by dcmtk storescu (median instances/s):")
        print(ingest.format_ratio_table(results["ratio_table"]))
        for pair, per_assoc in results.get("paired_ratios", {}).items():
            for n_assoc, r in per_assoc.items():
                print(f"{pair} within each repeat, {n_assoc} association(s): median "
                      f"{r['median']:.2f}x (quartiles {r['q1']:.2f}-{r['q3']:.2f}, "
                      f"range {r['min']:.2f}-{r['max']:.2f}, n {r['n']})")
        before = results["ingest_summary"].get("node_baseline")
        for n_assoc, row in sorted((before or {}).items()):
            now = results["ingest_summary"]["node"][n_assoc]["median_instances_per_s"]
            was = row["median_instances_per_s"]
            print(f"node before ({results['baseline_src']}) -> now, {n_assoc} association(s): "
                  f"{was:.0f} -> {now:.0f} instances/s ({now / was:.2f}x)")
        for n_assoc, row in sorted(results["ingest_summary"].get("node_pynetdicom", {}).items()):
            native = results["ingest_summary"]["node"][n_assoc]["median_instances_per_s"]
            print(f"node with receiver = \"pynetdicom\", {n_assoc} association(s): "
                  f"{row['median_instances_per_s']:.0f} instances/s (native: {native:.0f})")
    if "send_summary" in results:
        s = results["send_summary"]
        node, dcmtk = s["node"]["median_instances_per_s"], s["storescu"]["median_instances_per_s"]
        print(f"\nSend to dcmtk storescp: node {node:.0f}/s, dcmtk storescu {dcmtk:.0f}/s "
              f"(node / storescu = {node / dcmtk:.2f})")
    if "e2e" in results:
        e = results["e2e"]
        print(f"\nEnd to end ({e['instances_in']} T1 slices, {e['model']}): "
              f"{e['seconds_last_instance_to_stored']:.1f} s with a quiet period of "
              f"{e['stable_seconds']:g} s; split: "
              + ", ".join(f"{k} {v:.1f}" for k, v in e["split_seconds"].items() if v is not None))
    if "busy_ingest" in results:
        print("\n" + busy_ingest.format_busy(results["busy_ingest"]))
    print(f"\nLoad average (1/5/15 min) per part: {json.dumps(results.get('load_average'))}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="RTFSyn node benchmarks")
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, small model sweeps, quiet period 2 s (< 5 min)")
    parser.add_argument("--repeats", type=int, default=3, help="full run: repeats (default 3)")
    parser.add_argument("--parts", default=None,
                        help="comma-separated subset of ingest,send,e2e,busy,scaling "
                             "(default: all; --quick: all but busy)")
    parser.add_argument("--busy-slices", type=int, default=500,
                        help="busy: slices of each ingest series copy (default 500)")
    parser.add_argument("--no-save", action="store_true",
                        help="print the summary only; write no results JSON and no figures")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--stable-seconds", type=float, default=None,
                        help="the node's quiet period in the end-to-end run "
                             "(default 5, --quick 2)")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also measure the ingest of the dicom_node package in this folder "
                             "(an older version, for before/after)")
    parser.add_argument("--pynetdicom-receiver", action="store_true",
                        help="also measure the ingest of the node with [node] receiver = "
                             "\"pynetdicom\"")
    parser.add_argument("--merge", action="store_true",
                        help="update the existing results JSON with the parts run now")
    parser.add_argument("--tables", action="store_true",
                        help="also print every table of docs/PERFORMANCE.md (Markdown)")
    parser.add_argument("--no-figures", action="store_true", help="do not write docs/img/*.png")
    args = parser.parse_args(argv)
    if args.parts is None:
        args.parts = "ingest,send,e2e,scaling" if args.quick else "ingest,send,e2e,busy,scaling"
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - {"ingest", "send", "e2e", "busy", "scaling"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if args.stable_seconds is None:
        args.stable_seconds = 2.0 if args.quick else 5.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pynetdicom", "synthesis", "dicom_node"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    results = run_all(args)
    if args.no_save:
        print_summary(results)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("node_bench_quick.json" if args.quick else "node_bench.json")
    if args.merge and out.is_file():  # keep the parts this invocation did not run
        merged = json.loads(out.read_text())
        for key in ("load_average", "wall_seconds"):
            merged.setdefault(key, {}).update(results.pop(key, {}))
        merged.setdefault("hosts", [merged.get("host")]).append(results["host"])
        merged.update(results)
        results = merged
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out)
    print_summary(results)
    print(f"\nresults: {out.relative_to(ROOT)}")
    if not args.quick and not args.no_figures:
        from bench.figures import write_figures

        for path in write_figures(results, ROOT / "docs" / "img"):
            print(f"figure: {path.relative_to(ROOT)}")
    if args.tables:
        from bench.figures import markdown_tables

        print("\n" + markdown_tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
