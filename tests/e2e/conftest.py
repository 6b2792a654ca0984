"""Fixtures of the end-to-end tests: real peers (Orthanc, dcmtk) and the node as a process.

Each factory fixture starts servers on loopback ports chosen by the test and
stops every one of them by PID at teardown. A test that needs a peer that is
not installed is skipped with the reason (CI installs orthanc, dcmtk and
dicom3tools).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from tests.helpers.harness import (ORTHANC_BIN, STORESCP_BIN, DcmtkStoreSCP, NodeProcess,
                                   OrthancServer, autorouting_orthanc, free_port, require,
                                   write_node_config)

# Calling AEs the test node accepts: Orthanc, dcmtk's defaults, the workstation.
ALLOWED_CALLERS = ("ORTHANC", "ECHOSCU", "STORESCU", "WORKSTATION", "E2E_ECHO")


NodeFactory = Callable[..., NodeProcess]


@pytest.fixture(scope="module")
def node_factory(tmp_path_factory: pytest.TempPathFactory,
                 tiny_checkpoint: Path) -> Iterator[NodeFactory]:
    """Start ``rtfsyn serve`` subprocesses with the tiny checkpoint; SIGTERM them at teardown.

    Call as ``node_factory(port=..., destinations={"PACS": (ae, port)},
    targets=["T2"], destination="PACS")`` (``export={...}``: the delivery policy);
    returns a started, C-ECHO-answering :class:`NodeProcess`.
    """
    started: list[NodeProcess] = []

    def start(*, port: int, destinations: dict[str, tuple[str, int]], targets: Sequence[str],
              destination: str, stable_seconds: float = 1.0,
              export: dict[str, float] | None = None) -> NodeProcess:
        workdir = tmp_path_factory.mktemp("node")
        config = write_node_config(workdir / "node.toml", port=port, data_dir=workdir / "var",
                                   checkpoint=tiny_checkpoint, destinations=destinations,
                                   targets=targets, destination=destination,
                                   stable_seconds=stable_seconds,
                                   allowed_calling_aets=ALLOWED_CALLERS, export=export)
        node = NodeProcess(config, port)
        started.append(node)
        node.start()
        return node

    yield start
    for node in reversed(started):
        code = node.stop()
        if code not in (None, 0):
            pytest.fail(f"rtfsyn serve must exit 0 on SIGTERM. Found {code}; "
                        f"log tail:\n{node.process.log_tail() if node.process else ''}")


@pytest.fixture(scope="module")
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Callable[..., OrthancServer]]:
    """Start Orthanc instances: ``orthanc_factory(node_ae=..., node_port=...)``.

    Each has its own storage, test-chosen DICOM and HTTP ports, StableAge 2 s
    and the deployed auto-routing Lua rule pointed at the node.
    """
    require(ORTHANC_BIN)
    started: list[OrthancServer] = []

    def start(*, node_ae: str, node_port: int, stable_age_s: int = 2) -> OrthancServer:
        server = autorouting_orthanc(tmp_path_factory.mktemp("orthanc"), node_ae=node_ae,
                                     node_port=node_port, stable_age_s=stable_age_s)
        started.append(server)
        server.start()
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmtkStoreSCP]:
    """A running dcmtk ``storescp`` (AE ``STORESCP``) on a free port; stopped at teardown."""
    require(STORESCP_BIN)
    server = DcmtkStoreSCP(tmp_path_factory.mktemp("storescp"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node_port() -> int:
    """The node's DICOM port for this module (free when picked)."""
    return free_port()
