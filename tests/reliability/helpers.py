"""Helpers of the reliability suite: an in-process node with the tiny model, status reads,
good and bad series, raw-socket peers and C-ECHO checks.

Everything runs on loopback, on ports the test picks; every node or server a
test starts is stopped by the test; readiness is polled with a deadline.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydicom.uid import generate_uid
from pynetdicom.sop_class import Verification

from tests.helpers.dicom_factory import T2_TSE, make_series
from tests.helpers.harness import dicom_echo
from dicom_node.store.status import build_report
from dicom_node.config import load_config
from dicom_node.node import Node
from dicom_node.net.pdu import PDU_HEADER
from tests.helpers.node import NODE_AET, node_settings, wait_for, write_config

__all__ = ["RelNode", "NodeFactory", "echo_ok", "small_series", "FINAL_JOB_STATES",
           "raw_connect", "associate_rq_pdu", "received_by"]

FINAL_JOB_STATES = frozenset({"done", "failed", "rejected"})
SMALL_SHAPE = (8, 24, 24)  # slices, rows, columns: tiny, so the tiny model runs in seconds
# The small series cover 8 x 2 mm = 16 mm, less than the 20 mm a clinical route asks for
# (dicom_node.process.eligibility); the test routes accept them.
SMALL_ROUTE = {"name": "mr", "match": {"Modality": "MR"}, "targets": ["T2"],
               "destination": "PACS", "eligibility": {"min_coverage_mm": 10.0}}


def small_series(folder: Path, *, n_slices: int = SMALL_SHAPE[0], seed: int = 0,
                 size: int = SMALL_SHAPE[1], **kwargs: Any) -> list[Path]:
    """A small, valid axial T2 MR series of ``size`` x ``size`` slices (``kwargs`` go to
    :func:`make_series`)."""
    rng = np.random.default_rng(seed)
    volume = rng.uniform(0.0, 1000.0, size=(n_slices, size, size))
    kwargs.setdefault("tags", T2_TSE)
    return make_series(folder, volume, **kwargs)


def echo_ok(port: int, called: str = NODE_AET, calling: str = "ECHOSCU",
            timeout: float = 10.0, tls_args: Any = None) -> bool:
    """True when the node at ``port`` answers a C-ECHO with Success."""
    return dicom_echo(port, called, calling_ae=calling, timeout_s=timeout, tls_args=tls_args)


class RelNode:
    """A :class:`~dicom_node.node.Node` configured in ``workdir`` (TOML written there)
    routing every MR series to T2 at ``dest_port`` (AE ``TESTPACS``)."""

    def __init__(self, workdir: Path, *, dest_port: int | None = None, synthesizer: Any = None,
                 processor: Any = None, disk: Any = None, **sections: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        routes = sections.pop("routes", None)
        destinations = sections.pop("destinations", None)
        if dest_port is not None:
            destinations = destinations or {"PACS": {"ae_title": "TESTPACS",
                                                     "host": "127.0.0.1", "port": dest_port}}
            routes = routes or [SMALL_ROUTE]
        extra: dict[str, Any] = dict(sections)
        if destinations:
            extra["destinations"] = destinations
        if routes:
            extra["routes"] = routes
        self.settings = node_settings(workdir, **extra)
        self.config_path = write_config(self.settings, workdir / "node.toml")
        self.config = load_config(self.config_path)
        self.node = Node(self.config, synthesizer=synthesizer, processor=processor, disk=disk)

    @property
    def port(self) -> int:
        """The DICOM port the node listens on."""
        return self.node.address[1]

    def start(self) -> "RelNode":
        """Start the node (returns once it listens)."""
        self.node.start()
        return self

    def stop(self) -> None:
        """Stop the node (short grace period)."""
        self.node.stop(grace_seconds=2.0)

    def status(self) -> dict[str, Any]:
        """What ``rtfsyn status --json`` prints, read from the job log."""
        return build_report(self.config.database_path)

    def series(self, series_uid: str) -> dict[str, Any] | None:
        """The status row of one series (None when unknown)."""
        return next((s for s in self.status()["series"] if s["series_uid"] == series_uid), None)

    def jobs_of(self, series_uid: str) -> list[dict[str, Any]]:
        """The status rows of a series' jobs."""
        return [j for j in self.status()["jobs"] if j["series_uid"] == series_uid]

    def wait_series(self, series_uid: str, states: set[str], timeout: float = 30.0
                    ) -> dict[str, Any]:
        """Poll until the series reaches one of ``states``; its status row."""
        return wait_for(lambda: (s := self.series(series_uid)) and s["state"] in states and s,
                        timeout=timeout, interval=0.1, what=f"series in {sorted(states)}")

    def wait_jobs_final(self, series_uid: str, n: int = 1, timeout: float = 120.0
                        ) -> list[dict[str, Any]]:
        """Poll until ``n`` jobs of the series are final (done, failed, rejected)."""
        def final() -> list[dict[str, Any]] | None:
            jobs = self.jobs_of(series_uid)
            done = [j for j in jobs if j["state"] in FINAL_JOB_STATES]
            return done if len(done) >= n else None
        return wait_for(final, timeout=timeout, interval=0.2, what=f"{n} final job(s)")

    def assert_serving(self, pacs: Any, folder: Path) -> None:
        """The node still answers C-ECHO and processes and delivers a good series."""
        if not echo_ok(self.port):
            raise AssertionError("the node must answer C-ECHO after the bad input")
        from tests.helpers.node import send_files

        files = small_series(folder / f"good-{time.monotonic_ns()}")
        statuses = send_files(files, self.port)
        if set(statuses) != {0}:
            raise AssertionError(f"a good series must be stored with status 0. Found {statuses}")
        series_uid = _series_uid(files[0])
        jobs = self.wait_jobs_final(series_uid)
        if [j["state"] for j in jobs] != ["done"]:
            raise AssertionError(f"the good series' job must be done. Found {jobs}")
        n = jobs[0]["n_derived"]
        got = received_by(pacs, jobs[0]["derived_series_uid"])
        if n < 1 or got != (n, n):
            raise AssertionError(f"the destination must hold the {n} derived instances once "
                                 f"each. Found (received, distinct) = {got}")


