"""Fixtures of the synthesis tests: a simulated-subject cache shared by the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One subject cache for every evaluation test (a randomized subject takes tens of seconds)."""
    return tmp_path_factory.mktemp("eval-cache")
