"""The job log: state machine, idempotent instances, completion, routing, queue, recovery."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.store import db
from dicom_node.config import ExportConfig
from dicom_node.store.db import (AssociationState, DeliveryStatus, IllegalTransition, JobState,
                                 SeriesState, check_transition)
from dicom_node.store.jobqueue import MAX_PROCESSING_ATTEMPTS, JobQueue
from dicom_node.store.joblog import (DeliveryOutcome, InstanceConflict, InstanceRecord, JobLog,
                                     PlannedJob)

STUDY, SERIES = "1.2.3", "1.2.3.4"


@pytest.fixture
def log(tmp_path: Path) -> JobLog:
    return JobLog(tmp_path / "joblog.sqlite")


def _instance(sop: str, assoc: int | None, *, series: str = SERIES,
              eligible: bool = True) -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                          transfer_syntax_uid="1.2.840.10008.1.2.1", series_uid=series,
                          study_uid=STUDY, path=Path(f"/spool/{sop}.dcm"), size_bytes=10,
                          association_id=assoc, eligible=eligible, modality="MR")


def _plan(target: str = "T2") -> PlannedJob:
    return PlannedJob(route="r", target=target, destination="PACS", dest_ae_title="PACS",
                      dest_host="127.0.0.1", dest_port=4242, output_format="mr",
                      series_number_offset=1000)


def _series(log: JobLog, uid: str = SERIES) -> db.Series:
    with log.session() as s:
        return s.scalar(select(db.Series).where(db.Series.series_uid == uid))


def _age(log: JobLog, seconds: float = 60.0) -> None:
    """Pretend every series was last touched ``seconds`` ago."""
    with log.transaction() as s:
        for row in s.scalars(select(db.Series)):
            row.last_received_at -= dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("old, new", [
    (JobState.QUEUED, JobState.RUNNING), (JobState.RUNNING, JobState.SENDING),
    (JobState.SENDING, JobState.DONE), (JobState.FAILED, JobState.SENDING),
    (SeriesState.RECEIVING, SeriesState.COMPLETE), (SeriesState.ROUTED, SeriesState.RECEIVING),
    (AssociationState.OPEN, AssociationState.ABORTED), (DeliveryStatus.RUNNING, DeliveryStatus.OK),
])
def test_allowed_transitions(old: db.enum.Enum, new: db.enum.Enum) -> None:
    check_transition(old, new)  # raises if refused


@pytest.mark.parametrize("old, new, message", [
    (JobState.DONE, JobState.QUEUED, "JobState 'done' cannot become 'queued'; allowed: sending"),
    (JobState.REJECTED, JobState.QUEUED, "allowed: none (final state)"),
    (JobState.QUEUED, JobState.DONE, "allowed: failed, running"),
    (SeriesState.RECEIVING, SeriesState.ROUTED, "'receiving' cannot become 'routed'"),
    (AssociationState.RELEASED, AssociationState.ABORTED, "none (final state)"),
    (JobState.QUEUED, SeriesState.ROUTED, "cannot change a JobState into a SeriesState"),
])
def test_illegal_transitions_are_refused(old: db.enum.Enum, new: db.enum.Enum,
                                         message: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(old, new)
    assert message in str(info.value)


def test_engine_is_built_once_per_database(tmp_path: Path) -> None:
    assert db.get_engine(tmp_path / "a.sqlite") is db.get_engine(tmp_path / "a.sqlite")
    assert db.get_engine(tmp_path / "a.sqlite") is not db.get_engine(tmp_path / "b.sqlite")
    with db.get_engine(tmp_path / "a.sqlite").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_duplicates_are_idempotent_and_keep_a_released_association(log: JobLog) -> None:
    first = log.open_association("SCU", "RTFSYN", "127.0.0.1", 5000)
    assert log.record_instance(_instance("1.1", first)) is True
    log.end_association(first, AssociationState.RELEASED)
    second = log.open_association("SCU", "RTFSYN", "127.0.0.1", 5001)
    assert log.record_instance(_instance("1.1", second)) is False
    log.end_association(second, AssociationState.ABORTED, "test")
    with log.session() as s:
        rows = s.scalars(select(db.Instance)).all()
    assert len(rows) == 1 and rows[0].n_received == 2 and rows[0].association_id == first
    assert _series(log).n_instances == 1


def test_fast_path_rows_read_back_like_orm_rows(log: JobLog) -> None:
    """The first instance of a series goes through the ORM, the next ones through the raw
    sqlite3 hot path (joblog_fast): both read back alike and count alike."""
    assoc = log.open_association("SCU", "RTFSYN", None, None)
    assert log.record_instance(_instance("1.1", assoc)) is True  # new series: ORM
    assert log.record_instance(_instance("1.2", assoc)) is True  # hot path
    assert log.record_instance(_instance("1.3", None, eligible=False)) is True
    with log.session() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(db.Instance))}
        assoc_row = s.get(db.Association, assoc)
        raw = dict(s.execute(select(db.Instance.sop_instance_uid, db.Instance.received_at)
                             .where(db.Instance.sop_instance_uid.in_(["1.1", "1.2"]))).all())
        stamps = s.connection().exec_driver_sql(
            "SELECT received_at FROM instances ORDER BY id").scalars().all()
    assert {len(v) for v in stamps} == {26}  # 'YYYY-MM-DD HH:MM:SS.ffffff', both paths
    assert raw["1.1"] <= raw["1.2"] and isinstance(raw["1.2"], dt.datetime)
    assert rows["1.2"].eligible is True and rows["1.3"].eligible is False
    assert rows["1.2"].path == "/spool/1.2.dcm" and rows["1.2"].n_received == 1
    assert assoc_row.n_instances == 2 and _series(log).n_instances == 3
    assert _series(log).last_received_at >= raw["1.2"]


def test_fast_path_leaves_duplicates_and_conflicts_to_the_full_path(log: JobLog) -> None:
    assoc = log.open_association("SCU", "RTFSYN", None, None)
    log.record_instance(_instance("1.1", assoc))
    log.record_instance(_instance("1.2", assoc))
    assert log.record_instance(_instance("1.2", assoc)) is False  # duplicate
    with pytest.raises(InstanceConflict, match="already recorded in series"):
        log.record_instance(_instance("1.2", assoc, series="9.9"))
    with log.session() as s:
        assert s.scalar(select(db.Instance).where(
            db.Instance.sop_instance_uid == "1.2")).n_received == 2
        assert s.get(db.Association, assoc).n_instances == 3
    assert _series(log).n_instances == 2 and _series(log, "9.9") is None


def test_quiet_series_completes_only_with_released_instances(log: JobLog) -> None:
    aborted = log.open_association("SCU", "RTFSYN", None, None)
    log.record_instance(_instance("1.1", aborted, series="9.1"))
    log.end_association(aborted, AssociationState.ABORTED, "test")
    released = log.open_association("SCU", "RTFSYN", None, None)
    log.record_instance(_instance("2.1", released))
    assert log.complete_quiet_series(60.0) == []  # not quiet yet
    _age(log)
    assert log.complete_quiet_series(60.0) == []  # association still open
    log.end_association(released, AssociationState.RELEASED)
    assert log.complete_quiet_series(60.0) == [SERIES]
    assert _series(log).state == SeriesState.COMPLETE
    partial = _series(log, "9.1")
    assert partial.state == SeriesState.PARTIAL and "aborted" in partial.reason
    assert log.released_instances(SERIES) == [Path("/spool/2.1.dcm")]
    assert log.released_instances("9.1") == []


def _complete(log: JobLog) -> None:
    assoc = log.open_association("SCU", "RTFSYN", "127.0.0.1", 5000)
    log.record_instance(_instance("1.1", assoc))
    log.end_association(assoc, AssociationState.RELEASED)
    _age(log)
    log.complete_quiet_series(1.0)


def test_routing_creates_each_job_once(log: JobLog) -> None:
    _complete(log)
    assert log.series_to_route() == [(SERIES, 1)]
    assert log.apply_routing(SERIES, 1, [_plan("T2"), _plan("FLAIR")], SeriesState.ROUTED,
                             None, ["r"]) == 2
    assert log.apply_routing(SERIES, 1, [_plan("T2")], SeriesState.ROUTED, None, ["r"]) == 0
    with log.session() as s:
        jobs = s.scalars(select(db.Job)).all()
    assert sorted(j.target for j in jobs) == ["FLAIR", "T2"]
    assert all(j.state == JobState.QUEUED and j.derived_series_uid for j in jobs)
    assert log.is_derived_series(jobs[0].derived_series_uid)
    assert _series(log).state == SeriesState.ROUTED and _series(log).routes_applied == "r"


def test_new_instances_reopen_a_routed_series_but_duplicates_do_not(log: JobLog) -> None:
    _complete(log)
    log.apply_routing(SERIES, 1, [_plan()], SeriesState.ROUTED, None, ["r"])
    assoc = log.open_association("SCU", "RTFSYN", None, None)
    log.record_instance(_instance("1.1", assoc))  # duplicate
    assert _series(log).state == SeriesState.ROUTED
    log.record_instance(_instance("1.2", assoc))  # new
    assert _series(log).state == SeriesState.RECEIVING and _series(log).generation == 2


def _queued_job(log: JobLog) -> JobQueue:
    _complete(log)
    log.apply_routing(SERIES, 1, [_plan()], SeriesState.ROUTED, None, ["r"])
    return JobQueue(log)


def test_claim_process_and_deliver_with_backoff_then_fail(log: JobLog) -> None:
    queue = _queued_job(log)
    job = queue.claim_next()
    assert job is not None and job.attempts == 1 and queue.claim_next() is None
    queue.processed(job.id, ["0000.dcm"], "prompt", 1.5)
    assert [j.id for j in queue.due_sends()] == [job.id]
    export = ExportConfig(max_attempts=2, backoff_seconds=30, backoff_max_seconds=60)
    refused = DeliveryOutcome(DeliveryStatus.FAILED, n_failed=1, error="association rejected",
                              instances=(("9.9", None, "failure"),))
    first = queue.begin_delivery(job.id, "PACS", "127.0.0.1", 4242)
    assert queue.finish_delivery(first, refused, export) == JobState.WAITING
    assert queue.due_sends() == []  # waiting for the back-off
    assert re.fullmatch(r"waiting for destination PACS: attempt 1 failed \(association "
                        r"rejected\); next attempt at \S+Z \(in 30 s\), retrying until \S+Z",
                        _job_reason(log, job.id))
    second = queue.begin_delivery(job.id, "PACS", "127.0.0.1", 4242)
    assert queue.finish_delivery(second, refused, export) == JobState.FAILED
    with log.session() as s:
        row = s.get(db.Job, job.id)
        attempts = [d.attempt for d in s.scalars(select(db.Delivery))]
        per_instance = s.scalars(select(db.DeliveryInstance)).all()
    assert row.reason == ("delivery failed after 2 attempt(s): association rejected "
                          "(export.max_attempts = 2 reached)")
    assert attempts == [1, 2] and len(per_instance) == 2
    assert queue.failed_jobs() == [job.id]
    assert queue.requeue(job.id) == JobState.SENDING  # admin re-send: it has output
    ok = queue.begin_delivery(job.id, "PACS", "127.0.0.1", 4242)
    assert queue.finish_delivery(ok, DeliveryOutcome(DeliveryStatus.OK, n_sent=1),
                                 export) == JobState.DONE


def test_recovery_requeues_running_jobs_and_aborts_open_associations(log: JobLog) -> None:
    queue = _queued_job(log)
    open_assoc = log.open_association("SCU", "RTFSYN", None, None)
    job = queue.claim_next()
    recovery = queue.recover()
    assert recovery.jobs_requeued == 1 and recovery.associations_aborted == 1
    with log.session() as s:
        assert s.get(db.Association, open_assoc).state == AssociationState.ABORTED
    again = queue.claim_next()
    assert again.id == job.id and again.derived_series_uid == job.derived_series_uid
    for _ in range(MAX_PROCESSING_ATTEMPTS - 2):  # attempt 2 was claimed above
        queue.recover()
        queue.claim_next()
    assert queue.recover().jobs_failed == 1
    assert _job_reason(log, job.id).startswith("processing interrupted 3 times")


def _job_reason(log: JobLog, job_id: int) -> str:
    with log.session() as s:
        return s.get(db.Job, job_id).reason


def test_interrupted_delivery_is_marked_and_resent(log: JobLog) -> None:
    queue = _queued_job(log)
    job = queue.claim_next()
    queue.processed(job.id, ["0000.dcm"], None, 0.1)
    queue.begin_delivery(job.id, "PACS", "h", 1)
    assert queue.recover().deliveries_interrupted == 1
    assert [j.id for j in queue.due_sends()] == [job.id]


def test_rejected_jobs_are_not_resent(log: JobLog) -> None:
    queue = _queued_job(log)
    job = queue.claim_next()
    queue.rejected(job.id, "single slice")
    with pytest.raises(ValueError, match="rejected"):
        queue.requeue(job.id)


def test_a_job_log_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
        conn.execute("PRAGMA user_version = 0")
    with pytest.raises(db.SchemaMismatch, match="old.sqlite' has tables but schema version 0 "
                                                "and no migration record"):
        db.get_engine(path)
    fresh = db.get_engine(tmp_path / "new.sqlite")
    with fresh.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA user_version").scalar() == db.SCHEMA_VERSION


def _fail_once(queue: JobQueue, job_id: int, export: ExportConfig) -> JobState:
    refused = DeliveryOutcome(DeliveryStatus.FAILED, error="association aborted")
    return queue.finish_delivery(queue.begin_delivery(job_id, "PACS", "127.0.0.1", 4242),
                                 refused, export)


def test_retry_window_without_attempt_limit(log: JobLog) -> None:
    """No max_attempts: a job waits and retries with capped backoff until the window ends
    (after its first failed attempt), then fails; resend opens a new window."""
    queue = _queued_job(log)
    job = queue.claim_next()
    queue.processed(job.id, ["0000.dcm"], "prompt", 1.0)
    export = ExportConfig(backoff_seconds=10, backoff_max_seconds=40,
                          retry_window_hours=100 / 3600)  # a 100 s window
    waits = []
    for _attempt in range(4):  # waits 10, 20, 40, 40 (capped)
        assert _fail_once(queue, job.id, export) == JobState.WAITING
        waits += re.findall(r"\(in (\d+) s\)", _job_reason(log, job.id))
    assert waits == ["10", "20", "40", "40"]
    with log.transaction() as s:  # as if 70 s had passed: 30 s of the window are left
        s.get(db.Job, job.id).retry_until = db.utcnow() + dt.timedelta(seconds=30)
    assert _fail_once(queue, job.id, export) == JobState.FAILED
    assert "retry window of 100 s ends before the next attempt" in _job_reason(log, job.id)
    assert queue.requeue(job.id) == JobState.SENDING
    assert _fail_once(queue, job.id, export) == JobState.WAITING  # a fresh window
    assert queue.requeue(job.id) == JobState.SENDING  # waiting -> retried now
    assert [j.id for j in queue.due_sends()] == [job.id]


def test_a_series_whose_only_jobs_are_rejected_is_not_eligible(log: JobLog) -> None:
    _complete(log)
    log.apply_routing(SERIES, 1, [_plan(), _plan(target="FLAIR")], SeriesState.ROUTED, None,
                      ["r"])
    queue = JobQueue(log)
    first, second = queue.claim_next(), queue.claim_next()
    queue.rejected(first.id, "not eligible (blank): every voxel is 0")
    with log.session() as s:
        assert s.scalar(select(db.Series)).state == SeriesState.ROUTED  # one job left
    queue.rejected(second.id, "not eligible (blank): every voxel is 0")
    with log.session() as s:
        series = s.scalar(select(db.Series))
    assert (series.state, series.reason) == (SeriesState.NOT_ELIGIBLE,
                                             "not eligible (blank): every voxel is 0")
