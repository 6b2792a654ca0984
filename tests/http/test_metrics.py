"""``/metrics``: the Prometheus exposition moves across a real run (C-STORE in, the tiny
model, C-STORE out to a test PACS), and a refused C-STORE is counted by status."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.helpers.node import TestStorageSCP, free_port, send_files, wait_for
from tests.reliability.helpers import series_uid_of, small_series

Key = tuple[str, tuple[tuple[str, str], ...]]


def _delta(before: dict[Key, float], after: dict[Key, float], name: str,
           **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_move_across_a_run(make_http_node: Any, pacs: TestStorageSCP,
                                    tmp_path: Path) -> None:
    node = make_http_node(dest_port=pacs.port)
    before = node.metrics()
    assert before[("rtfsyn_job_log_up", ())] == 1.0
    files = small_series(tmp_path / "src")
    assert set(send_files(files, node.port)) == {0}
    job = node.wait_jobs_final(series_uid_of(files[0]))[0]
    assert job["state"] == "done"
    after = node.metrics()
    n = float(len(files))
    assert _delta(before, after, "rtfsyn_instances_received_total") == n
    assert _delta(before, after, "rtfsyn_instances") == n
    assert _delta(before, after, "rtfsyn_associations_total", outcome="released") == 1.0
    assert _delta(before, after, "rtfsyn_series", state="routed") == 1.0
    assert _delta(before, after, "rtfsyn_jobs", state="done", target="T2") == 1.0
    assert _delta(before, after, "rtfsyn_synthesis_seconds_count") == 1.0
    assert _delta(before, after, "rtfsyn_synthesis_seconds_sum") \
        == pytest.approx(job["process_seconds"])
    assert _delta(before, after, "rtfsyn_synthesis_seconds_bucket", le="+Inf") == 1.0
    assert _delta(before, after, "rtfsyn_delivery_attempts_total", destination="PACS") == 1.0
    assert _delta(before, after, "rtfsyn_delivery_failures_total", destination="PACS") == 0.0
    assert after[("rtfsyn_queue_depth", (("queue", "synthesis"),))] == 0.0
    assert after[("rtfsyn_queue_depth", (("queue", "delivery"),))] == 0.0
    assert 0.0 < after[("rtfsyn_disk_used_ratio", ())] < 1.0
    assert after[("process_resident_memory_bytes", ())] > 0


def test_refused_cstore_and_failed_delivery_are_counted(make_http_node: Any,
                                                        tmp_path: Path) -> None:

    node = make_http_node(dest_port=free_port(), export={"max_attempts": 1})  # nobody there
    files = small_series(tmp_path / "src")
    assert set(send_files(files, node.port)) == {0}
    job = node.wait_jobs_final(series_uid_of(files[0]))[0]
    assert job["state"] == "failed", job
    clash = dcmread(files[0])  # the same SOP Instance UID in another series: refused
    clash.SeriesInstanceUID = generate_uid()
    clash.save_as(tmp_path / "clash.dcm")
    before = node.metrics()
    assert send_files([tmp_path / "clash.dcm"], node.port) == [0x0111]
    after = node.metrics()
    assert _delta(before, after, "rtfsyn_instances_refused_total", status="0x0111") == 1.0
    assert _delta(before, after, "rtfsyn_instances_received_total") == 0.0
    assert after[("rtfsyn_delivery_failures_total", (("destination", "PACS"),))] == 1.0
    assert after[("rtfsyn_jobs", (("state", "failed"), ("target", "T2")))] == 1.0
    dest = node.get_json("/ready")["destinations"]["PACS"]
    assert dest["last_outcome"] == "failed" and "unreachable" in dest["error"], dest


def test_a_job_waiting_for_its_destination_is_in_the_delivery_queue(make_http_node: Any,
                                                                    tmp_path: Path) -> None:

    node = make_http_node(dest_port=free_port())  # nobody there; retried for the window
    files = small_series(tmp_path / "src")
    assert set(send_files(files, node.port)) == {0}
    uid = series_uid_of(files[0])
    wait_for(lambda: [j for j in node.jobs_of(uid) if j["state"] == "waiting"], timeout=120.0,
             what="the job waiting for its destination")
    metrics = node.metrics()
    assert metrics[("rtfsyn_queue_depth", (("queue", "delivery"),))] == 1.0
    assert metrics[("rtfsyn_jobs", (("state", "waiting"), ("target", "T2")))] == 1.0
    page = node.get("/")[2].decode()
    assert "waiting" in page and "next attempt" in page
