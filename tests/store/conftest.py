"""Fixtures of the job-log tests: a PostgreSQL server of the test session's own (skipped
with the reason when Debian's server binaries are missing) and a fresh database per test."""
from __future__ import annotations

import itertools
from typing import Iterator

import pytest

from tests.helpers.postgres import MISSING_REASON, PostgresCluster, free_port, postgres_bin_dir

_DATABASES = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server on a free loopback port, stopped and deleted at the end."""
    if postgres_bin_dir() is None:
        pytest.skip(MISSING_REASON)
    cluster = PostgresCluster(free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """The URL of a new, empty database on :func:`pg_cluster`."""
    return pg_cluster.create_database(f"test_{next(_DATABASES)}")
