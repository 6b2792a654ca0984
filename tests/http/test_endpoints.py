"""The HTTP status service, in process on a free port: health, readiness (and its 503
cases), the JSON API against ``rtfsyn status --json``, the bearer token, and the page."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from dicom_node.store.status import StatusFilter, build_report
from dicom_node.http.readiness import Readiness
from dicom_node.receive.disk_guard import DiskGuard
from tests.http.helpers import TOKEN, HttpNode
from tests.helpers.node import TestStorageSCP, send_files, wait_for
from tests.reliability.helpers import series_uid_of, small_series


def _full_disk(_path: Path) -> tuple[int, int, int]:
    return 1000, 900, 100  # 90 % used


def test_health_and_ready(make_http_node: Any, pacs: TestStorageSCP) -> None:
    node = make_http_node(dest_port=pacs.port)
    assert node.get_json("/health")["status"] == "ok"
    body = node.get_json("/ready")
    assert body["ready"] is True
    assert {k: v["ok"] for k, v in body["checks"].items()} == {
        "model": True, "disk": True, "job_log": True}
    assert body["destinations"] == {"PACS": {"last_outcome": None, "at": None, "error": None}}


def test_ready_503_when_the_checkpoint_is_missing(make_http_node: Any, pacs: TestStorageSCP,
                                                  tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    node = make_http_node(dest_port=pacs.port,
                          model={"checkpoint": str(checkpoint), "device": "cpu"})
    assert node.get("/ready")[0] == 200
    checkpoint.unlink()  # someone removed the model the node is configured with
    status, _headers, body = node.get("/ready")
    assert status == 503
    check = json.loads(body)["checks"]["model"]
    assert check["ok"] is False and "no model checkpoint" in check["detail"], check
    assert node.get("/health")[0] == 200, "liveness does not depend on readiness"


def test_ready_503_when_the_disk_is_over_the_watermark(make_http_node: Any,
                                                       pacs: TestStorageSCP,
                                                       tmp_path: Path) -> None:
    disk = DiskGuard(tmp_path, 75.0, usage=_full_disk, cache_seconds=0.0)
    node = make_http_node(dest_port=pacs.port, disk=disk)
    status, _headers, body = node.get("/ready")
    assert status == 503
    check = json.loads(body)["checks"]["disk"]
    assert check == {"ok": False, "detail": "90.0% used, at or above the watermark 75%"}
    metrics = node.metrics()
    assert metrics[("rtfsyn_disk_used_ratio", ())] == pytest.approx(0.9)
    assert metrics[("rtfsyn_disk_watermark_ratio", ())] == pytest.approx(0.75)


class _UnreachableLog:
    """A job log whose database cannot be opened."""

    def transaction(self) -> Any:
        raise OperationalError("SELECT 1", {}, Exception("unable to open database file"))


def test_ready_reports_an_unreachable_job_log(tmp_path: Path) -> None:
    from tests.helpers.node import node_config

    config = node_config(tmp_path)
    ready, body = Readiness(config, _UnreachableLog(),  # type: ignore[arg-type]
                            DiskGuard(tmp_path, 75.0)).report()
    assert ready is False
    assert body["checks"]["job_log"] == {"ok": False,
                                         "detail": "job log unreachable: OperationalError"}


def _run_one_series(node: HttpNode, folder: Path) -> str:
    files = small_series(folder)
    assert set(send_files(files, node.port)) == {0}
    uid = series_uid_of(files[0])
    assert node.wait_jobs_final(uid)[0]["state"] == "done"
    return uid


def _same(api: dict, report: dict) -> dict:
    """The report without the time it was generated (two calls, two times)."""
    assert api["generated_at"] and report["generated_at"]
    return {**api, "generated_at": report["generated_at"]}


def test_api_is_the_status_report_with_filters(make_http_node: Any, pacs: TestStorageSCP,
                                               tmp_path: Path) -> None:
    node = make_http_node(dest_port=pacs.port)
    uid = _run_one_series(node, tmp_path / "a")
    report = build_report(node.config.database_path)
    assert node.get_json("/api/series")["series"] == report["series"]
    assert node.get_json("/api/jobs")["jobs"] == report["jobs"]
    assert _same(node.get_json("/api/status"), report) == report
    failed = build_report(node.config.database_path, StatusFilter(states=frozenset({"failed"})))
    assert _same(node.get_json("/api/status?state=failed"), failed) == failed
    assert [s["series_uid"] for s in node.get_json(f"/api/series?series={uid}")["series"]] \
        == [uid]
    assert len(node.get_json(f"/api/jobs?series={uid[-12:]}")["jobs"]) == 1, "a UID's tail"
    assert node.get_json("/api/jobs?state=failed,rejected")["jobs"] == []
    assert [j["state"] for j in node.get_json("/api/jobs?state=done&target=t2")["jobs"]] \
        == ["done"]
    assert node.get_json("/api/jobs?target=FLAIR")["jobs"] == []
    assert node.get_json("/api/jobs?since=2999-01-01T00:00:00Z")["jobs"] == []
    assert len(node.get_json("/api/series?since=1h")["series"]) == 1
    assert len(node.get_json("/api/series?since=2000-01-01T00:00:00%2B01:00")["series"]) == 1
    for bad, word in (("/api/jobs?limit=0", "limit"), ("/api/jobs?since=yesterday", "since"),
                      ("/api/series?colour=red", "colour"), ("/api/jobs?state=lost", "lost"),
                      ("/api/series?target=T2", "target"), ("/api/status?limit=x", "limit")):
        status, _headers, body = node.get(bad)
        assert status == 400 and word in json.loads(body)["error"], (bad, body)
    # the destination's last outcome appears in /ready once a delivery happened
    dest = node.get_json("/ready")["destinations"]["PACS"]
    assert dest["last_outcome"] == "ok" and dest["at"], dest


def test_token_guards_everything_but_liveness(make_http_node: Any, pacs: TestStorageSCP
                                              ) -> None:
    node = make_http_node(dest_port=pacs.port, http={"token": TOKEN})
    assert node.get("/health")[0] == 200
    status, _headers, body = node.get("/ready")
    assert status == 200 and json.loads(body) == {"ready": True}, "no details without token"
    assert "checks" in node.get_json("/ready", token=TOKEN)
    for path in ("/metrics", "/api/series", "/api/jobs", "/api/status", "/",
                 "/thumbnails/1/source.png"):
        status, headers, _body = node.get(path)
        assert status == 401, path
        assert headers["www-authenticate"].split()[0] in ("Bearer", "Basic"), headers
        assert node.get(path, token="wrong-token-0123456789")[0] == 401, path
    assert node.get("/", token=TOKEN)[0] == 200
    assert node.get("/", basic=TOKEN)[0] == 200, "a browser sends the token by HTTP Basic"
    assert node.get("/")[1]["www-authenticate"].startswith("Basic"), "browsers ask for it"
    assert node.get("/metrics", token=TOKEN)[0] == 200


def test_page_lists_jobs_with_thumbnails(make_http_node: Any, pacs: TestStorageSCP,
                                         tmp_path: Path) -> None:
    node = make_http_node(dest_port=pacs.port, http={"refresh_seconds": 7})
    uid = _run_one_series(node, tmp_path / "a")
    status, headers, body = node.get("/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert '<meta http-equiv="refresh" content="7">' in page
    assert uid in page and "done" in page
    assert 'src="thumbnails/1/source.png"' in page and 'src="thumbnails/1/derived.png"' in page
    for kind in ("source", "derived"):
        status, headers, png = node.get(f"/thumbnails/1/{kind}.png")
        assert status == 200 and headers["content-type"] == "image/png"
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert node.get("/thumbnails/99/source.png")[0] == 404
    assert node.get("/thumbnails/1/other.png")[0] == 404
    wait_for(lambda: node.get("/health")[0] == 200, what="still serving")
