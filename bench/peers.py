"""The benchmarks' receivers and senders: dcmtk storescp, Orthanc and the node, sent to by
dcmtk storescu.

dcmtk storescp and Orthanc come from :mod:`tests.helpers.peers` (shared with the
end-to-end tests); the node runs as ``rtfsyn serve`` in a child process. Every
receiver has a ``name``, an ``ae_title``, a ``port`` and ``start``/``count``/``stop``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from tests.helpers.peers import (LOOPBACK, DcmtkStoreSCP, ManagedProcess,  # noqa: F401
                                 OrthancServer, dcmtk_env, dicom_echo, free_port, storescu_args,
                                 wait_until)


class Receiver(Protocol):
    """A storage SCP under test: ``start``, ``count`` (instances stored), ``stop``."""

    name: str
    ae_title: str
    port: int

    def start(self) -> None: ...

    def count(self) -> int: ...

    def stop(self) -> None: ...


def write_node_config(path: Path, *, port: int, data_dir: Path,
                      destinations: Mapping[str, tuple[str, int]] | None = None,
                      route_modality: str = "NO_SUCH_MODALITY", stable_seconds: float = 1.0,
                      checkpoint: str = "default", extra_node: Sequence[str] = (),
                      route_exclude: Mapping[str, str] | None = None) -> Path:
    """A node TOML on loopback, CPU; one route matching ``Modality`` = ``route_modality``
    (the default matches nothing, so nothing is synthesized) to the first destination;
    ``route_exclude``: keyword -> regular expression of series the route leaves alone."""
    destinations = dict(destinations or {"PACS": ("PACS", 9)})
    lines = ["[node]", 'ae_title = "RTFSYN"', f'host = "{LOOPBACK}"', f"port = {port}",
             f"data_dir = {json.dumps(str(data_dir))}", f"stable_seconds = {stable_seconds}",
             *extra_node, "", "[model]", f"checkpoint = {json.dumps(checkpoint)}",
             'device = "cpu"']
    for name, (ae, dest_port) in destinations.items():
        lines += ["", f"[destinations.{name}]", f'ae_title = "{ae}"', f'host = "{LOOPBACK}"',
                  f"port = {dest_port}"]
    lines += ["", "[[routes]]", f'match = {{ Modality = "^{route_modality}$" }}']
    if route_exclude:
        lines.append("exclude = { " + ", ".join(f"{key} = {json.dumps(pattern)}"
                                                for key, pattern in route_exclude.items()) + " }")
    lines += ['targets = ["T1"]', f'destination = "{next(iter(destinations))}"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _logs_marker(src: Path, marker: str) -> bool:
    """Does the ``dicom_node`` package in ``src`` log ``marker`` (its source contains it)?"""
    return any(marker in p.read_text(errors="replace")
               for p in (Path(src) / "dicom_node").rglob("*.py"))


class NodeServer:
    """``rtfsyn serve --config PATH`` as a child process (the real node). ``src``: run
    the ``dicom_node`` package found in that folder instead (e.g. an older version
    exported with ``git show``, for a before/after comparison)."""

    name = "rtfsyn node"

    def __init__(self, workdir: Path, *, destinations: Mapping[str, tuple[str, int]] | None = None,
                 route_modality: str = "NO_SUCH_MODALITY", stable_seconds: float = 1.0,
                 checkpoint: str = "default", extra_node: Sequence[str] = (),
                 threads: int = 1, src: Path | None = None,
                 route_exclude: Mapping[str, str] | None = None) -> None:
        self.workdir, self.ae_title, self.port = Path(workdir), "RTFSYN", free_port()
        self.data_dir = self.workdir / "data"
        self.config_path = write_node_config(
            self.workdir / "node.toml", port=self.port, data_dir=self.data_dir,
            destinations=destinations, route_modality=route_modality,
            stable_seconds=stable_seconds, checkpoint=checkpoint, extra_node=extra_node,
            route_exclude=route_exclude)
        self.threads, self.src = threads, src
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        args = [sys.executable, "-m", "dicom_node.cli", "serve", "--config",
                str(self.config_path)]
        self.process = ManagedProcess("rtfsyn serve", args, self.workdir / "node.log", env=env,
                                      cwd=self.src)
        self.process.start()
        wait_until(lambda: dicom_echo(self.port, self.ae_title), timeout_s=120,
                   what="node C-ECHO", alive=self.process.exited, interval_s=0.3)
        from dicom_node.process.processor import WARM_UP_DONE

        if self.src is None or _logs_marker(self.src, WARM_UP_DONE):
            # measure the running node, not its start-up (torch import etc.); an older node
            # given as ``src`` is waited for too when it logs the marker
            log_path = self.workdir / "node.log"
            wait_until(lambda: WARM_UP_DONE in log_path.read_text(errors="replace"), timeout_s=120,
                       what="node warm-up", alive=self.process.exited, interval_s=0.2)

    @property
    def pid(self) -> int:
        """PID of the node process (for py-spy)."""
        if self.process is None or self.process.proc is None:
            raise RuntimeError("the node was never started")
        return self.process.proc.pid

    def count(self) -> int:
        spool = self.data_dir / "spool"
        return sum(1 for p in spool.rglob("*.dcm")) if spool.is_dir() else 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout_s=60)


def storescu_process(files: Sequence[Path], port: int, called_ae: str,
                     calling_ae: str = "BENCHSCU") -> subprocess.Popen[bytes]:
    """Start ``/usr/bin/storescu`` sending ``files`` in one association (not waited for)."""
    return subprocess.Popen(storescu_args(files, port, called_ae, calling_ae), env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def send_concurrently(files: Sequence[Path], port: int, called_ae: str, associations: int,
                      timeout_s: float = 300.0) -> float:
    """Send ``files`` split over ``associations`` concurrent storescu processes; the wall
    seconds from the first start to the last exit. Raises if any storescu fails."""
    chunks = [list(files[i::associations]) for i in range(associations)]
    start = time.perf_counter()
    procs = [storescu_process(chunk, port, called_ae) for chunk in chunks if chunk]
    errors = []
    for proc in procs:
        try:
            _out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-800:]
            errors.append(f"storescu exited {proc.returncode}: {tail}")
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError("; ".join(errors))
    return elapsed
