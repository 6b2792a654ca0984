"""``rtfsyn serve --config PATH``: run the node in the foreground until SIGINT/SIGTERM.

On a signal the node stops accepting associations, lets open ones finish
(``--grace`` seconds), stops its threads and exits 0. Work left unfinished
(a job being synthesized) stays in the job log and resumes at the next start.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
EXIT_CONFIG = 2


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="run the DICOM node until SIGINT/SIGTERM",
        description="Receive MR series over DICOM, synthesize the routed targets and send "
                    "the derived series to their destinations.")
    p.add_argument("--config", required=True, type=Path, help="node.toml (see config/node.toml)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds open associations may take to finish at shutdown (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dicom_node.config import ConfigError, load_config
    from dicom_node.service import Node

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"rtfsyn serve: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        logger.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    node = Node(config)
    try:
        node.start()
        host, port = node.address
        print(f"rtfsyn node {config.node.ae_title} listening on {host}:{port}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        node.stop(grace_seconds=args.grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
