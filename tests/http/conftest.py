"""Fixtures of the operations-service tests: a node (tiny CPU model) with its HTTP status
service on a free port, and a local webhook receiver (the test PACS is ``pacs`` from
``tests/conftest.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.http.helpers import HttpNode, WebhookReceiver


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
