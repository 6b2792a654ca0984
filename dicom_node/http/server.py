"""The status service's server: uvicorn serving the Starlette app in a thread of the node.

The listening socket is bound by :meth:`StatusServer.start` itself, so a port in use
fails at once with ``OSError`` (``rtfsyn serve`` exits 3 with the message) and port 0
picks a free port (tests). uvicorn installs no signal handlers outside the main thread
and is given no logging configuration: the node's logging stays as it is.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

__all__ = ["StatusServer"]

logger = logging.getLogger(__name__)


class StatusServer:
    """Serve ``app`` on ``host:port`` until :meth:`stop`."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on."""
        if self._address is None:
            raise RuntimeError("the status server is not running")
        return self._address

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    def start(self, timeout: float = 30.0) -> "StatusServer":
        """Bind, start serving in a thread, return once uvicorn has started."""
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("the status server is already running")
        sock = self._bind()
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                  name="rtfsyn-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise OSError(f"the HTTP status service did not start on "
                              f"{self.host}:{self.port}")
            time.sleep(0.02)
        self._server, self._thread = server, thread
        self._address = sock.getsockname()[:2]
        logger.info("HTTP status service on http://%s:%d/", *self._address)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (idempotent)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("the HTTP status service did not stop within %.0f s", timeout)
        self._address = None
