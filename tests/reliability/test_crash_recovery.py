"""The node SIGKILLed while receiving, while synthesizing and while sending (an
``rtfsyn serve`` child process killed by PID at the moment the job log or the destination
shows it): after a restart every fully received series is processed exactly once and
delivered (derived SOP Instance UIDs counted at the destination), and a partial
association is recorded, not processed. Job-log rows lost with the last commits (what an
OS crash or power loss can do) are recorded again from the spool at restart."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from tests.helpers.node import TestStorageSCP, send_files
from tests.reliability.figures import delivered, fault_survived, instances
from tests.reliability.helpers import received_by, series_uid_of, small_series
from tests.reliability.process import ProcNode, wait_fast


@pytest.fixture
def procs() -> Iterator[list[ProcNode]]:
    """Node processes a test started; each is stopped (by PID) after it."""
    started: list[ProcNode] = []
    yield started
    for node in started:
        node.stop()


def _check_delivered_once(node: ProcNode, pacs: TestStorageSCP, series_uids: list[str]) -> int:
    """Each series has exactly one job, done, and its derived instances are all at the
    destination, each SOP Instance UID once per derived series; returns instances."""
    jobs = node.status()["jobs"]
    total = 0
    for uid in series_uids:
        mine = [j for j in jobs if j["series_uid"] == uid]
        assert [j["state"] for j in mine] == ["done"], mine
        n = mine[0]["n_derived"]
        _received, distinct = received_by(pacs, mine[0]["derived_series_uid"])
        assert n > 0 and distinct == n, f"{distinct} distinct of {n} derived instances"
        total += n
    derived_series = {str(ds.SeriesInstanceUID) for ds in pacs.datasets}
    assert len(derived_series) == len(series_uids), "one derived series per source series"
    return total


def test_killed_while_receiving(procs: list[ProcNode], tmp_path: Path, tiny_checkpoint: Path,
                                pacs: TestStorageSCP) -> None:
    node = ProcNode(tmp_path / "node", tiny_checkpoint, dest_port=pacs.port,
                    node={"stable_seconds": 3.0})
    procs.append(node.start())
    complete = small_series(tmp_path / "complete", seed=1)
    assert set(send_files(complete, node.port)) == {0}  # released; quiet period not over yet
    big = small_series(tmp_path / "big", n_slices=60, seed=2)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RTFSYN")
    assert assoc.is_established
    sent: list[int] = []
    sender = threading.Thread(target=lambda: sent.extend(
        int(assoc.send_c_store(f).get("Status", 0xFFFF)) for f in big if assoc.is_established))
    sender.start()
    big_uid = series_uid_of(big[0])
    wait_fast(lambda: node.query("SELECT n_instances FROM series WHERE series_uid = ?", big_uid)
              and node.query("SELECT n_instances FROM series WHERE series_uid = ?",
                             big_uid)[0][0] >= 10, 60, "10 instances of the big series")
    assert node.job_states() == [], "the complete series must not be routed yet"
    node.kill()
    sender.join(timeout=60)
    node.start()
    jobs = node.wait_jobs_final(1)
    assert len(jobs) == 1 and jobs[0]["series_uid"] == series_uid_of(complete[0])
    big_row = next(s for s in node.status()["series"] if s["series_uid"] == big_uid)
    assert big_row["state"] == "partial" and "aborted" in big_row["reason"], big_row
    aborted = [a for a in node.status()["associations"]["recent"] if a["state"] == "aborted"]
    assert any("node stopped" in (a["reason"] or "") for a in aborted), aborted
    stored_before_kill = big_row["n_instances"]
    assert set(send_files(big, node.port)) == {0}  # the clean re-send
    node.wait_jobs_final(2)
    count = _check_delivered_once(node, pacs, [series_uid_of(complete[0]), big_uid])
    report = node.status()
    instances(len(complete) + len(big), report["instances"]["total"])
    delivered(2, count)
    fault_survived("SIGKILL while receiving", f"partial association recorded "
                   f"({stored_before_kill} instances), not processed; complete series "
                   "processed once after restart")


def test_killed_while_synthesizing(procs: list[ProcNode], tmp_path: Path,
                                   tiny_checkpoint: Path, pacs: TestStorageSCP) -> None:
    node = ProcNode(tmp_path / "node", tiny_checkpoint, dest_port=pacs.port)
    procs.append(node.start())
    files = small_series(tmp_path / "src", n_slices=16, size=48)
    assert set(send_files(files, node.port)) == {0}
    wait_fast(lambda: node.job_states() == ["running"], 60, "the job running")
    node.kill()
    assert node.job_states() == ["running"], "killed mid-synthesis"
    node.start()
    jobs = node.wait_jobs_final(1)
    assert jobs[0]["state"] == "done" and jobs[0]["attempts"] == 2, jobs
    count = _check_delivered_once(node, pacs, [series_uid_of(files[0])])
    instances(len(files), node.status()["instances"]["total"])
    delivered(1, count)
    fault_survived("SIGKILL while synthesizing", "job re-queued at restart (attempt 2), "
                   "delivered once")


def test_killed_while_sending(procs: list[ProcNode], tmp_path: Path,
                              tiny_checkpoint: Path) -> None:
    gate = threading.Event()
    arrived: list[str] = []

    def status_for(ds: Any) -> int:
        arrived.append(str(ds.SOPInstanceUID))
        if len(arrived) >= 3 and not gate.is_set():
            gate.wait(timeout=60)  # hold the node mid-delivery until it is killed
        return 0x0000
    pacs = TestStorageSCP(status_for=status_for).start()
    try:
        node = ProcNode(tmp_path / "node", tiny_checkpoint, dest_port=pacs.port,
                        export={"timeout_seconds": 30})
        procs.append(node.start())
        files = small_series(tmp_path / "src")
        assert set(send_files(files, node.port)) == {0}
        wait_fast(lambda: len(arrived) >= 3, 120, "the delivery under way")
        assert node.job_states() == ["sending"]
        node.kill()
        gate.set()
        node.start()
        jobs = node.wait_jobs_final(1)
        deliveries = node.status()["deliveries"]
        assert any("interrupted" in (d["error"] or "") for d in deliveries), deliveries
        count = _check_delivered_once(node, pacs, [series_uid_of(files[0])])
        instances(len(files), node.status()["instances"]["total"])
        delivered(1, count)
        fault_survived("SIGKILL while sending", f"delivery interrupted, retried at restart: "
                       f"{count} distinct derived instances, one series "
                       f"({len(arrived)} receptions)")
        assert jobs[0]["state"] == "done"
    finally:
        gate.set()
        pacs.stop()


def _lose_last_rows(database: Path, series_uid: str, lost: int) -> None:
    """What an OS crash or power loss can leave (SQLite keeps a prefix of the log's commits):
    the rows of the association's last ``lost`` instances and its release are gone."""
    con = sqlite3.connect(database)
    try:
        rows = con.execute("SELECT id, association_id FROM instances WHERE series_uid = ? "
                           "ORDER BY id DESC LIMIT ?", (series_uid, lost)).fetchall()
        assoc = rows[0][1]
        con.executemany("DELETE FROM instances WHERE id = ?", [(r[0],) for r in rows])
        con.execute("UPDATE series SET n_instances = n_instances - ? WHERE series_uid = ?",
                    (lost, series_uid))
        con.execute("UPDATE associations SET state = 'open', ended_at = NULL, reason = NULL, "
                    "n_instances = n_instances - ? WHERE id = ?", (lost, assoc))
        con.commit()
    finally:
        con.close()


def test_rows_lost_with_the_last_commits_are_recovered_from_the_spool(
        procs: list[ProcNode], tmp_path: Path, tiny_checkpoint: Path,
        pacs: TestStorageSCP) -> None:
    node = ProcNode(tmp_path / "node", tiny_checkpoint, dest_port=pacs.port,
                    node={"stable_seconds": 3.0})
    procs.append(node.start())
    files = small_series(tmp_path / "src", n_slices=12, seed=4)
    uid = series_uid_of(files[0])
    assert set(send_files(files, node.port)) == {0}  # every instance acknowledged
    node.kill()
    assert node.job_states() == [], "killed before the quiet period ended"
    _lose_last_rows(node.database, uid, lost=5)
    node.start()
    report = node.status()
    assert report["instances"]["total"] == len(files), "every acknowledged instance recorded"
    recovered = [a for a in report["associations"]["recent"]
                 if "recovered at start-up" in (a["reason"] or "")]
    assert len(recovered) == 1 and recovered[0]["state"] == "aborted", recovered
    wait_fast(lambda: node.query("SELECT state FROM series WHERE series_uid = ?", uid)
              == [("partial",)], 60, "the series partial (nothing released survived)")
    assert node.job_states() == [], "instances of lost associations trigger nothing"
    assert set(send_files(files, node.port)) == {0}  # the peer's re-send completes it
    jobs = node.wait_jobs_final(1)
    assert [j["state"] for j in jobs] == ["done"], jobs
    _check_delivered_once(node, pacs, [uid])
    fault_survived("job-log rows lost with the last commits (power loss)",
                   "spool files recorded at restart under an aborted association; series "
                   "partial until re-sent, then processed once")
