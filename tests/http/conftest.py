"""Fixtures of the operations-service tests: a node (tiny CPU model) with its HTTP status
service on a free port, a test PACS, and a local webhook receiver."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).parent
for folder in (HERE, HERE.parent / "node", HERE.parent / "reliability", HERE.parent / "e2e"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from http_helpers import HttpNode, WebhookReceiver  # noqa: E402
from node_helpers import TestStorageSCP  # noqa: E402


@pytest.fixture
def pacs() -> Iterator[TestStorageSCP]:
    """A running test storage SCP (AE ``TESTPACS``), stopped after the test."""
    scp = TestStorageSCP().start()
    yield scp
    scp.stop()


@pytest.fixture
def make_http_node(tmp_path: Path, tiny_synthesizer: Any) -> Iterator[Any]:
    """Start in-process nodes with their services; every one is stopped after the test."""
    started: list[HttpNode] = []

    def start(**kwargs: Any) -> HttpNode:
        kwargs.setdefault("synthesizer", tiny_synthesizer)
        node = HttpNode(tmp_path / f"node{len(started)}", **kwargs)
        started.append(node)
        return node.start()

    yield start
    for node in reversed(started):
        node.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A local HTTP receiver of webhook POSTs on a free port, stopped after the test."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()
