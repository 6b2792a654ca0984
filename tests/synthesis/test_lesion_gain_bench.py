"""bench/lesion_gain.py: a calibrated copy of a checkpoint, its record, and what it refuses."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.lesion_gain import calibrate, main
from synthesis import checkpoint
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig


def _detector_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    return checkpoint.save(RTFSyn(RTFSynConfig.tiny(lesion_net=True)), path, extra={"training": {"steps": 5}})


def test_the_copy_holds_the_same_weights_the_gain_and_where_it_came_from(tmp_path: Path) -> None:
    source = _detector_checkpoint(tmp_path / "m.pt")
    out = calibrate(source, 1.4, tmp_path / "g.pt", note="unit test")
    model, meta = checkpoint.load(out)
    original, src = checkpoint.load(source)
    assert model.config.lesion_gain == 1.4 and original.config.lesion_gain == 1.0
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0)
    assert meta["extra"]["training"] == {"steps": 5}
    assert meta["extra"]["lesion_calibration"] == {"gain": 1.4, "source_sha256": src["sha256"],
                                                   "source_model_version": src["model_version"], "note": "unit test"}
    assert meta["model_version"] != src["model_version"]


def test_a_model_without_a_detector_or_a_bad_gain_is_refused_by_name(tmp_path: Path, capsys) -> None:
    plain = checkpoint.save(RTFSyn(RTFSynConfig.tiny()), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="no lesion detector"):
        calibrate(plain, 1.4, tmp_path / "x.pt")
    source = _detector_checkpoint(tmp_path / "m.pt")
    assert main([str(source), "0", "--out", str(tmp_path / "y.pt")]) == 2
    assert "lesion_gain must be a number in (0, 10]" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pt"), "1.2", "--out", str(tmp_path / "z.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("x.pt", "y.pt", "z.pt"))