NodeFactory = Callable[..., RelNode]


def received_by(pacs: Any, derived_series_uid: str) -> tuple[int, int]:
    """(instances, distinct SOP Instance UIDs) of one series the test PACS received."""
    with pacs._lock:
        uids = [str(ds.SOPInstanceUID) for ds in pacs.datasets
                if str(ds.SeriesInstanceUID) == derived_series_uid]
    return len(uids), len(set(uids))


def _series_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def series_uid_of(path: Path) -> str:
    """The Series Instance UID of a DICOM file."""
    return _series_uid(path)


# -- raw sockets -------------------------------------------------------------------------
def raw_connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to the node."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq_pdu(called: str = NODE_AET, calling: str = "RAWPEER") -> bytes:
    """A minimal, valid A-ASSOCIATE-RQ proposing Verification (Implicit VR LE)."""
    app = _item(0x10, b"1.2.840.10008.3.1.1.1")
    abstract = _item(0x30, str(Verification).encode())
    transfer = _item(0x40, b"1.2.840.10008.1.2")
    pres = _item(0x20, bytes([1, 0, 0, 0]) + abstract + transfer)
    user = _item(0x50, _item(0x51, struct.pack(">I", 16382))
                 + _item(0x52, generate_uid().encode()))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + bytes(32) + app + pres + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def connection_closed(sock: socket.socket, timeout: float, *, abort_counts: bool = True
                      ) -> bool:
    """True when the peer closes the connection (or, with ``abort_counts``, sends an
    A-ABORT PDU) within ``timeout`` s. The stream is read PDU by PDU (it must be at a PDU
    boundary when called), so an A-ABORT that arrives in one read with other PDUs counts."""
    deadline = time.monotonic() + timeout
    pending = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except socket.timeout:
            return False
        except ConnectionError:
            return True
        if not data:
            return True
        pending += data
        while len(pending) >= PDU_HEADER.size:
            if abort_counts and pending[0] == 0x07:
                return True
            end = PDU_HEADER.size + PDU_HEADER.unpack_from(pending)[1]
            if len(pending) < end:
                break
            pending = pending[end:]
    return False
