"""``rtfsyn demo``: see the whole node work in one command, on this machine only.

Starts a node and a receiving storage SCP on loopback, sends them a simulated
T1w series, receives the synthesized series, writes a PNG preview and prints
where everything is. ``--keep-running`` leaves the node up afterwards (until
Ctrl-C) so it can be tried with ``echoscu``/``storescu``.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

EXIT_FAILED = 1
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "rtfsyn-demo"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="simulate a T1 series, synthesize a contrast through a local node, show it",
        description="Run a node and a receiver on loopback, send them a simulated T1w series "
                    "and write the synthesized series and a PNG preview into a run folder.")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"folder for the run folders (default {DEFAULT_WORKDIR}: outside any "
                        "repository; the summary prints where everything is)")
    p.add_argument("--target", default="T2", choices=["T2", "PD", "FLAIR", "T1", "T1SE"],
                   type=str.upper, help="contrast to synthesize (default T2)")
    p.add_argument("--checkpoint", default="default",
                   help="'default' (the packaged model) or the path to a .pt checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=2_000_000,
                   help="which simulated head (default: the first held-out test subject, 2000000)")
    p.add_argument("--voxel-mm", type=int, default=1,
                   help="isotropic voxel size of the simulated series, mm (default 1)")
    p.add_argument("--slices", type=int, default=48,
                   help="axial slices of the simulated series (default 48)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds to wait for the synthesized series (default 900)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the node running after the demo until Ctrl-C / SIGTERM")
    p.set_defaults(func=run)


def _summary(result: Any) -> str:
    job = result.job
    rows = [
        ("simulated source series", f"{result.input_dir}  ({len(result.input_files)} files)"),
        (f"synthetic {job['target']} received", f"{result.received_dir}  "
                                                f"({len(result.received_files)} files)"),
        ("node's copy of the result", str(result.node_output_dir)),
        ("job log (SQLite)", f"{result.job_log}"),
        ("  read it with", f"rtfsyn status --config {result.config_path}"),
        ("preview (source | synthetic)", str(result.preview_png)),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"RTFSyn demo: T1w -> {job['target']} done in {result.seconds:.1f} s "
             f"(job {job['id']}, synthesis {job.get('process_seconds') or 0:.1f} s)"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(f"  prompt: {job.get('prompt')}")
    lines.append("Synthetic images are for research and demonstration, not for diagnosis.")
    return "\n".join(lines)


def _hold_until_signal(result: Any) -> None:
    """Print the summary, then block until SIGINT/SIGTERM."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    host, port = result.node_address
    print(_summary(result))
    print(f"The node keeps running on {host}:{port} (AE RTFSYN, any calling AE, loopback only). "
          "Press Ctrl-C to stop it.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    from dicom_node.commands.progress_view import ProgressView
    from dicom_node.tools.demo import DEMO_STAGES, DemoError, DemoOptions, run_demo

    try:
        options = DemoOptions(workdir=args.workdir, target=args.target, checkpoint=args.checkpoint,
                              device=args.device, seed=args.seed, voxel_mm=args.voxel_mm,
                              slices=args.slices, timeout_s=args.timeout)
    except ValueError as exc:
        print(f"rtfsyn demo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    view = ProgressView(list(DEMO_STAGES), descriptions=DEMO_STAGES)
    try:
        result = run_demo(options, hold=_hold_until_signal if args.keep_running else None,
                          stage=view.stage, progress=view.progress)
    except (DemoError, FileNotFoundError) as exc:
        print(f"rtfsyn demo failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        view.close()
    if not args.keep_running:
        print(_summary(result))
    return 0
