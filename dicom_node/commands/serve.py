"""``rtfsyn serve --config PATH``: run the node in the foreground until SIGINT/SIGTERM.

On a signal the node stops accepting associations, lets open ones finish
(``--grace`` seconds), stops its threads and exits 0. The process's temporary
folder is ``data_dir/tmp``, so data sets streamed to disk while they arrive
lie on the spool's file system. Work left unfinished
(a job being synthesized) stays in the job log and resumes at the next start.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from dicom_node.commands.common import EXIT_CONFIG, load_config_or_report

logger = logging.getLogger(__name__)
EXIT_START = 3


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="run the DICOM node until SIGINT/SIGTERM",
        description="Receive MR series over DICOM, synthesize the routed targets and send "
                    "the derived series to their destinations.")
    p.add_argument("--config", required=True, type=Path, help="node.toml (see config/node.toml)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds open associations may take to finish at shutdown (default 10)")
    p.set_defaults(func=run)


def _prepare_process(data_dir: Path) -> None:
    """Process-wide settings of a node process."""
    import pydicom.config

    # pydicom's warnings about invalid values quote the value (which may be patient data).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # pynetdicom streams each received data set to a temporary file: keep those on the
    # spool's file system (an atomic rename into the spool, covered by the disk watermark).
    temp_dir = data_dir / "tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(temp_dir)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit 0, 2 (bad configuration) or 3 (cannot start)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.http.services import start_services
    from dicom_node.store.db import SchemaMismatch
    from dicom_node.net.tls import TLSConfigError
    from dicom_node.node import Node

    config = load_config_or_report("serve", args.config)
    if config is None:
        return EXIT_CONFIG
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        logger.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    try:
        _prepare_process(config.node.data_dir)
        node = Node(config)
    except (SchemaMismatch, OSError, SQLAlchemyError) as exc:  # job log of another version,
        # data_dir unusable, database server unreachable
        print(f"rtfsyn serve: cannot open the node's data: {exc}", file=sys.stderr)
        return EXIT_START
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    services = None
    try:
        try:
            node.start()
            services = start_services(config, node)  # [http], [notify]
        except (TLSConfigError, OSError) as exc:  # TLS files, port in use, permissions
            print(f"rtfsyn serve: cannot start the node: {exc}", file=sys.stderr)
            return EXIT_START
        if node.receives:
            host, port = node.address
            print(f"rtfsyn node {config.node.ae_title} listening on {host}:{port}", flush=True)
        else:
            print(f"rtfsyn node {config.node.ae_title} processing jobs from {node.log.where} "
                  f"(roles: {', '.join(config.node.roles)})", flush=True)
        if services.http is not None:
            print("rtfsyn status service on http://%s:%d/" % services.http.address, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if services is not None:
            services.stop()
        node.stop(grace_seconds=args.grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
