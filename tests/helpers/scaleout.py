"""Node processes sharing one PostgreSQL job log and one spool: a receiver and workers,
each an ``rtfsyn serve`` child process with its own configuration (``[node] roles``),
started and polled until ready, SIGKILLed or stopped by PID. Used by the scale-out test
(``tests/store/test_postgres_nodes.py``) and benchmark (``bench/scaleout.py``).
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.helpers.node import NODE_AET, write_config
from tests.helpers.peers import ManagedProcess, dicom_echo, free_port, wait_until

__all__ = ["ScaleOut"]


@dataclass
class ScaleOut:
    """Processes of one deployment in ``workdir``: the shared ``data_dir`` is
    ``workdir/shared`` (spool, derived series), configurations and logs are per process.

    Every process routes MR series to ``targets`` at ``dest_port`` (AE ``dest_ae``) with
    the model ``checkpoint`` on the CPU, ``threads`` torch threads per process.
    """

    workdir: Path
    database_url: str
    checkpoint: Path
    dest_port: int
    lease_seconds: float = 3.0
    stable_seconds: float = 1.0
    targets: tuple[str, ...] = ("T2",)
    dest_ae: str = "TESTPACS"
    threads: int = 1
    receiver_port: int = field(default_factory=free_port)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._engine = create_engine(self.database_url, pool_size=2)

    def _config(self, name: str, roles: list[str], port: int) -> Path:
        settings: dict[str, Any] = {
            "node": {"ae_title": NODE_AET, "host": "127.0.0.1", "port": port,
                     "data_dir": str(self.workdir / "shared"),
                     "stable_seconds": self.stable_seconds, "roles": roles,
                     "lease_seconds": self.lease_seconds, "workers": 1},
            "database": {"url": self.database_url},
            "model": {"checkpoint": str(self.checkpoint), "device": "cpu"},
            "export": {"max_attempts": 3, "backoff_seconds": 0.5, "backoff_max_seconds": 2.0,
                       "timeout_seconds": 10},
            "destinations": {"PACS": {"ae_title": self.dest_ae, "host": "127.0.0.1",
                                      "port": self.dest_port}},
            "routes": [{"name": "mr", "match": {"Modality": "MR"},
                        "targets": list(self.targets), "destination": "PACS"}],
        }
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        return write_config(settings, folder / "node.toml")

    def _start(self, name: str, roles: list[str], port: int) -> ManagedProcess:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), HF_HUB_OFFLINE="1",
                   PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "dicom_node.cli", "serve", "--config",
                str(self._config(name, roles, port)), "--grace", "2"]
        process = ManagedProcess(f"rtfsyn serve ({name})", args,
                                 self.workdir / name / "node.log", env=env)
        process.start()
        self.processes[name] = process
        return process

    def start_receiver(self, timeout_s: float = 120.0) -> int:
        """Start the ``receive`` process; returns its DICOM port once it answers C-ECHO."""
        process = self._start("receiver", ["receive"], self.receiver_port)
        wait_until(lambda: dicom_echo(self.receiver_port, NODE_AET, timeout_s=5.0),
                   timeout_s=timeout_s, what="the receiver's C-ECHO", interval_s=0.3,
                   alive=process.exited)
        return self.receiver_port

    def start_worker(self, name: str, timeout_s: float = 120.0) -> str:
        """Start a ``process`` process; returns its node id once it is registered."""
        process = self._start(name, ["process"], free_port())
        return wait_until(lambda: self.node_id(name), timeout_s=timeout_s,
                          what=f"{name} registered", interval_s=0.2, alive=process.exited)

    def node_id(self, name: str) -> str | None:
        """The job-log node id of process ``name`` (None until it registered)."""
        rows = self.query("SELECT node_id FROM nodes WHERE pid = :pid AND stopped_at IS NULL",
                          pid=self.processes[name].pid)
        return rows[0][0] if rows else None

    def query(self, sql: str, **params: Any) -> list[tuple]:
        """Rows of one SQL query on the shared job log."""
        with self._engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    def kill(self, name: str) -> None:
        """SIGKILL process ``name`` by PID and reap it."""
        process = self.processes[name]
        if process.proc is not None and process.proc.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.proc.wait(timeout=30)

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every process still running (by PID); their exit codes."""
        codes = {name: p.stop() for name, p in reversed(list(self.processes.items()))}
        self._engine.dispose()
        return codes
