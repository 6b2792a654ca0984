"""``rtfsyn serve`` as a child process for the crash, load and log tests: written config,
start (C-ECHO polled), SIGKILL by PID, restart on the same data, peak RSS, job-log reads.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from dicom_node.store.status import build_report
from tests.helpers.harness import ManagedProcess, wait_until
from tests.helpers.node import node_settings, write_config
from tests.reliability.helpers import FINAL_JOB_STATES, SMALL_ROUTE, echo_ok

__all__ = ["ProcNode", "peak_rss_mb", "wait_fast"]


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class ProcNode:
    """A node process configured in ``workdir`` (tiny checkpoint, CPU, loopback)."""

    def __init__(self, workdir: Path, checkpoint: Path, *, dest_port: int | None = None,
                 routes: bool = True, verbose: bool = False, **sections: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = dict(sections)
        extra["model"] = {"checkpoint": str(checkpoint), "device": "cpu"}
        if dest_port is not None:
            extra["destinations"] = {"PACS": {"ae_title": "TESTPACS", "host": "127.0.0.1",
                                              "port": dest_port}}
            if routes:
                extra["routes"] = [SMALL_ROUTE]
        self.settings = node_settings(workdir, **extra)
        self.workdir = workdir
        self.config_path = write_config(self.settings, workdir / "node.toml")
        self.port = int(self.settings["node"]["port"])
        self.database = Path(self.settings["node"]["data_dir"]) / "joblog.sqlite"
        self.process: ManagedProcess | None = None
        self.runs = 0
        self.verbose = verbose

    def start(self, timeout_s: float = 120.0) -> "ProcNode":
        """Start (or restart) the process; returns once it answers C-ECHO."""
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        self.runs += 1
        args = [sys.executable, "-m", "dicom_node.cli", *(["-v"] if self.verbose else []),
                "serve", "--config",
                str(self.config_path), "--grace", "2"]
        self.process = ManagedProcess("rtfsyn serve", args,
                                      self.workdir / f"node-{self.runs}.log", env=env)
        self.process.start()
        wait_until(lambda: echo_ok(self.port, timeout=5.0), timeout_s=timeout_s,
                   what="node C-ECHO", interval_s=0.3, alive=self.process.exited)
        return self

    @property
    def pid(self) -> int:
        """The PID of the running process."""
        if self.process is None:
            raise RuntimeError("the node was never started")
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the process by PID and reap it."""
        if self.process is None or self.process.proc is None:
            return
        os.kill(self.pid, signal.SIGKILL)
        self.process.proc.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL if it must); the exit code."""
        return None if self.process is None else self.process.stop(timeout_s=60.0)

    def logs(self) -> str:
        """Everything the process wrote (every run)."""
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob("node-*.log")))

    def status(self) -> dict[str, Any]:
        """``rtfsyn status --json`` of this node (read in-process from the job log)."""
        return build_report(self.database)

    def status_cli(self) -> tuple[str, str]:
        """``rtfsyn status --json`` run as a command: (stdout, stderr)."""
        done = subprocess.run([sys.executable, "-m", "dicom_node.cli", "status", "--config",
                               str(self.config_path), "--json"], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rtfsyn status must exit 0. Found {done.returncode}: "
                               f"{done.stderr[-1000:]}")
        return done.stdout, done.stderr

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """A read-only query of the job log (cheap enough to poll quickly)."""
        if not self.database.exists():
            return []
        con = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            return list(con.execute(sql, params))
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def job_states(self) -> list[str]:
        """The state of every job, by id."""
        return [r[0].lower() for r in self.query("SELECT state FROM jobs ORDER BY id")]

    def wait_jobs_final(self, n: int, timeout_s: float = 180.0) -> list[dict[str, Any]]:
        """Poll until ``n`` jobs are final; their status rows."""
        def final() -> list[dict[str, Any]] | None:
            jobs = self.status()["jobs"]
            done = [j for j in jobs if j["state"] in FINAL_JOB_STATES]
            return jobs if len(done) >= n else None
        return wait_until(final, timeout_s=timeout_s, interval_s=0.5,
                          what=f"{n} final job(s)", alive=self._exited)

    def _exited(self) -> str | None:
        return self.process.exited() if self.process else "never started"


def wait_fast(probe: Any, timeout_s: float, what: str) -> Any:
    """Poll ``probe`` every 20 ms (to catch a short-lived state)."""
    return wait_until(probe, timeout_s=timeout_s, what=what, interval_s=0.02)
