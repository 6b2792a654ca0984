"""bench/rim.py: the count of brain voxels a synthesized image renders below the truth's dark end."""
from __future__ import annotations

import numpy as np
import pytest

from bench.rim import rim_metrics
from synthesis.physics import TISSUES

N = 24


def _brain() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """A 24^3 brain of white matter holding an 8^3 block of CSF; PDw-like truth (CSF 0.84, WM 0.88)."""
    csf = np.zeros((N, N, N), np.float32)
    csf[8:16, 8:16, 8:16] = 1.0
    tissues = {"csf": csf, "gm": np.zeros_like(csf), "wm": 1.0 - csf}
    truth = 0.84 * csf + 0.88 * tissues["wm"]
    return truth, tissues, np.ones((N, N, N), bool)


def _fractions(tissues: dict[str, np.ndarray]) -> np.ndarray:
    out = np.zeros((len(TISSUES), N, N, N), np.float32)
    for name in ("csf", "wm"):
        out[TISSUES.index(name)] = tissues[name]
    return out


def test_a_faithful_output_has_no_dark_voxels() -> None:
    truth, tissues, mask = _brain()
    row = rim_metrics(truth.copy(), truth, mask, tissues, _fractions(tissues), margin=0.02)
    assert row["dark_voxels"] == 0 and row["dark_csf_fraction"] is None
    assert row["bases_sum"]["csf"] == [1.0, 1.0, 1.0] and row["bases_sum"]["dark"] is None


def test_a_rim_in_the_first_layer_of_csf_is_counted_and_placed() -> None:
    truth, tissues, mask = _brain()
    inner = np.zeros_like(mask)
    inner[9:15, 9:15, 9:15] = True
    rim = (tissues["csf"] > 0.5) & ~inner                 # the CSF block's outer layer: 8^3 - 6^3 voxels
    bases = _fractions(tissues)
    bases[TISSUES.index("csf")][rim] = 0.6                 # 40 % of the CSF there goes to bone (PD about 0)
    bases[TISSUES.index("bone")][rim] = 0.4
    pred = truth.copy()
    pred[rim] = 0.6 * 0.84
    row = rim_metrics(pred, truth, mask, tissues, bases, margin=0.02)
    assert row["dark_voxels"] == 8**3 - 6**3
    assert row["dark_share"] == pytest.approx((8**3 - 6**3) / N**3, abs=1e-5)
    assert row["dark_csf_fraction"] == 1.0 and row["dark_depth_in_csf_mm"] == 1.0   # the first millimetre
    assert row["bases_sum"]["dark"] == [1.0, 1.0, 1.0]     # the sum closes; the tissue is wrong
    assert row["dark_bases"]["bone"] == pytest.approx(0.4) and row["dark_bases"]["csf"] == pytest.approx(0.6)
    assert row["output_p0.5"] < row["truth_p0.5"]


def test_csf_a_little_darker_than_the_truth_but_within_the_margin_is_not_counted() -> None:
    truth, tissues, mask = _brain()
    pred = truth - 0.01 * tissues["csf"]
    assert rim_metrics(pred, truth, mask, tissues, None, margin=0.02)["dark_voxels"] == 0
    assert "bases_sum" not in rim_metrics(pred, truth, mask, tissues, None, margin=0.02)


def test_pure_ratio_shows_a_tissue_too_dark_but_not_a_common_scale() -> None:
    truth, tissues, mask = _brain()
    assert rim_metrics(1.3 * truth, truth, mask, tissues, None, margin=0.02)["pure_ratio"] == \
        {"csf": pytest.approx(1.0), "gm": None, "wm": pytest.approx(1.0)}
    darker = truth * np.where(tissues["csf"] > 0.5, 0.9, 1.0)   # CSF 10 % too dark
    ratio = rim_metrics(darker, truth, mask, tissues, None, margin=0.02)["pure_ratio"]
    assert ratio["csf"] / ratio["wm"] == pytest.approx(0.9, abs=1e-3)
    assert ratio["csf"] < 0.95 and ratio["wm"] > 1.0             # the scale shares the error out


def test_the_white_matter_level_is_read_against_the_models_weight_only_when_given() -> None:
    truth, tissues, mask = _brain()
    wm = mask & (tissues["wm"] > 0.95)
    pred = 1.3 * truth
    assert "wm_over_weight" not in rim_metrics(pred, truth, mask, tissues, None, margin=0.02)
    got = rim_metrics(pred, truth, mask, tissues, None, margin=0.02, wm_weight=0.5)["wm_over_weight"]
    assert got == pytest.approx(float(pred[wm].mean()) / 0.5, abs=1e-3)
