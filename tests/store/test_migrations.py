"""Job-log schema upgrades with Alembic: a SQLite job log written by the node before
migrations existed (``data/joblog-v1.sqlite``, made by the node at commit 4dd9f91: a routed
series with one delivered and one queued job, and a series whose association was left
open) is stamped and upgraded at start-up with its rows; the migrations build exactly the
tables the models describe, on SQLite and on PostgreSQL."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select

from dicom_node.store import db
from dicom_node.store.jobqueue import JobQueue
from dicom_node.store.joblog import JobLog
from dicom_node.store.schema import BASELINE, SCHEMA_VERSION, head_revision

V1_LOG = Path(__file__).with_name("data") / "joblog-v1.sqlite"


@pytest.fixture
def v1_log(tmp_path: Path) -> Path:
    path = tmp_path / "joblog.sqlite"
    shutil.copy(V1_LOG, path)
    return path


def _raw(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_a_job_log_of_the_previous_version_is_upgraded_with_its_rows(v1_log: Path) -> None:
    assert _raw(v1_log, "PRAGMA user_version") == [(1,)]
    assert not _raw(v1_log, "SELECT name FROM sqlite_master WHERE name = 'alembic_version'")
    before = _raw(v1_log, "SELECT id, state, attempts, derived_series_uid FROM jobs ORDER BY id")
    log = JobLog(v1_log)
    assert _raw(v1_log, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert _raw(v1_log, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _raw(v1_log, "SELECT id, state, attempts, derived_series_uid FROM jobs "
                        "ORDER BY id") == before
    assert [s for s, in _raw(v1_log, "SELECT state FROM series ORDER BY id")] == \
        ["routed", "receiving"]
    with log.session() as s:
        jobs = s.scalars(select(db.Job).order_by(db.Job.id)).all()
        assert [(j.state, j.claimed_by, j.lease_expires_at) for j in jobs] == [
            (db.JobState.DONE, None, None), (db.JobState.QUEUED, None, None)]
        assert len(s.scalars(select(db.Delivery)).all()) == 1
    queue = JobQueue(log)
    recovery = queue.recover()  # the association the old node left open
    assert recovery.associations_aborted == 1 and recovery.jobs_requeued == 0
    job = queue.claim_next()
    assert job is not None and job.id == 2 and job.attempts == 1
    queue.processed(job.id, ["attempt-1/0001.dcm"], "prompt", 1.0, attempt=job.attempts)
    assert [j.id for j in queue.due_sends()] == [2]


def test_the_clinical_columns_reach_an_upgraded_log(v1_log: Path) -> None:
    """0003: eligibility's source contrast and warnings, the delivery retry window."""
    JobLog(v1_log)
    assert {"source_contrast", "warnings"} <= {c for _i, c, *_r in _raw(
        v1_log, "PRAGMA table_info(series)")}
    assert "retry_until" in {c for _i, c, *_r in _raw(v1_log, "PRAGMA table_info(jobs)")}
    assert _raw(v1_log, "SELECT source_contrast, warnings FROM series WHERE state = 'routed'") \
        == [(None, None)]


def test_an_upgraded_log_opens_again_unchanged(v1_log: Path) -> None:
    JobLog(v1_log)
    db._ENGINES.clear()  # as a restarted node: a new engine, the same file
    JobLog(v1_log)
    assert _raw(v1_log, "SELECT version_num FROM alembic_version") == [(head_revision(),)]


def test_a_log_from_a_newer_node_is_refused(tmp_path: Path, v1_log: Path) -> None:
    JobLog(v1_log)
    with sqlite3.connect(v1_log) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    db._ENGINES.clear()
    with pytest.raises(db.SchemaMismatch, match="revision '9999', written by a newer node"):
        JobLog(v1_log)


def _schema_differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), db.Base.metadata)
    finally:
        engine.dispose()


def test_migrations_build_the_models_tables_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    JobLog(path)
    assert _schema_differences(f"sqlite:///{path}") == []
    assert _raw(path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert head_revision() != BASELINE  # a new log went through every migration


def test_migrations_build_the_models_tables_on_postgresql(pg_url: str) -> None:
    log = JobLog(pg_url)
    assert log.shared and log.path is None
    assert _schema_differences(pg_url) == []
    assert "nodes" in inspect(log.engine).get_table_names()
