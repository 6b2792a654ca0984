"""Webhook notifications: a refused series and a job that failed for good are POSTed to a
local receiver (started by the test on a free port), retried with back-off, remembered
across a restart, and carry no patient data."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dicom_node.http.settings import NotifyConfig
from dicom_node.http.webhook import Notifier
from dicom_node.store.joblog import JobLog
from tests.http.helpers import TOKEN, WebhookReceiver, leaks, with_sentinels
from tests.helpers.node import free_port, make_ct_file, send_files, wait_for
from tests.reliability.helpers import series_uid_of, small_series

def _notify(url: str, **extra: Any) -> dict[str, Any]:
    return {"webhook_url": url, "backoff_seconds": 0.1, "backoff_max_seconds": 0.2, **extra}


def test_refused_series_and_failed_job_are_posted(make_http_node: Any, tmp_path: Path,
                                                  webhook: WebhookReceiver) -> None:
    webhook.fail_first = 2  # the first two POSTs get 503: retried
    node = make_http_node(dest_port=free_port(), export={"max_attempts": 1},
                          notify=_notify(webhook.url, token=TOKEN))
    good = small_series(tmp_path / "good", mutate=with_sentinels)      # delivery fails: no PACS
    short = small_series(tmp_path / "short", n_slices=1, seed=1,  # refused: one slice
                         mutate=with_sentinels)
    ct = [make_ct_file(tmp_path / "ct")]                          # not eligible (SOP class)
    for files in (good, short, ct):
        assert set(send_files(files, node.port)) == {0}
    docs = wait_for(lambda: len(webhook.documents) >= 3 and webhook.documents,
                    timeout=120.0, what="three notifications")
    by_series = {d["series_uid"]: d for d in docs}
    failed = by_series[series_uid_of(good[0])]
    assert failed["event"] == "job_failed" and failed["state"] == "failed"
    assert "delivery failed after 1 attempt" in failed["reason"], failed
    assert failed["job"]["target"] == "T2" and failed["job"]["destination"] == "PACS"
    short_doc = by_series[series_uid_of(short[0])]  # its one job was rejected: told once
    assert (short_doc["event"], short_doc["state"]) == ("series_refused", "rejected")
    assert "1 slice" in short_doc["reason"] and short_doc["job"]["target"] == "T2", short_doc
    refused = by_series[series_uid_of(ct[0])]
    assert (refused["event"], refused["state"], refused["job"]) == \
        ("series_refused", "not_eligible", None)
    assert refused["reason"] == "no eligible instance (SOP class not eligible)"
    assert all(d["node"] == "RTFSYN" and d["time"].endswith("Z") for d in docs)
    assert webhook.refused == 2
    assert {h["Authorization"] for h in webhook.headers} == {f"Bearer {TOKEN}"}
    assert leaks({"webhook bodies": b"".join(webhook.raw).decode()}) == {}, "patient data"
    assert node.metrics()[("rtfsyn_notifications_total", (("outcome", "sent"),))] == 3.0
    assert len(webhook.documents) == 3, "each event once"


class _FlakyPost:
    """A stand-in for the POST: records calls; raises while ``down``."""

    def __init__(self) -> None:
        self.down, self.calls, self.sent = False, 0, []

    def __call__(self, url: str, document: dict[str, Any], **_kw: Any) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("receiver down")
        self.sent.append(document)


def _fail_a_job(tmp_path: Path) -> JobLog:
    """A job log with one series and one job that fails now."""
    from dicom_node.store.jobqueue import JobQueue
    from dicom_node.store.joblog import InstanceRecord, PlannedJob
    from dicom_node.store.db import Series, SeriesState, utcnow

    log = JobLog(tmp_path / "joblog.sqlite")
    log.record_instance(InstanceRecord("1.2.3.1", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2",
                                       "1.2.3", "1.2", tmp_path / "x.dcm", 1, None, True))
    with log.transaction() as s:  # complete, as the scheduler would after the quiet period
        series = s.query(Series).one()
        series.state, series.completed_at = SeriesState.COMPLETE, utcnow()
    log.apply_routing("1.2.3", 1, [PlannedJob("r", "T2", "PACS", "PACS", "h", 1, "mr", 1000)],
                      SeriesState.ROUTED, None, ["r"])
    queue = JobQueue(log)
    queue.failed(queue.claim_next().id, "processing error: RuntimeError: boom")
    return log


def test_notifier_retries_then_drops_and_remembers(tmp_path: Path) -> None:
    cursor = tmp_path / "cursor.json"
    config = NotifyConfig("http://127.0.0.1:9/hook", max_attempts=3, backoff_seconds=0.0,
                          backoff_max_seconds=0.0)
    post = _FlakyPost()
    log = JobLog(tmp_path / "joblog.sqlite")
    first = Notifier(config, log, "RTFSYN", cursor, post=post)
    first.load_cursor()  # a new node: empty history
    _fail_a_job(tmp_path)
    post.down = True
    assert first.poll_once() == 1, "handled (dropped after the attempts)"
    assert (post.calls, first.counts["failed"]) == (3, 1)
    post.down = False
    again = Notifier(config, log, "RTFSYN", cursor, post=post)
    again.load_cursor()
    assert again.poll_once() == 0 and post.sent == [], "a restart does not repeat an event"


def test_an_event_pending_at_a_stop_is_sent_after_the_restart(tmp_path: Path) -> None:
    cursor = tmp_path / "cursor.json"
    config = NotifyConfig("http://127.0.0.1:9/hook", max_attempts=5, backoff_seconds=60.0)
    post = _FlakyPost()
    log = JobLog(tmp_path / "joblog.sqlite")
    first = Notifier(config, log, "RTFSYN", cursor, post=post, poll_seconds=0.05)
    first.start()
    _fail_a_job(tmp_path)
    post.down = True
    wait_for(lambda: post.calls >= 1, what="a first attempt")
    first.stop()  # stops during the 60 s back-off: the event is not handled
    post.down = False
    second = Notifier(config, log, "RTFSYN", cursor, post=post)
    second.load_cursor()
    assert second.poll_once() == 1
    assert [d["event"] for d in post.sent] == ["job_failed"]
