"""Fixtures for the node's service tests (helpers live in ``node_helpers``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from node_helpers import TestStorageSCP  # noqa: E402


@pytest.fixture
def pacs() -> Iterator[TestStorageSCP]:
    """A running test storage SCP (AE ``TESTPACS``), stopped after the test."""
    scp = TestStorageSCP().start()
    yield scp
    scp.stop()


@pytest.fixture
def mr_series(tmp_path: Path) -> list[Path]:
    """A small classic MR series (5 slices of 12x10) from the shared test factory."""
    from dicom_factory import make_series

    return make_series(tmp_path / "src")
