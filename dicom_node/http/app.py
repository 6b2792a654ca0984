"""The status service's ASGI application (Starlette): read-only views of one node.

Routes (``GET`` only):

* ``/health`` - liveness: the process answers (always open);
* ``/ready`` - 200 when the model checkpoint is present, the disk under the watermark
  and the job log reachable, else 503 (the body names the failing check; with a token
  configured, callers without it get the status code and ``ready`` only);
* ``/metrics`` - Prometheus text exposition (:mod:`dicom_node.http.metrics`);
* ``/api/status``, ``/api/series``, ``/api/jobs`` - JSON (:mod:`dicom_node.http.api`);
* ``/`` - the status page, and ``/thumbnails/<job>/source.png|derived.png``.

Endpoints are plain functions: Starlette runs them in its thread pool, where the job
log's blocking SQLAlchemy sessions belong.
"""
from __future__ import annotations

import base64
import binascii
import functools
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from dicom_node.config import Config
from dicom_node.http.api import BadQuery, query_rows, report
from dicom_node.http.metrics import exposition
from dicom_node.http.readiness import Readiness
from dicom_node.http.thumbnails import thumbnail_png
from dicom_node.store.status import StatusFilter, build_report
from dicom_node.store.jobqueue import JobQueue
from dicom_node.store.joblog import DATABASE_ERRORS, JobLog, UnknownJob

__all__ = ["StatusContext", "create_app", "PAGE_ROWS"]

logger = logging.getLogger(__name__)
PAGE_ROWS = 20  # series and jobs on the page
_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# ISO times of the report ("2026-12-06T05:56:14.451Z") shown as "2026-12-06 05:56:14"
_TEMPLATES.env.filters["when"] = lambda iso: "" if not iso else iso[:19].replace("T", " ")
_THUMBNAIL_SLOTS = threading.BoundedSemaphore(2)  # decoding competes with the node's work
_WITH_OUTPUT = frozenset({"sending", "done"})


@dataclass
class StatusContext:
    """What the endpoints read: the configuration, the job log, the readiness checks and
    the metrics registry."""

    config: Config
    log: JobLog
    readiness: Readiness
    registry: Any  # prometheus_client.CollectorRegistry

    @property
    def database(self) -> Any:
        """The job log as the status report takes it (a SQLite path or a database URL)."""
        return self.config.database_url

    @property
    def token(self) -> str | None:
        """The bearer token ``[http]`` requires, if any."""
        return self.config.http.token if self.config.http else None


def _authorized(request: Request, token: str | None) -> bool:
    """True without a token, or with ``Bearer <token>`` or Basic ``<any>:<token>``."""
    if token is None:
        return True
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    offered = value.strip()
    if scheme.lower() == "basic":
        try:
            offered = base64.b64decode(offered, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(offered.encode("utf-8"), token.encode("utf-8"))


def _guarded(ctx: StatusContext, *, browser: bool = False
             ) -> Callable[[Callable[[Request], Response]], Callable[[Request], Response]]:
    """Refuse callers without the token (401; a Basic challenge for pages a browser opens)."""
    def wrap(endpoint: Callable[[Request], Response]) -> Callable[[Request], Response]:
        @functools.wraps(endpoint)
        def checked(request: Request) -> Response:
            if not _authorized(request, ctx.token):
                challenge = 'Basic realm="rtfsyn", charset="UTF-8"' if browser else \
                    'Bearer realm="rtfsyn"'
                return JSONResponse({"error": "authorization required"}, status_code=401,
                                    headers={"WWW-Authenticate": challenge})
            try:
                return endpoint(request)
            except DATABASE_ERRORS as exc:
                logger.warning("%s: job log unreachable (%s)", request.url.path,
                               type(exc).__name__)
                return JSONResponse({"error": f"job log unreachable: {type(exc).__name__}"},
                                    status_code=503)
        return checked
    return wrap


def _series_files(ctx: StatusContext, job_id: int, kind: str) -> list[Path]:
    """The files of a job's source series (released, eligible) or of its derived series."""
    job = JobQueue(ctx.log).job(job_id)
    if kind == "source":
        return ctx.log.released_instances(job.series_uid)
    folder = ctx.config.out_dir / f"job-{job.id}"
    return [folder / name for name in job.derived_files]


@functools.lru_cache(maxsize=256)
def _png(paths: tuple[str, ...], stamp: tuple[int, int]) -> bytes:
    """Cached thumbnail; ``stamp`` (first and last file's mtime) tells a rebuilt series."""
    with _THUMBNAIL_SLOTS:
        return thumbnail_png([Path(p) for p in paths])


def _thumbnail(ctx: StatusContext, request: Request) -> Response:
    job_id, kind = int(request.path_params["job_id"]), request.path_params["kind"]
    if kind not in ("source", "derived"):
        return Response(status_code=404)
    try:
        files = _series_files(ctx, job_id, kind)
        stamp = (files[0].stat().st_mtime_ns, files[-1].stat().st_mtime_ns) if files else None
    except (UnknownJob, OSError):
        return Response(status_code=404)
    if not files or stamp is None:
        return Response(status_code=404)
    try:
        png = _png(tuple(str(f) for f in files), stamp)
    except Exception as exc:  # any unreadable series: a missing picture, not a failed page
        logger.warning("no thumbnail for job %d (%s): %s", job_id, kind, type(exc).__name__)
        return Response(status_code=404)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=60"})


def _page(ctx: StatusContext, request: Request) -> Response:
    status = build_report(ctx.database, StatusFilter(limit=PAGE_ROWS))
    for job in status["jobs"]:
        job["thumbnails"] = job["state"] in _WITH_OUTPUT and job["n_derived"] > 0
    ready, readiness = ctx.readiness.report()
    refresh = ctx.config.http.refresh_seconds if ctx.config.http else 10
    return _TEMPLATES.TemplateResponse(request, "status.html", {
        "node": ctx.config.node.ae_title, "status": status, "ready": ready,
        "readiness": readiness, "refresh": refresh})


def _rows(ctx: StatusContext, request: Request, kind: str) -> Response:
    try:
        rows = query_rows(ctx.database, kind, dict(request.query_params))
    except BadQuery as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({kind: rows})


def create_app(ctx: StatusContext) -> Starlette:
    """The Starlette application for one node."""
    guard = _guarded(ctx)

    def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "node": ctx.config.node.ae_title})

    def ready(request: Request) -> Response:
        ok, body = ctx.readiness.report()
        if not _authorized(request, ctx.token):
            body = {"ready": ok}
        return JSONResponse(body, status_code=200 if ok else 503)

    @guard
    def metrics(_request: Request) -> Response:
        return Response(exposition(ctx.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @guard
    def api_status(request: Request) -> Response:
        try:
            return JSONResponse(report(ctx.database, dict(request.query_params)))
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    routes = [
        Route("/health", health), Route("/ready", ready), Route("/metrics", metrics),
        Route("/api/status", api_status),
        Route("/api/series", guard(lambda r: _rows(ctx, r, "series"))),
        Route("/api/jobs", guard(lambda r: _rows(ctx, r, "jobs"))),
        Route("/", _guarded(ctx, browser=True)(lambda r: _page(ctx, r))),
        Route("/thumbnails/{job_id:int}/{kind}.png",
              _guarded(ctx, browser=True)(lambda r: _thumbnail(ctx, r))),
    ]
    return Starlette(routes=routes)
