"""A job log that several node processes share (PostgreSQL): claims, leases, fencing,
delivery claims, receivers' associations and concurrent recording. Each node process is a
:class:`JobLog` with its own node id on the same database."""
from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dicom_node.store import db
from dicom_node.store.db import AssociationState, JobState, SeriesState
from dicom_node.store.jobqueue import JobQueue, LostClaim
from dicom_node.store.joblog import InstanceRecord, JobLog, PlannedJob
from dicom_node.store.nodes import node_stopped, register_node

STUDY = "1.2.3"
LEASE = 5.0


def _instance(sop: str, assoc: int | None, series: str) -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                          transfer_syntax_uid="1.2.840.10008.1.2.1", series_uid=series,
                          study_uid=STUDY, path=Path(f"/spool/{sop}.dcm"), size_bytes=10,
                          association_id=assoc, eligible=True, modality="MR")


def _node(url: str, name: str, roles: tuple[str, ...] = ("receive", "process")) -> JobLog:
    log = JobLog(url, node_id=name)
    register_node(log, roles)
    return log


def _queued_jobs(log: JobLog, n: int) -> None:
    """``n`` routed series with one queued job each."""
    for i in range(n):
        series = f"1.2.3.{i + 1}"
        assoc = log.open_association("SCU", "RTFSYN", None, None)
        log.record_instance(_instance(f"{series}.1", assoc, series))
        log.end_association(assoc, AssociationState.RELEASED)
    _age(log)
    assert len(log.complete_quiet_series(1.0)) == n
    plan = PlannedJob("r", "T2", "PACS", "PACS", "127.0.0.1", 4242, "mr", 1000)
    for i in range(n):
        assert log.apply_routing(f"1.2.3.{i + 1}", 1, [plan], SeriesState.ROUTED, None,
                                 ["r"]) == 1


def _age(log: JobLog, seconds: float = 60.0) -> None:
    with log.transaction() as s:
        s.execute(update(db.Series).values(
            last_received_at=db.Series.last_received_at - dt.timedelta(seconds=seconds)))


def _expire(log: JobLog, job_id: int) -> None:
    """Pretend the claim's holder stopped beating: its lease ran out a second ago."""
    with log.transaction() as s:
        s.execute(update(db.Job).where(db.Job.id == job_id).values(
            lease_expires_at=db.utcnow() - dt.timedelta(seconds=1)))


