"""bench/lesion_detector.py: the scores it gives a lesion map."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.lesion_detector import _ap_auc, eval_subject
from synthesis.physics import TISSUES


def test_ap_and_auc_of_a_perfect_a_reversed_and_a_tied_score() -> None:
    label = np.array([0, 0, 1, 0, 1, 0], bool)
    assert _ap_auc(label.astype(float), label) == (1.0, 1.0)
    ap, auc = _ap_auc(1.0 - label, label)
    assert auc == 0.0 and ap == pytest.approx(2 / 6)  # two tied levels: the positives come last, together
    # a map that is one value everywhere knows nothing, whatever the voxels' order
    assert _ap_auc(np.zeros(6), label) == (pytest.approx(2 / 6), 0.5)
    assert _ap_auc(np.zeros(6), label[::-1].copy()) == (pytest.approx(2 / 6), 0.5)
    rng = np.random.default_rng(0)
    label = rng.random(20000) < 0.05
    ap, auc = _ap_auc(rng.random(20000), label)  # a score that knows nothing
    assert abs(auc - 0.5) < 0.03 and abs(ap - label.mean()) < 0.02


def _subject(lesion: bool) -> SimpleNamespace:
    fractions = np.zeros((len(TISSUES), 10, 10, 10), np.float32)
    fractions[TISSUES.index("wm"), :, :, :5] = 1.0
    fractions[TISSUES.index("gm"), :, :, 5:] = 1.0
    if lesion:
        fractions[:, 2:4, 2:4, 1:3] = 0.0
        fractions[TISSUES.index("lesion"), 2:4, 2:4, 1:3] = 1.0
    return SimpleNamespace(fractions=fractions, brain_mask=np.ones((10, 10, 10), bool))


def test_eval_subject_scores_a_map_that_finds_the_lesion_and_one_that_marks_grey_matter() -> None:
    subject = _subject(lesion=True)
    lesion = subject.fractions[TISSUES.index("lesion")] > 0.5
    found = eval_subject(lesion.astype(np.float32), subject)
    assert found["dice"] == 1.0 and found["ap"] == 1.0 and found["p_lesion"] == 1.0
    assert found["false_share"] == 0.0 and found["p_gm"] == 0.0 and found["lesion_voxels"] == 8
    assert found["pure_lesion_voxels"] == 8 and found["pure_found"] == 1.0 and found["pure_missed"] == 0.0
    half = lesion.astype(np.float32)
    half[2, 2:4, 1:3] = 0.05                             # 4 of the 8 lesion voxels missed
    half[3, 2, 1] = 0.5                                  # 1 neither found nor missed
    scored = eval_subject(half, subject)
    assert scored["pure_missed"] == 0.5 and scored["pure_found"] == 3 / 8
    assert scored["p_pure_lesion"] == pytest.approx((4 * 0.05 + 0.5 + 3) / 8)
    grey = eval_subject((subject.fractions[TISSUES.index("gm")] > 0.5).astype(np.float32), subject)
    assert grey["dice"] == 0.0 and grey["p_lesion"] == 0.0 and grey["p_gm"] == 1.0
    assert grey["false_share"] == pytest.approx(500 / 992)
    none = eval_subject(np.zeros((10, 10, 10), np.float32), _subject(lesion=False))
    assert "ap" not in none and "pure_missed" not in none and none["false_share"] == 0.0
