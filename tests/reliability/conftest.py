"""Fixtures of the reliability suite: a test PACS, an in-process node with the tiny model,
and the summary of measured figures printed at the end of the run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers.node import TestStorageSCP
from tests.reliability.figures import summary_lines
from tests.reliability.helpers import NodeFactory, RelNode


@pytest.fixture
def make_node(tmp_path: Path, tiny_synthesizer: Any) -> Iterator[NodeFactory]:
    """Start in-process nodes (tiny CPU model); every one is stopped after the test."""
    started: list[RelNode] = []

    def start(**kwargs: Any) -> RelNode:
        node = RelNode(tmp_path / f"node{len(started)}", synthesizer=tiny_synthesizer, **kwargs)
        started.append(node)
        return node.start()

    yield start
    for node in reversed(started):
        node.stop()


@pytest.fixture(scope="module")
def module_pacs() -> Iterator[TestStorageSCP]:
    """A test storage SCP shared by the tests of one module."""
    scp = TestStorageSCP().start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory, tiny_synthesizer: Any,
                module_pacs: TestStorageSCP) -> Iterator[RelNode]:
    """One node (tiny model, route MR -> T2 -> ``module_pacs``) for a whole module."""
    node = RelNode(tmp_path_factory.mktemp("shared-node"), dest_port=module_pacs.port,
                   synthesizer=tiny_synthesizer,
                   node={"network_timeout_seconds": 5.0}).start()
    yield node
    node.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the reliability tests measured (inputs, faults, counts, figures)."""
    lines = summary_lines()
    if not lines:
        return
    terminalreporter.section("reliability figures")
    for line in lines:
        terminalreporter.write_line(line)
