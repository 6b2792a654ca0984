"""Helpers of the operations-service tests: a node with its services, HTTP requests,
Prometheus text parsing, and a webhook receiver that records (or refuses) POSTs.

Loopback only, ports chosen free; every server a test starts is stopped by the test.
"""
from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dicom_node.http.services import Services, start_services
from tests.reliability.helpers import RelNode

__all__ = ["HttpNode", "WebhookReceiver", "http_get", "parse_metrics", "TOKEN", "SENTINELS",
           "NEEDLES", "with_sentinels", "leaks"]

TOKEN = "test-token-0123456789abcdef"
# Patient values written into test series; none may appear in a page, API answer or webhook.
SENTINELS = {"PatientName": "Sentinel^Patient^Zyx", "PatientID": "PID-SENTINEL-913",
             "PatientBirthDate": "19230407"}
# How the values could appear in text: as given, DICOM-formatted, or split.
NEEDLES = ("Sentinel", "Zyx", "PID-SENTINEL-913", "SENTINEL-913", "19230407", "1923-04-07")


def with_sentinels(ds: Any, _k: int) -> None:
    """``mutate`` for the series factories: the sentinel patient values."""
    for key, value in SENTINELS.items():
        setattr(ds, key, value)


def leaks(texts: dict[str, str]) -> dict[str, list[str]]:
    """Where a sentinel value appears: {text name: [needles found]} (empty: none)."""
    found = {where: [n for n in NEEDLES if n.lower() in text.lower()]
             for where, text in texts.items()}
    return {where: needles for where, needles in found.items() if needles}


def http_get(url: str, *, token: str | None = None, basic: str | None = None,
             timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers, body); HTTP errors are returned, not raised."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if basic:
        request.add_header("Authorization",
                           "Basic " + base64.b64encode(f"admin:{basic}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}, with the official parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class HttpNode(RelNode):
    """A :class:`RelNode` (route MR -> T2 -> the test PACS) with ``[http]`` on a free port
    (``http`` overrides its keys) and the services of ``rtfsyn serve``."""

    def __init__(self, workdir: Path, *, http: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(workdir, http={"port": 0, **(http or {})}, **kwargs)
        self.services: Services | None = None

    def start(self) -> "HttpNode":
        super().start()
        self.services = start_services(self.config, self.node)
        return self

    def stop(self) -> None:
        if self.services is not None:
            self.services.stop()
            self.services = None
        super().stop()

    @property
    def url(self) -> str:
        """Base URL of the status service."""
        assert self.services is not None and self.services.http is not None
        return "http://%s:%d" % self.services.http.address

    def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        """GET a path of the status service."""
        return http_get(self.url + path, **kwargs)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET a path that must answer 200 with JSON."""
        status, _headers, body = self.get(path, **kwargs)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def metrics(self, **kwargs: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One scrape of ``/metrics``, parsed."""
        status, headers, body = self.get("/metrics", **kwargs)
        assert status == 200 and headers["content-type"].startswith("text/plain"), status
        return parse_metrics(body.decode())


class WebhookReceiver:
    """Records the JSON documents POSTed to it; answers 503 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.documents: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    if receiver.refused < receiver.fail_first:
                        receiver.refused += 1
                        code = 503
                    else:
                        receiver.raw.append(body)
                        receiver.documents.append(json.loads(body))
                        receiver.headers.append(dict(self.headers))
                        code = 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return "http://127.0.0.1:%d/hook" % self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
