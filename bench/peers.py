"""Servers and clients the benchmarks start: dcmtk storescp/storescu, Orthanc, the node.

Everything listens on loopback (127.0.0.1) on ports the OS picks, runs as a
child process with its log in the benchmark's work folder, is polled for
readiness with a deadline and is stopped by its PID (SIGTERM, wait, SIGKILL).
dcmtk tools are called by their Debian paths (``/usr/bin/...``) with
``TCP_NODELAY=1``; the ``storescp``/``storescu`` on ``PATH`` are pynetdicom's
shims. Shaped after ``tests/e2e/e2e_harness.py`` (not imported: benchmarks do
not depend on test modules).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

logger = logging.getLogger(__name__)

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
STORESCP_BIN = Path("/usr/bin/storescp")
STORESCU_BIN = Path("/usr/bin/storescu")
LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on loopback that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], T | None], *, timeout_s: float, what: str,
               interval_s: float = 0.1, alive: Callable[[], str | None] | None = None) -> T:
    """Call ``probe`` until it returns something truthy (returned); ``TimeoutError`` after
    ``timeout_s``; ``RuntimeError`` as soon as ``alive`` says why waiting is pointless."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        dead = alive() if alive is not None else None
        if dead:
            raise RuntimeError(f"gave up waiting for {what}: {dead}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(interval_s)


def dicom_echo(port: int, called_ae: str, timeout_s: float = 5.0) -> bool:
    """True when ``called_ae`` on loopback ``port`` answers C-ECHO with Success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    try:  # a plain TCP probe first: no pynetdicom error log while the server starts
        socket.create_connection((LOOPBACK, port), timeout=timeout_s).close()
    except OSError:
        return False
    ae = AE(ae_title="BENCH_ECHO")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0x0000
    finally:
        assoc.release()


def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools: ``TCP_NODELAY=1`` (dcmtk is slow on loopback without)."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class ManagedProcess:
    """A child process with its output in ``log_path``, stopped by PID."""

    name: str
    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start it (stdout and stderr go to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(list(self.args), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd,
                                         env=dict(self.env or os.environ))
        logger.debug("started %s (pid %d)", self.name, self.proc.pid)

    def exited(self) -> str | None:
        """Why waiting on it is pointless (it exited), else ``None``."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        return f"{self.name} exited with code {self.proc.returncode}; log tail:\n{tail}"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM by PID, wait up to ``timeout_s``, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.proc.pid)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout_s)


class Receiver:
    """A storage SCP under test: ``start``, ``count`` (instances stored), ``stop``."""

    name = "receiver"
    ae_title = "ANY"
    port = 0

    def start(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def count(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class DcmtkStoreSCP(Receiver):
    """``/usr/bin/storescp`` writing into ``workdir/received`` (no fsync: dcmtk's default)."""

    name = "dcmtk storescp"

    def __init__(self, workdir: Path, ae_title: str = "STORESCP") -> None:
        self.workdir, self.ae_title, self.port = Path(workdir), ae_title, free_port()
        self.out_dir = self.workdir / "received"
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = [str(STORESCP_BIN), "--aetitle", self.ae_title, "--output-directory",
                str(self.out_dir), "--accept-all", str(self.port)]
        self.process = ManagedProcess("storescp", args, self.workdir / "storescp.log",
                                      env=dcmtk_env())
        self.process.start()
        wait_until(lambda: dicom_echo(self.port, self.ae_title), timeout_s=20,
                   what="dcmtk storescp C-ECHO", alive=self.process.exited)

    def count(self) -> int:
        return sum(1 for p in self.out_dir.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class OrthancServer(Receiver):
    """Orthanc with a minimal temporary configuration (no Lua, no plugins, defaults for
    storage: files on disk plus its SQLite index). Orthanc 1.10 has no DICOM bind
    address, so its port listens on every interface while the benchmark runs."""

    name = "Orthanc"

    def __init__(self, workdir: Path, ae_title: str = "ORTHANC") -> None:
        self.workdir, self.ae_title = Path(workdir), ae_title
        self.port, self.http_port = free_port(), free_port()
        self.process: ManagedProcess | None = None

    def _config(self) -> dict[str, Any]:
        return {"Name": "rtfsyn-bench", "StorageDirectory": str(self.workdir / "storage"),
                "IndexDirectory": str(self.workdir / "index"), "DicomServerEnabled": True,
                "DicomAet": self.ae_title, "DicomPort": self.port, "HttpServerEnabled": True,
                "HttpPort": self.http_port, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "OrthancExplorerEnabled": False,
                "Plugins": [], "SaveJobs": False, "DeidentifyLogs": True}

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        self.process = ManagedProcess("Orthanc", [str(ORTHANC_BIN), str(config)],
                                      self.workdir / "orthanc.log")
        self.process.start()
        wait_until(lambda: dicom_echo(self.port, self.ae_title), timeout_s=60,
                   what="Orthanc C-ECHO", alive=self.process.exited, interval_s=0.2)

    def count(self) -> int:
        url = f"http://{LOOPBACK}:{self.http_port}/statistics"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(json.loads(response.read().decode())["CountInstances"])
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError):
            return -1

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def write_node_config(path: Path, *, port: int, data_dir: Path,
                      destinations: Mapping[str, tuple[str, int]] | None = None,
                      route_modality: str = "NO_SUCH_MODALITY", stable_seconds: float = 1.0,
                      checkpoint: str = "default", extra_node: Sequence[str] = ()) -> Path:
    """A node TOML on loopback, CPU; one route matching ``Modality`` = ``route_modality``
    (the default matches nothing, so nothing is synthesized) to the first destination."""
    destinations = dict(destinations or {"PACS": ("PACS", 9)})
    lines = ["[node]", 'ae_title = "RTFSYN"', f'host = "{LOOPBACK}"', f"port = {port}",
             f"data_dir = {json.dumps(str(data_dir))}", f"stable_seconds = {stable_seconds}",
             *extra_node, "", "[model]", f"checkpoint = {json.dumps(checkpoint)}",
             'device = "cpu"']
    for name, (ae, dest_port) in destinations.items():
        lines += ["", f"[destinations.{name}]", f'ae_title = "{ae}"', f'host = "{LOOPBACK}"',
                  f"port = {dest_port}"]
    lines += ["", "[[routes]]", f'match = {{ Modality = "^{route_modality}$" }}',
              'targets = ["T1"]', f'destination = "{next(iter(destinations))}"', ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


class NodeServer(Receiver):
    """``rtfsyn serve --config PATH`` as a child process (the real node). ``src``: run
    the ``dicom_node`` package found in that folder instead (e.g. an older version
    exported with ``git show``, for a before/after comparison)."""

    name = "rtfsyn node"

    def __init__(self, workdir: Path, *, destinations: Mapping[str, tuple[str, int]] | None = None,
                 route_modality: str = "NO_SUCH_MODALITY", stable_seconds: float = 1.0,
                 checkpoint: str = "default", extra_node: Sequence[str] = (),
                 threads: int = 1, src: Path | None = None) -> None:
        self.workdir, self.ae_title, self.port = Path(workdir), "RTFSYN", free_port()
        self.data_dir = self.workdir / "data"
        self.config_path = write_node_config(
            self.workdir / "node.toml", port=self.port, data_dir=self.data_dir,
            destinations=destinations, route_modality=route_modality,
            stable_seconds=stable_seconds, checkpoint=checkpoint, extra_node=extra_node)
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
    args = [str(STORESCU_BIN), "--aetitle", calling_ae, "--call", called_ae, LOOPBACK,
            str(port), *map(str, files)]
    return subprocess.Popen(args, env=dcmtk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


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
