"""The end-to-end tests' side of the peers: Orthanc with the deployed auto-routing rule,
the node as a process, and waiting for its jobs.

The generic pieces (dcmtk storescp/storescu, Orthanc, C-ECHO, waiting with a
deadline, processes stopped by PID) live in :mod:`tests.helpers.peers`, shared with
the benchmarks; they are re-exported here for the tests.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tests.helpers.peers import (DCIODVFY_BIN, ECHOSCU_BIN, LOOPBACK, ORTHANC_BIN,  # noqa: F401
                                 STORESCP_BIN, STORESCU_BIN, DcmtkStoreSCP, ManagedProcess,
                                 OrthancServer, dcmtk_env, dicom_echo, free_port, run_echoscu,
                                 run_storescu, wait_until)

LOGGER = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTOROUTE_LUA = REPO_ROOT / "deploy" / "orthanc" / "autoroute.lua"


def require(*binaries: Path) -> None:
    """Skip the calling test unless every binary exists (CI installs them all)."""
    import pytest

    packages = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools"}
    for binary in binaries:
        if not binary.is_file():
            pytest.skip(f"{binary} is not installed (Debian package "
                        f"{packages.get(binary.name, 'dcmtk')})")


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


def autorouting_orthanc(workdir: Path, *, node_ae: str, node_port: int,
                        modality: str = "rtfsyn", stable_age_s: int = 2) -> OrthancServer:
    """An Orthanc (not started) that knows the node as ``modality`` and runs the deployed
    auto-routing Lua rule against it, with StableAge ``stable_age_s``."""
    return OrthancServer(workdir, modalities={modality: [node_ae, LOOPBACK, node_port]},
                         lua_script=autoroute_script(modality),
                         extra={"Name": "rtfsyn-e2e", "StableAge": stable_age_s,
                                "ConcurrentJobs": 2, "Dictionary": ORTHANC_EXTRA_DICTIONARY})


# --------------------------------------------------------------------------- the node

def write_node_config(path: Path, *, port: int, data_dir: Path, checkpoint: Path,
                      destinations: Mapping[str, tuple[str, int]], targets: Sequence[str],
                      destination: str, stable_seconds: float = 1,
                      ae_title: str = "RTFSYN",
                      allowed_calling_aets: Sequence[str] = (),
                      export: Mapping[str, float] | None = None) -> Path:
    """Write a node TOML for a test: loopback, CPU, one route for every MR series.

    ``destinations`` maps a name to ``(ae_title, port)`` on loopback; ``export`` sets
    ``[export]`` keys (the delivery policy).
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
    if export:
        lines += ["", "[export]", *(f"{key} = {value}" for key, value in export.items())]
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
