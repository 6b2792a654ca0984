"""bench/second_source.py: what a T2w tells about lesions voxel by voxel, and what a model makes of it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.second_source import model_on, separability, sources
from synthesis.nets.rtfsyn import RTFSyn, RTFSynConfig
from synthesis.physics import TISSUES
from synthesis.protocol import MRProtocol, preset
from synthesis.stream import Crop

P = 16


def _crop(seed: int, lesion_t2w: float) -> Crop:
    """White matter with a random 3^3 lesion and a CSF slab; the T1 shows the lesion like
    grey matter, the T2w at ``lesion_t2w`` (white matter 0.4, CSF 1.5), a little noise."""
    rng = np.random.default_rng(seed)
    fractions = np.zeros((len(TISSUES), P, P, P), np.float32)
    fractions[TISSUES.index("wm")] = 1.0
    fractions[:, :, :, :3] = 0.0
    fractions[TISSUES.index("csf"), :, :, :3] = 1.0
    z, y, x = rng.integers(4, P - 4, size=3)
    fractions[:, z:z + 3, y:y + 3, x:x + 3] = 0.0
    fractions[TISSUES.index("lesion"), z:z + 3, y:y + 3, x:x + 3] = 1.0

    def image(signal: dict[str, float]) -> np.ndarray:
        values = np.array([signal.get(t, 0.0) for t in TISSUES], np.float32)
        return (np.tensordot(values, fractions, axes=1) + rng.normal(0, 0.02, (P, P, P))).astype(np.float32)

    target = image({"wm": 0.6, "lesion": 1.0})
    return Crop(source=image({"csf": 0.3, "wm": 0.8, "lesion": 0.65}), target=target, target_cell=target, cell=1.0, fractions=fractions.astype(np.float16), mask=np.ones((P, P, P), np.float32),
                source_protocol=preset("T1", 3.0), target_protocol=preset("FLAIR", 3.0),
                brain_range=1.0, second=image({"csf": 1.5, "wm": 0.4, "lesion": lesion_t2w}),
                second_protocol=MRProtocol(contrast="T2w"))


def test_lesions_that_the_t2w_shows_are_told_apart_and_lesions_it_hides_are_not() -> None:
    shown = [[_crop(10 * s + k, lesion_t2w=1.0) for k in range(2)] for s in range(3)]
    result = separability(shown)
    assert result["T2w alone"]["roc_auc"] > 0.99 and result["T1 and T2w"]["average_precision"] > 0.9
    assert result["lesion_share_test"] == pytest.approx(27 / P**3, rel=1e-3)
    hidden = [[dataclasses.replace(c, second=c.second * 0 + np.float32(0.4)) for c in crops] for crops in shown]
    # a T2w with no lesion in it: only the T1 (lesion between CSF and WM) is left
    assert separability(hidden)["T2w alone"]["roc_auc"] == pytest.approx(0.5, abs=0.05)


def test_tissue_means_of_both_sources() -> None:
    rows = sources([[_crop(1, lesion_t2w=1.0)], [_crop(2, lesion_t2w=0.7)]])
    assert rows[0]["T2w"]["lesion"] == pytest.approx(1.0, abs=0.01)
    assert rows[1]["T2w"]["lesion"] == pytest.approx(0.7, abs=0.01)
    assert rows[0]["T1"]["csf"] == pytest.approx(0.3, abs=0.01) and rows[0]["T2w"]["gm"] is None


def test_a_two_source_model_is_scored_alone_and_with_the_t2w() -> None:
    torch.manual_seed(0)
    model = RTFSyn(RTFSynConfig.tiny(second_source=True, second_late="mlp")).eval()
    with torch.no_grad():
        model.late_second.out.bias.fill_(0.5)  # the T2w changes every voxel's features
    result = model_on(model, [_crop(3, lesion_t2w=1.0)])
    assert result["truth lesion/WM"] == pytest.approx(1.0 / 0.6, rel=0.05)
    assert all(np.isfinite(v) for v in result.values())
    assert abs(result["with T2w: lesion basis in lesions"] - result["alone: lesion basis in lesions"]) > 1e-3
    assert "alone: lesion basis in GM" not in result  # the crop has no grey matter
    assert result["alone: lesion/WM"] != pytest.approx(result["with T2w: lesion/WM"], abs=1e-4)
