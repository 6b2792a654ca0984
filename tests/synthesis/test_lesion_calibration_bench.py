"""bench/lesion_calibration.py: the probability-to-fraction table, the calibrated copy, what it refuses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import bench.lesion_calibration as calib
from bench.lesion_gain import calibrated_copy
from synthesis import checkpoint
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig


def _detector_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    return checkpoint.save(RTFSyn(RTFSynConfig.tiny(lesion_net=True)), path, extra={"training": {"steps": 5}})


def test_the_table_recovers_the_fraction_a_probability_stands_for() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 1.0, 200_000)
    fraction = np.clip(p ** 3 + rng.normal(0.0, 0.05, p.size), 0.0, 1.0)  # over-confident p: f = p^3
    knots_p, knots_f, bins = calib.fit_table(p, fraction)
    assert knots_p[0] == 0.0 and knots_p[-1] == 1.0 and all(b > a for a, b in zip(knots_p, knots_p[1:]))
    assert all(b >= a for a, b in zip(knots_f, knots_f[1:])) and knots_f[0] == 0.0
    probe = np.array([0.3, 0.6, 0.9])
    np.testing.assert_allclose(np.interp(probe, knots_p, knots_f), probe ** 3, atol=0.02)
    assert sum(bins["voxels"]) == p.size


def test_the_table_is_monotone_where_the_bins_are_not_and_needs_lesions() -> None:
    p = np.array([0.1] * 10 + [0.5] * 10 + [0.9] * 10)
    fraction = np.array([0.2] * 10 + [0.1] * 10 + [0.9] * 10)      # 0.5 below 0.1: pooled
    knots_p, knots_f, _ = calib.fit_table(p, fraction)
    np.testing.assert_allclose(knots_f[1:3], [0.15, 0.15])
    with pytest.raises(ValueError, match="no voxel is more than half lesion"):
        calib.fit_table(p, np.zeros_like(p))
    with pytest.raises(ValueError, match="non-empty"):
        calib.fit_table(np.array([]), np.array([]))


def test_the_copy_holds_the_weights_the_table_the_level_and_the_fit(tmp_path: Path, monkeypatch) -> None:
    source = _detector_checkpoint(tmp_path / "m.pt")
    p = np.concatenate([np.full(100, 0.05), np.full(100, 0.97)])
    fraction = np.concatenate([np.zeros(100), np.full(100, 0.6)])
    seen = {}

    def fake_samples(checkpoint_path, seeds, sets, crop):
        seen.update(checkpoint=checkpoint_path, seeds=list(seeds), sets=sets, crop=crop)
        return p, fraction, ["lesions_30/0"]

    monkeypatch.setattr(calib, "samples", fake_samples)
    out = tmp_path / "c.pt"
    assert calib.main([str(source), "--out", str(out), "--subjects", "2", "--level", "output", "--note", "t"]) == 0
    model, meta = checkpoint.load(out)
    original, src = checkpoint.load(source)
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0)
    assert model.config.lesion_level == "output"
    assert model.config.lesion_fraction_p == (0.0, 0.05, 0.97, 1.0)
    assert model.config.lesion_fraction_f == (0.0, 0.0, 0.6, 0.6)
    record = meta["extra"]["lesion_calibration"]
    assert record["subjects"] == seen["seeds"] and len(seen["seeds"]) == 2 and seen["crop"] == [80, 96, 80]
    assert record["source_sha256"] == src["sha256"] and record["note"] == "t" and record["level"] == "output"
    assert record["command"].startswith("python bench/lesion_calibration.py ") and "--level output" in record["command"]
    assert meta["model_version"] != src["model_version"] and meta["extra"]["training"] == {"steps": 5}


def test_what_is_not_a_calibration_or_has_no_detector_is_refused_by_name(tmp_path: Path, capsys) -> None:
    source = _detector_checkpoint(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="not calibration fields: channels"):
        calibrated_copy(source, {"channels": [8, 16]}, tmp_path / "x.pt", {})
    plain = checkpoint.save(RTFSyn(RTFSynConfig.tiny()), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="no lesion detector"):
        calibrated_copy(plain, {"lesion_level": "output"}, tmp_path / "y.pt", {})
    assert calib.main([str(source), "--out", str(tmp_path / "z.pt"), "--subjects", "0"]) == 2
    assert "--subjects must be >= 1" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("x.pt", "y.pt", "z.pt"))


def test_no_table_sets_only_the_level_and_fits_nothing(tmp_path: Path, monkeypatch) -> None:
    source = _detector_checkpoint(tmp_path / "m.pt")
    monkeypatch.setattr(calib, "samples", lambda *a: pytest.fail("--no-table must not sample"))
    out = tmp_path / "level.pt"
    assert calib.main([str(source), "--out", str(out), "--level", "output", "--no-table"]) == 0
    model, meta = checkpoint.load(out)
    assert model.config.lesion_level == "output" and model.config.lesion_fraction_p == ()
    assert meta["extra"]["lesion_calibration"]["method"] == "none (level only)"
