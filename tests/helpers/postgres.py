"""A throw-away PostgreSQL cluster for tests and benchmarks: Debian's server binaries,
``initdb`` in a temporary folder, a loopback port the caller picks, stopped and deleted
by :meth:`PostgresCluster.stop`.

PostgreSQL refuses to run as root: when the caller is root, the cluster folder
belongs to the ``postgres`` system user (Debian's package creates it) and the
server commands run as that user through ``runuser``. Clients connect over TCP on
127.0.0.1 with ``trust`` authentication (nobody else can reach the port).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from dicom_node.tools.loopback import free_port

__all__ = ["PostgresCluster", "postgres_bin_dir", "MISSING_REASON", "free_port"]

MISSING_REASON = ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); "
                  "install Debian's 'postgresql' package (.ci/run does)")
SERVICE_USER = "postgres"


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    for initdb in reversed(found):
        folder = Path(initdb).parent
        if (folder / "pg_ctl").is_file():
            return folder
    return None


class PostgresCluster:
    """One PostgreSQL server on ``127.0.0.1:port`` with its data in a temporary folder.

    ``durable`` False turns off fsync (tests); True keeps the server's defaults
    (benchmarks). :attr:`url` is a SQLAlchemy URL of database ``rtfsyn``.
    """

    def __init__(self, port: int, *, durable: bool = False, database: str = "rtfsyn") -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError(MISSING_REASON)
        self.bin_dir, self.port, self.durable, self.database = bin_dir, port, durable, database
        self.root = Path(tempfile.mkdtemp(prefix="rtfsyn-pg-"))
        self.data = self.root / "data"
        self._as_service_user = os.geteuid() == 0
        self._started = False

    @property
    def url(self) -> str:
        """``postgresql+psycopg://rtfsyn@127.0.0.1:<port>/<database>``."""
        return f"postgresql+psycopg://rtfsyn@127.0.0.1:{self.port}/{self.database}"

    def _run(self, args: Sequence[str], timeout: float = 120.0) -> str:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed with exit code {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def start(self) -> "PostgresCluster":
        """initdb, start the server (``pg_ctl -w`` waits until it accepts connections),
        create the database."""
        if self._as_service_user:
            user = pwd.getpwnam(SERVICE_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", "rtfsyn", "--auth=trust",
                   "-E", "UTF8", "--no-sync", "--no-instructions"])
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                   f"-c unix_socket_directories={self.root}", "-c max_connections=200"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                   "-o", " ".join(options), "-w", "-t", "60", "start"])
        self._started = True
        self._run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "rtfsyn",
                   self.database])
        return self

    def create_database(self, name: str) -> str:
        """Create another database on the server; its SQLAlchemy URL."""
        self._run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "rtfsyn", name])
        return f"postgresql+psycopg://rtfsyn@127.0.0.1:{self.port}/{name}"

    def log_tail(self, n_chars: int = 3000) -> str:
        """The end of the server log (for failure messages)."""
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-n_chars:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            if self._started:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
                self._started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
