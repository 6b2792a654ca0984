"""Other DICOM programs as child processes: dcmtk storescp/storescu and Orthanc.

The end-to-end tests and the benchmarks run the node against the tools a site
would otherwise use. Everything here listens on loopback (127.0.0.1) on ports
the OS picks, runs as a child process with its log in a work folder, is polled
for readiness with a deadline (never a fixed sleep) and is stopped by its PID
(a signal, a wait, then SIGKILL).

dcmtk tools are called by their Debian paths (``/usr/bin/...``) with
``TCP_NODELAY=1``: the ``storescp``/``storescu``/``echoscu`` found on ``PATH``
may be pynetdicom's shims.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from dicom_node.tools.loopback import LOOPBACK, free_port

__all__ = ["ORTHANC_BIN", "STORESCP_BIN", "STORESCU_BIN", "ECHOSCU_BIN", "DCIODVFY_BIN",
           "LOOPBACK", "free_port", "wait_until", "dicom_echo", "dcmtk_env", "ManagedProcess",
           "DcmtkStoreSCP", "OrthancServer", "storescu_args", "run_storescu", "run_echoscu"]

logger = logging.getLogger(__name__)

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
STORESCP_BIN = Path("/usr/bin/storescp")
STORESCU_BIN = Path("/usr/bin/storescu")
ECHOSCU_BIN = Path("/usr/bin/echoscu")
DCIODVFY_BIN = Path("/usr/bin/dciodvfy")
T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], *, timeout_s: float, what: str,
               interval_s: float = 0.2, alive: Callable[[], str | None] | None = None) -> T:
    """Call ``probe`` until it returns something truthy; return that.

    Raises ``TimeoutError`` after ``timeout_s`` seconds, or ``RuntimeError`` as
    soon as ``alive`` (when given) returns a text saying why waiting is pointless
    (e.g. the server process exited).
    """
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


def dicom_echo(port: int, called_ae: str, calling_ae: str = "ECHOSCU", host: str = LOOPBACK,
               timeout_s: float = 5.0, tls_args: Any = None) -> bool:
    """True when ``called_ae`` at ``host:port`` answers a C-ECHO with Success
    (``tls_args``: pynetdicom's ``(ssl_context, server_hostname)`` for TLS)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    if tls_args is None:  # a plain TCP probe first: no pynetdicom error log while a server starts
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError:
            return False
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0x0000
    finally:
        assoc.release()


def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools: ``TCP_NODELAY=1`` (dcmtk is slow on loopback without it)."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class ManagedProcess:
    """A child process with its output in ``log_path``, stopped by PID."""

    name: str
    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the process (stdout and stderr go to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(list(self.args), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd,
                                         env=dict(self.env or os.environ))
        logger.info("started %s (pid %d)", self.name, self.proc.pid)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc.pid

    def exited(self) -> str | None:
        """Why waiting on this process is pointless (it exited), else ``None``."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"{self.name} exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}"

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the process log (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Signal the PID, wait up to ``timeout_s``, then kill; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, self.stop_signal)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored signal %d; killing it",
                           self.name, self.proc.pid, self.stop_signal)
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=timeout_s)


@dataclass
class DcmtkStoreSCP:
    """dcmtk ``storescp`` receiving into ``workdir/received`` (no fsync: dcmtk's default)."""

    workdir: Path
    ae_title: str = "STORESCP"
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)
    name = "dcmtk storescp"

    @property
    def out_dir(self) -> Path:
        return Path(self.workdir) / "received"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start ``/usr/bin/storescp`` and wait until it answers C-ECHO."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = [str(STORESCP_BIN), "--aetitle", self.ae_title, "--output-directory",
                str(self.out_dir), "--accept-all", str(self.port)]
        self.process = ManagedProcess("storescp", args, Path(self.workdir) / "storescp.log",
                                      env=dcmtk_env())
        self.process.start()
        wait_until(lambda: dicom_echo(self.port, self.ae_title), timeout_s=timeout_s,
                   what="dcmtk storescp C-ECHO", alive=self.process.exited)

    def received(self) -> list[Path]:
        """Files received so far, sorted by name."""
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def count(self) -> int:
        """How many instances it has stored."""
        return sum(1 for p in self.out_dir.iterdir() if p.is_file())

    def stop(self) -> None:
        """Stop storescp by PID."""
        if self.process is not None:
            self.process.stop()


@dataclass
class OrthancServer:
    """Orthanc with a generated configuration in ``workdir``: files on disk plus its SQLite
    index, no plugins, REST on loopback only (no authentication).

    ``modalities``: Orthanc's ``DicomModalities`` (name -> [AE, host, port]);
    ``lua_script``: the text of a Lua script to load; ``extra``: more configuration keys.
    Orthanc 1.10 has no DICOM bind address, so its DICOM port listens on every interface
    while it runs.
    """

    workdir: Path
    ae_title: str = "ORTHANC"
    modalities: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    lua_script: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)
    name = "Orthanc"

    @property
    def port(self) -> int:
        """The DICOM port (the name the benchmarks' receivers share)."""
        return self.dicom_port

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration (JSON object)."""
        workdir = Path(self.workdir)
        config: dict[str, Any] = {
            "Name": "rtfsyn-peer", "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"), "DicomServerEnabled": True,
            "DicomAet": self.ae_title, "DicomPort": self.dicom_port, "HttpServerEnabled": True,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "OrthancExplorerEnabled": False, "Plugins": [],
            "SaveJobs": False, "DeidentifyLogs": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
        }
        if self.lua_script is not None:
            lua_path = workdir / "script.lua"
            lua_path.write_text(self.lua_script)
            config["LuaScripts"] = [str(lua_path)]
        config.update(self.extra)
        return config

    def start(self, timeout_s: float = 60.0) -> None:
        """Write the configuration, start Orthanc, wait until REST and DICOM answer."""
        workdir = Path(self.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self.process = ManagedProcess("Orthanc", [str(ORTHANC_BIN), str(config_path)],
                                      workdir / "orthanc.log")
        self.process.start()
        wait_until(self._rest_answers, timeout_s=timeout_s, what="Orthanc REST API",
                   alive=self.process.exited)
        wait_until(lambda: dicom_echo(self.dicom_port, self.ae_title), timeout_s=timeout_s,
                   what="Orthanc C-ECHO", alive=self.process.exited)

    def _rest_answers(self) -> bool:
        try:
            return "Version" in self.get("/system")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def get(self, path: str) -> Any:
        """GET ``path`` from the REST API; the decoded JSON."""
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read().decode())

    def count(self) -> int:
        """How many instances it holds (-1 when REST does not answer)."""
        try:
            return int(self.get("/statistics")["CountInstances"])
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError):
            return -1

    def stop(self) -> None:
        """Stop Orthanc by PID."""
        if self.process is not None:
            self.process.stop()


def storescu_args(files: Sequence[Path], port: int, called_ae: str,
                  calling_ae: str = "STORESCU") -> list[str]:
    """``/usr/bin/storescu`` sending ``files`` to loopback ``port`` in one association."""
    return [str(STORESCU_BIN), "--aetitle", calling_ae, "--call", called_ae, LOOPBACK,
            str(port), *map(str, files)]


def run_storescu(files: Sequence[Path], port: int, called_ae: str,
                 calling_ae: str = "WORKSTATION", timeout_s: float = 120.0) -> None:
    """Send ``files`` with ``/usr/bin/storescu`` in one association; raise on failure: a
    non-zero exit, or fewer Success responses than files (storescu 3.6.7 exits 0 when its
    stores are answered with a warning status, so its verbose log is counted)."""
    done = subprocess.run([*storescu_args(files, port, called_ae, calling_ae), "--verbose"],
                          env=dcmtk_env(), capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    output = done.stdout + done.stderr
    successes = output.count("Received Store Response (Success)")
    if done.returncode != 0 or successes != len(files):
        raise RuntimeError(f"storescu must exit 0 with {len(files)} Success response(s). Found "
                           f"exit {done.returncode} and {successes}; output:\n{output[-4000:]}")


def run_echoscu(port: int, called_ae: str, calling_ae: str = "ECHOSCU",
                timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """One C-ECHO with ``/usr/bin/echoscu`` to loopback ``port`` (exit 0: answered Success)."""
    return subprocess.run([str(ECHOSCU_BIN), "--aetitle", calling_ae, "--call", called_ae,
                           LOOPBACK, str(port)], env=dcmtk_env(), capture_output=True,
                          text=True, timeout=timeout_s, check=False)
