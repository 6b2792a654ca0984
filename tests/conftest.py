"""Shared test fixtures: a tiny seeded RTFSyn checkpoint and a CPU Synthesizer, a test
storage SCP and a small MR series (helpers live in the :mod:`tests.helpers` package).

Heavy imports stay inside the fixtures so test collection is cheap for the
DICOM-only tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import torch

from tests.helpers.node import TestStorageSCP

if TYPE_CHECKING:  # pragma: no cover
    from synthesis.inference import Synthesizer

# The CI machines have two cores shared by every test; keep torch polite.
torch.set_num_threads(2)

TINY_SEED = 1234


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a saved ``RTFSynConfig.tiny()`` checkpoint with seeded random weights."""
    from synthesis import checkpoint
    from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig

    torch.manual_seed(TINY_SEED)
    model = RTFSyn(RTFSynConfig.tiny())
    with torch.no_grad():  # a livelier random output, so that comparisons see structure
        model.head.out.weight.mul_(3.0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    checkpoint.save(model, path, extra={"purpose": "tests", "seed": TINY_SEED})
    return path


@pytest.fixture(scope="session")
def tiny_synthesizer(tiny_checkpoint: Path) -> "Synthesizer":
    """A CPU :class:`~synthesis.inference.Synthesizer` built from :func:`tiny_checkpoint`."""
    from synthesis.inference import Synthesizer

    return Synthesizer(tiny_checkpoint, device="cpu")


@pytest.fixture
def pacs() -> Iterator[TestStorageSCP]:
    """A running test storage SCP (AE ``TESTPACS``), stopped after the test."""
    scp = TestStorageSCP().start()
    yield scp
    scp.stop()


@pytest.fixture
def mr_series(tmp_path: Path) -> list[Path]:
    """A small classic MR series (5 slices of 12x10) from the shared test factory."""
    from tests.helpers.dicom_factory import make_series

    return make_series(tmp_path / "src")
