"""Servers that the end-to-end tests start and stop: Orthanc, dcmtk storescp, the node.

Every server listens on loopback ports chosen by the test, runs as a child
process with its log in a temporary folder, is polled for readiness with a
deadline (never a fixed sleep) and is stopped by its PID
(terminate/SIGTERM, wait, then kill).

dcmtk tools are always called by their Debian paths (``/usr/bin/...``): the
``storescp``/``storescu``/``echoscu`` on ``PATH`` are pynetdicom's shims.
"""
from __future__ import annotations

import json
import logging
import os
import re
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

LOGGER = logging.getLogger(__name__)

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
STORESCP_BIN = Path("/usr/bin/storescp")
STORESCU_BIN = Path("/usr/bin/storescu")
ECHOSCU_BIN = Path("/usr/bin/echoscu")
DCIODVFY_BIN = Path("/usr/bin/dciodvfy")

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTOROUTE_LUA = REPO_ROOT / "deploy" / "orthanc" / "autoroute.lua"
LOOPBACK = "127.0.0.1"

T = TypeVar("T")


def require(*binaries: Path) -> None:
    """Skip the calling test unless every binary exists (CI installs them all)."""
    import pytest

    packages = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools"}
    for binary in binaries:
        if not binary.is_file():
            pytest.skip(f"{binary} is not installed (Debian package "
                        f"{packages.get(binary.name, 'dcmtk')})")


def free_port() -> int:
    """A TCP port on loopback that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


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
        if alive is not None:
            dead = alive()
            if dead:
                raise RuntimeError(f"gave up waiting for {what}: {dead}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(interval_s)


def dicom_echo(port: int, called_ae: str, calling_ae: str = "E2E_ECHO",
               host: str = LOOPBACK, timeout_s: float = 5.0, tls_args: Any = None) -> bool:
    """True when ``called_ae`` at ``host:port`` answers a C-ECHO with Success
    (``tls_args``: pynetdicom's ``(ssl_context, server_hostname)`` for TLS)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

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
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


@dataclass
class ManagedProcess:
    """A child process with its output in ``log_path``, stopped by PID."""

    name: str
    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the process (stdout and stderr go to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(list(self.args), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=dict(self.env or os.environ))
        LOGGER.info("started %s (pid %d)", self.name, self.proc.pid)

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
            LOGGER.warning("%s (pid %d) ignored signal %d; killing it",
                           self.name, self.proc.pid, self.stop_signal)
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=timeout_s)


# --------------------------------------------------------------------------- Orthanc

# Orthanc 1.10's dictionary lacks Synthetic Data; naming it lets REST "?simplify" show it.
ORTHANC_EXTRA_DICTIONARY = {"0008,001c": ["CS", "SyntheticData", 1, 1]}


def autoroute_script(modality: str, source: Path = AUTOROUTE_LUA) -> str:
    """The deployed Lua rule with its target modality name replaced by ``modality``."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", modality):
        raise ValueError(f"Orthanc modality name must be letters, digits, '_' or '-'. "
                         f"Found {modality!r}.")
    text = source.read_text()
    replaced, count = re.subn(r"^RTFSYN_MODALITY = '[^']*'$", f"RTFSYN_MODALITY = '{modality}'",
                              text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"{source} must assign RTFSYN_MODALITY exactly once. Found {count}.")
    return replaced


@dataclass
class OrthancServer:
    """Orthanc with a generated configuration in ``workdir``.

    REST is loopback-only (``RemoteAccessAllowed`` false, no authentication).
    Orthanc 1.10 has no DICOM bind address, so its DICOM port (chosen by the
    test, like the HTTP port) listens on every interface while the test runs.
    """

    workdir: Path
    node_ae: str
    node_port: int
    modality: str = "rtfsyn"
    ae_title: str = "ORTHANC"
    stable_age_s: int = 2
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)

    def config(self, lua_path: Path) -> dict[str, Any]:
        """Orthanc configuration (JSON object) for this test instance."""
        return {
            "Name": "rtfsyn-e2e",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "StableAge": self.stable_age_s,
            "DicomModalities": {self.modality: [self.node_ae, LOOPBACK, self.node_port]},
            "LuaScripts": [str(lua_path)],
            "Plugins": [],
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "DeidentifyLogs": True,
            "Dictionary": ORTHANC_EXTRA_DICTIONARY,
        }

    def start(self, timeout_s: float = 30.0) -> None:
        """Write the configuration and Lua rule, start Orthanc, wait until REST and DICOM answer."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lua_path = self.workdir / "autoroute.lua"
        lua_path.write_text(autoroute_script(self.modality))
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(lua_path), indent=2))
        self.process = ManagedProcess("Orthanc", [str(ORTHANC_BIN), str(config_path)],
                                      self.workdir / "orthanc.log")
        self.process.start()
        wait_until(self._rest_answers, timeout_s=timeout_s, what="Orthanc REST API",
                   alive=self.process.exited)
        wait_until(lambda: dicom_echo(self.dicom_port, self.ae_title), timeout_s=timeout_s,
                   what="Orthanc C-ECHO", alive=self.process.exited)

    def stop(self) -> None:
        """Stop Orthanc by PID."""
        if self.process is not None:
            self.process.stop()

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


