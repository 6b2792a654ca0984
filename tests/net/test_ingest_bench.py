"""The ingest benchmark's arithmetic: ratios paired within a repeat, and the receivers' order
alternating between repeats (``bench/ingest.py``; the measurements themselves need dcmtk and
minutes, so they are not run here)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import ingest


def _run(kind: str, n_assoc: int, repeat: int, rate: float) -> dict[str, Any]:
    return {"receiver": kind, "associations": n_assoc, "repeat": repeat, "instances_per_s": rate}


def test_paired_ratios_cancel_drift_between_repeats() -> None:
    # the machine gets twice as fast in repeat 1 and twice as slow in repeat 2; the node is
    # 0.6x of dcmtk within every repeat
    runs = [_run("node", 1, 0, 600.0), _run("dcmtk", 1, 0, 1000.0),
            _run("node", 1, 1, 1200.0), _run("dcmtk", 1, 1, 2000.0),
            _run("node", 1, 2, 300.0), _run("dcmtk", 1, 2, 500.0),
            _run("node", 4, 0, 400.0)]  # no dcmtk run to pair with: left out
    ratios = ingest.paired_ratios(runs, "node", "dcmtk")
    assert set(ratios) == {"1"}
    assert ratios["1"]["median"] == pytest.approx(0.6)
    assert ratios["1"]["min"] == pytest.approx(0.6) and ratios["1"]["max"] == pytest.approx(0.6)
    assert ratios["1"]["n"] == 3
    # pairs are taken within a repeat, never across repeats
    shuffled = [_run("node", 1, 0, 600.0), _run("dcmtk", 1, 0, 2000.0),
                _run("node", 1, 1, 1200.0), _run("dcmtk", 1, 1, 500.0)]
    assert ingest.paired_ratios(shuffled, "node", "dcmtk")["1"]["median"] == pytest.approx(
        (0.3 + 2.4) / 2)


def test_the_receivers_order_reverses_every_other_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[tuple[int, str]] = []

    def fake(kind: str, files: Any, n_assoc: int, workdir: Path) -> dict[str, Any]:
        order.append((n_assoc, kind))
        return _run(kind, n_assoc, 0, 100.0)

    monkeypatch.setattr(ingest, "measure_once", fake)
    monkeypatch.setattr(ingest.time, "sleep", lambda s: None)
    runs = ingest.run_ingest([], receivers=("node", "dcmtk", "orthanc"), associations=(1,),
                             repeats=3)
    assert [k for _, k in order] == ["node", "dcmtk", "orthanc", "orthanc", "dcmtk", "node",
                                     "node", "dcmtk", "orthanc"]
    assert [r["repeat"] for r in runs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
