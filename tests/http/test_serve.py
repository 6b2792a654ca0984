"""``rtfsyn serve`` with ``[http]`` as a child process: the status service answers beside
the DICOM port; an HTTP port in use stops the start with exit code 3 and the reason."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.http.helpers import http_get
from tests.helpers.node import free_port, wait_for
from tests.reliability.process import ProcNode


def _answer(url: str) -> bytes | None:
    """The body of a 200 answer; None while nothing listens (the service starts just after
    the DICOM port)."""
    try:
        status, _headers, body = http_get(url, timeout=5.0)
    except OSError:
        return None
    return body if status == 200 else None


def test_serve_runs_the_status_service(tmp_path: Path, tiny_checkpoint: Path) -> None:
    http_port = free_port()
    node = ProcNode(tmp_path / "node", tiny_checkpoint, http={"port": http_port})
    node.start()
    try:
        url = f"http://127.0.0.1:{http_port}/health"
        body = wait_for(lambda: _answer(url), timeout=60.0, what="/health")
        assert b'"ok"' in body
        assert http_get(f"http://127.0.0.1:{http_port}/ready")[0] == 200
    finally:
        assert node.stop() == 0
    assert f"rtfsyn status service on http://127.0.0.1:{http_port}/" in node.logs()


def test_serve_refuses_to_start_when_the_http_port_is_taken(tmp_path: Path,
                                                            tiny_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        node = ProcNode(tmp_path / "node", tiny_checkpoint, http={"port": port})
        done = subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--config",
                               str(node.config_path)], capture_output=True, text=True,
                              timeout=300, check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "rtfsyn serve: cannot start the node:" in done.stderr
    assert "Address already in use" in done.stderr, done.stderr[-2000:]