# --------------------------------------------------------------------------- dcmtk

@dataclass
class DcmtkStoreSCP:
    """dcmtk ``storescp`` receiving into ``out_dir`` on a test-chosen port."""

    workdir: Path
    ae_title: str = "STORESCP"
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def out_dir(self) -> Path:
        return self.workdir / "received"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start ``/usr/bin/storescp`` and wait until it answers C-ECHO."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        args = [str(STORESCP_BIN), "--aetitle", self.ae_title, "--output-directory",
                str(self.out_dir), "--accept-all", str(self.port)]
        self.process = ManagedProcess("storescp", args, self.workdir / "storescp.log",
                                      env=dcmtk_env())
        self.process.start()
        wait_until(lambda: dicom_echo(self.port, self.ae_title), timeout_s=timeout_s,
                   what="dcmtk storescp C-ECHO", alive=self.process.exited)

    def received(self) -> list[Path]:
        """Files received so far, sorted by name."""
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def stop(self) -> None:
        """Stop storescp by PID."""
        if self.process is not None:
            self.process.stop()


def run_storescu(files: Sequence[Path], port: int, called_ae: str,
                 calling_ae: str = "WORKSTATION", timeout_s: float = 120.0) -> None:
    """Send ``files`` with ``/usr/bin/storescu`` in one association; raise on failure."""
    args = [str(STORESCU_BIN), "--aetitle", calling_ae, "--call", called_ae,
            LOOPBACK, str(port), *map(str, files)]
    done = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"storescu must exit 0. Found {done.returncode}; "
                           f"output:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


# --------------------------------------------------------------------------- the node

def write_node_config(path: Path, *, port: int, data_dir: Path, checkpoint: Path,
                      destinations: Mapping[str, tuple[str, int]], targets: Sequence[str],
                      destination: str, stable_seconds: float = 1,
                      ae_title: str = "RTFSYN",
                      allowed_calling_aets: Sequence[str] = ()) -> Path:
    """Write a node TOML for a test: loopback, CPU, one route for every MR series.

    ``destinations`` maps a name to ``(ae_title, port)`` on loopback.
    """
    lines = [
        "[node]",
        f'ae_title = "{ae_title}"',
        f'host = "{LOOPBACK}"',
        f"port = {port}",
        f"data_dir = {json.dumps(str(data_dir))}",
        f"stable_seconds = {stable_seconds}",
        f"allowed_calling_aets = {json.dumps(list(allowed_calling_aets))}",
        "",
        "[model]",
        f"checkpoint = {json.dumps(str(checkpoint))}",
        'device = "cpu"',
    ]
    for name, (dest_ae, dest_port) in destinations.items():
        lines += ["", f"[destinations.{name}]", f'ae_title = "{dest_ae}"',
                  f'host = "{LOOPBACK}"', f"port = {dest_port}"]
    lines += ["", "[[routes]]", 'match = { Modality = "MR" }',
              f"targets = {json.dumps(list(targets))}", f'destination = "{destination}"', ""]
    path.write_text("\n".join(lines))
    return path


@dataclass
class NodeProcess:
    """``rtfsyn serve --config PATH`` as a child process, stopped with SIGTERM."""

    config_path: Path
    port: int
    ae_title: str = "RTFSYN"
    process: ManagedProcess | None = field(default=None, init=False)

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the node and wait until it answers C-ECHO."""
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        args = [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(self.config_path)]
        self.process = ManagedProcess("rtfsyn serve", args,
                                      self.config_path.parent / "node.log", env=env)
        self.process.start()
        wait_until(lambda: dicom_echo(self.port, self.ae_title, calling_ae="ECHOSCU"),
                   timeout_s=timeout_s, what="node C-ECHO", interval_s=0.5,
                   alive=self.process.exited)

    def stop(self) -> int | None:
        """SIGTERM, wait, kill if it must; the exit code."""
        return None if self.process is None else self.process.stop(timeout_s=60.0)

    def status(self) -> dict[str, Any]:
        """``rtfsyn status --config PATH --json`` as a dict."""
        args = [sys.executable, "-m", "dicom_node.cli", "status", "--config",
                str(self.config_path), "--json"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rtfsyn status must exit 0. Found {done.returncode}; "
                               f"stderr:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout)


FINAL_JOB_STATES = frozenset({"done", "failed", "rejected"})


def wait_for_jobs(node: NodeProcess, *, timeout_s: float, expected: int = 1,
                  alive: Callable[[], str | None] | None = None) -> list[dict[str, Any]]:
    """Poll ``rtfsyn status --json`` until ``expected`` jobs reached a final state; the jobs."""

    def finished() -> list[dict[str, Any]] | None:
        jobs = node.status()["jobs"]
        final = [job for job in jobs if job["state"] in FINAL_JOB_STATES]
        return jobs if len(final) >= expected else None

    def gave_up() -> str | None:
        return (node.process.exited() if node.process else None) or (alive() if alive else None)

    return wait_until(finished, timeout_s=timeout_s, interval_s=1.0,
                      what=f"{expected} finished job(s) in rtfsyn status", alive=gave_up)