def test_concurrent_workers_claim_every_job_exactly_once(pg_url: str) -> None:
    a, b = _node(pg_url, "worker-a"), _node(pg_url, "worker-b")
    _queued_jobs(a, 12)
    claimed: dict[str, list[int]] = {"worker-a": [], "worker-b": []}
    start = threading.Barrier(2)

    def work(log: JobLog) -> None:
        queue = JobQueue(log, LEASE)
        start.wait()
        while (job := queue.claim_next()) is not None:
            claimed[log.node_id].append(job.id)
            queue.processed(job.id, [], None, 0.0, attempt=job.attempts)

    threads = [threading.Thread(target=work, args=(log,)) for log in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = claimed["worker-a"] + claimed["worker-b"]
    assert sorted(every) == list(range(1, 13)), claimed  # each job once, none lost
    with a.session() as s:
        rows = s.scalars(select(db.Job)).all()
    assert {j.state for j in rows} == {JobState.SENDING} and {j.attempts for j in rows} == {1}
    assert {j.processed_by for j in rows} <= {"worker-a", "worker-b"}


def test_an_expired_lease_hands_the_job_to_another_worker(pg_url: str) -> None:
    a, b = _node(pg_url, "worker-a"), _node(pg_url, "worker-b")
    _queued_jobs(a, 1)
    qa, qb = JobQueue(a, LEASE), JobQueue(b, LEASE)
    job = qa.claim_next()
    assert qb.claim_next() is None  # held by worker-a
    assert qb.recover().jobs_requeued == 0  # its lease is live
    assert qa.heartbeat() == 1
    _expire(a, job.id)
    assert qb.recover().jobs_requeued == 1
    with b.session() as s:
        assert s.get(db.Job, job.id).reason == ("requeued: its lease expired while "
                                                "synthesizing (worker-a)")
    again = qb.claim_next()
    assert again.id == job.id and again.attempts == 2
    assert again.derived_series_uid == job.derived_series_uid
    with pytest.raises(LostClaim, match="no longer claimed by worker-a"):
        qa.processed(job.id, ["attempt-1/x.dcm"], None, 1.0, attempt=job.attempts)
    assert qa.heartbeat() == 0  # nothing of worker-a's to extend any more
    qb.processed(again.id, ["attempt-2/x.dcm"], None, 1.0, attempt=again.attempts)
    with b.session() as s:
        row = s.get(db.Job, job.id)
    assert (row.state, row.processed_by, row.derived_files) == (
        JobState.SENDING, "worker-b", '["attempt-2/x.dcm"]')


def test_one_sender_at_a_time_and_an_interrupted_delivery_is_resent(pg_url: str) -> None:
    a, b = _node(pg_url, "worker-a"), _node(pg_url, "worker-b")
    _queued_jobs(a, 1)
    qa, qb = JobQueue(a, LEASE), JobQueue(b, LEASE)
    job = qa.claim_next()
    qa.processed(job.id, ["attempt-1/x.dcm"], None, 1.0, attempt=job.attempts)
    assert [j.id for j in qb.due_sends()] == [job.id]
    first = qa.begin_delivery(job.id, "PACS", "h", 1, if_due=True)
    assert first is not None
    assert qb.begin_delivery(job.id, "PACS", "h", 1, if_due=True) is None
    assert qb.due_sends() == []
    _expire(a, job.id)  # worker-a died while sending
    recovery = qb.recover()
    assert (recovery.deliveries_interrupted, recovery.jobs_resending) == (1, 1)
    second = qb.begin_delivery(job.id, "PACS", "h", 1, if_due=True)
    assert second is not None and second != first
    with b.session() as s:
        delivery = s.get(db.Delivery, first)
        assert (delivery.status, delivery.sender) == (db.DeliveryStatus.FAILED, "worker-a")
        assert delivery.error == "interrupted: its lease expired during the delivery (worker-a)"


def test_taking_over_an_expired_delivery_ends_the_dead_senders_delivery(pg_url: str) -> None:
    """The surviving sender may claim the job before any recovery ran: the dead sender's
    ``running`` delivery is ended as interrupted in the same transaction."""
    a, b = _node(pg_url, "worker-a"), _node(pg_url, "worker-b")
    _queued_jobs(a, 1)
    qa, qb = JobQueue(a, LEASE), JobQueue(b, LEASE)
    job = qa.claim_next()
    qa.processed(job.id, ["attempt-1/x.dcm"], None, 1.0, attempt=job.attempts)
    first = qa.begin_delivery(job.id, "PACS", "h", 1, if_due=True)
    _expire(a, job.id)  # worker-a died while sending; no recovery has run yet
    second = qb.begin_delivery(job.id, "PACS", "h", 1, if_due=True)
    assert second is not None and second != first
    with b.session() as s:
        rows = {d.id: (d.status, d.sender, d.error)
                for d in s.scalars(select(db.Delivery).where(db.Delivery.job_id == job.id))}
    assert rows == {
        first: (db.DeliveryStatus.FAILED, "worker-a",
                "interrupted: its lease expired during the delivery (worker-a)"),
        second: (db.DeliveryStatus.RUNNING, "worker-b", None)}
    assert qb.recover().deliveries_interrupted == 0  # nothing left for recovery


def test_open_associations_of_a_stopped_receiver_are_aborted(pg_url: str) -> None:
    a, b = _node(pg_url, "receiver-a"), _node(pg_url, "receiver-b")
    open_a = a.open_association("SCU", "RTFSYN", None, None)
    open_b = b.open_association("SCU", "RTFSYN", None, None)
    assert JobQueue(b, LEASE).recover().associations_aborted == 0  # both are live
    node_stopped(a)
    assert JobQueue(b, LEASE).recover().associations_aborted == 1
    with b.session() as s:
        assert s.get(db.Association, open_a).state == AssociationState.ABORTED
        assert s.get(db.Association, open_b).state == AssociationState.OPEN


def test_two_receivers_recording_one_series_count_every_instance(pg_url: str) -> None:
    a, b = _node(pg_url, "receiver-a"), _node(pg_url, "receiver-b")
    per_receiver = 40
    start = threading.Barrier(2)

    def receive(log: JobLog, prefix: str) -> None:
        assoc = log.open_association("SCU", "RTFSYN", None, None)
        start.wait()
        for i in range(per_receiver):  # the first of each creates the series row, or not
            log.record_instance(_instance(f"9.{prefix}.{i}", assoc, "1.2.3.9"))
        log.end_association(assoc, AssociationState.RELEASED)

    threads = [threading.Thread(target=receive, args=(log, p)) for log, p in ((a, 1), (b, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with a.session() as s:
        series = s.scalars(select(db.Series)).one()
        assocs = s.scalars(select(db.Association)).all()
    assert series.n_instances == 2 * per_receiver
    assert sorted(x.n_instances for x in assocs) == [per_receiver, per_receiver]
    assert {x.receiver for x in assocs} == {"receiver-a", "receiver-b"}


def test_completion_waits_for_the_open_association_of_any_receiver(pg_url: str) -> None:
    a, b = _node(pg_url, "receiver-a"), _node(pg_url, "receiver-b")
    done = a.open_association("SCU", "RTFSYN", None, None)
    a.record_instance(_instance("7.1", done, "1.2.3.7"))
    a.end_association(done, AssociationState.RELEASED)
    still_open = b.open_association("SCU", "RTFSYN", None, None)
    b.record_instance(_instance("7.2", still_open, "1.2.3.7"))
    _age(a)
    assert a.complete_quiet_series(1.0) == []  # receiver-b's association is open
    b.end_association(still_open, AssociationState.RELEASED)
    assert a.complete_quiet_series(1.0) == ["1.2.3.7"]


def test_a_clean_stop_releases_claims_to_the_other_workers(pg_url: str) -> None:
    a, b = _node(pg_url, "worker-a"), _node(pg_url, "worker-b")
    _queued_jobs(a, 1)
    qa, qb = JobQueue(a, LEASE), JobQueue(b, LEASE)
    job = qa.claim_next()
    assert qa.release_claims() == 1
    assert qb.recover().jobs_requeued == 1  # at once, not after the lease
    assert qb.claim_next().attempts == 2
    with pytest.raises(LostClaim):
        qa.failed(job.id, "too late", attempt=job.attempts)
