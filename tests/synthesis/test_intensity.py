"""Source normalization (tissue peak) and N4 bias correction on a simulated head."""
from __future__ import annotations

import numpy as np
import pytest

from synthesis import intensity
from synthesis.bias import n4_correct
from synthesis.physics import TISSUES
from synthesis.protocol import preset
from synthesis.simulate import Subject, make_subject, render, tissue_weights

SEED = 7
BRAIN_TISSUES = ("csf", "gm", "wm", "lesion")
NECK_SLICES = 70


@pytest.fixture(scope="module")
def subject() -> Subject:
    """One simulated head for the module (making one takes seconds)."""
    return make_subject(SEED)


def _stripped(subject: Subject, image_weights: np.ndarray) -> np.ndarray:
    """The subject's image with every extra-cerebral tissue (and the brain mask's outside) zeroed."""
    out = np.zeros(subject.shape, dtype=np.float32)
    for name in BRAIN_TISSUES:
        out += np.float32(image_weights[TISSUES.index(name)]) * subject.tissue(name)
    return out * subject.brain_mask


def _neck(subject: Subject, image_weights: np.ndarray) -> np.ndarray:
    """A neck-like block below the head: an elliptic muscle core in a fat sleeve, float32."""
    _, height, width = subject.shape
    _, yy, xx = np.mgrid[0:NECK_SLICES, 0:height, 0:width]
    radius = np.sqrt(((yy - 0.55 * height) / 55.0) ** 2 + ((xx - 0.5 * width) / 60.0) ** 2)
    neck = np.zeros((NECK_SLICES, height, width), dtype=np.float32)
    neck[radius < 1.0] = image_weights[TISSUES.index("fat")]
    neck[radius < 0.85] = image_weights[TISSUES.index("muscle")]
    return neck


def _variants(subject: Subject, contrast: str) -> tuple[dict[str, tuple[np.ndarray, int]], int]:
    """Coverage variants of one image, ``{name: (volume, z index of the subject's slice 0 in
    it)}``, and the first subject slice that every variant holds."""
    protocol = preset(contrast, 3.0)
    full = render(subject, protocol)
    weights = tissue_weights(subject, protocol)
    z_head = np.flatnonzero(full.max(axis=(1, 2)) > 0)
    z_cut = int(z_head[0] + (z_head[-1] - z_head[0]) // 3)  # the lower third of the head cut away
    variants = {
        "with scalp": (full, 0),
        "skull-stripped": (_stripped(subject, weights), 0),
        "with a neck": (np.concatenate([_neck(subject, weights), full]), NECK_SLICES),
        "cropped": (full[z_cut:], -z_cut),
    }
    return variants, z_cut


@pytest.mark.parametrize("contrast", ["T1", "T2", "FLAIR", "PD"])
def test_normalized_brain_is_the_same_whatever_surrounds_it(subject: Subject, contrast: str) -> None:
    """The same brain, with or without its scalp, with a neck or a cropped field of view,
    gets the same normalized intensities (within 3%), compared on the brain voxels all hold."""
    quantiles = (10.0, 50.0, 90.0)
    variants, z_common = _variants(subject, contrast)
    brain = subject.brain_mask[z_common:]
    found: dict[str, np.ndarray] = {}
    for name, (volume, z0) in variants.items():
        normalized, peak = intensity.normalize_source(volume, (1.0, 1.0, 1.0))
        assert normalized.dtype == np.float32 and 0.0 <= normalized.min()
        assert normalized.max() <= intensity.SOURCE_MAX and peak > 0
        found[name] = np.percentile(normalized[z_common + z0:][brain], quantiles)
    reference = found["skull-stripped"]
    assert reference[1] > 0.1  # a real signal to compare
    for name, values in found.items():
        np.testing.assert_allclose(values, reference, rtol=0.03, err_msg=f"{contrast} {name}")


def test_t1_peak_is_white_matter_not_scalp_fat(subject: Subject) -> None:
    image = render(subject, preset("T1", 3.0))
    weights = tissue_weights(subject, preset("T1", 3.0))
    wm, fat = weights[TISSUES.index("wm")], weights[TISSUES.index("fat")]
    assert fat > 1.2 * wm  # the case that makes a whole-head histogram pick fat
    assert intensity.tissue_peak(image) == pytest.approx(wm, rel=0.02)


def test_peak_follows_the_spacing_and_rejects_no_signal() -> None:
    rng = np.random.default_rng(0)
    ball = np.zeros((30, 40, 40), dtype=np.float32)
    zz, yy, xx = np.mgrid[0:30, 0:40, 0:40]
    ball[((zz - 15) / 14) ** 2 + ((yy - 20) / 18) ** 2 + ((xx - 20) / 18) ** 2 < 1] = 400.0
    ball += rng.normal(0, 5, ball.shape).astype(np.float32) * (ball > 0)
    assert intensity.tissue_peak(ball, (2.0, 1.0, 1.0)) == pytest.approx(400.0, rel=0.03)
    scaled, peak = intensity.normalize_source(ball * 3.0)
    assert peak == pytest.approx(1200.0, rel=0.03)
    assert np.median(scaled[ball > 0]) == pytest.approx(intensity.PEAK_LEVEL, rel=0.03)
    for blank in (np.zeros((20, 20, 20)), np.full((20, 20, 20), -5.0)):
        with pytest.raises(ValueError, match="no usable signal"):
            intensity.tissue_peak(blank)
    with pytest.raises(ValueError, match="constant"):
        intensity.tissue_peak(np.full((20, 20, 20), 7.0))
    with pytest.raises(ValueError, match="peak must be a finite positive intensity. Found 0.0"):
        intensity.scale_source(ball, 0.0)


def _wm_cv(volume: np.ndarray, wm: np.ndarray) -> float:
    """Coefficient of variation of the white-matter intensities."""
    values = volume[wm]
    return float(values.std() / values.mean())


def test_n4_removes_a_smooth_bias_field(subject: Subject) -> None:
    """A known smooth multiplicative field on a simulated T1 (2 mm): N4 brings the white matter's
    coefficient of variation back near the clean image's."""
    step = 2  # 2 mm voxels keep the test quick
    clean = render(subject, preset("T1", 3.0))[::step, ::step, ::step]
    wm = (subject.tissue("wm") > 0.95)[::step, ::step, ::step]
    z, y, x = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in clean.shape), indexing="ij")
    field = np.exp(0.3 * (0.8 * x + 0.6 * y - 0.5 * z + 0.4 * x * y)).astype(np.float32)
    biased = clean * field
    corrected = n4_correct(biased, (2.0, 2.0, 2.0))  # fitted on 8 mm voxels
    assert corrected.shape == biased.shape and corrected.dtype == np.float32
    before, after, floor = _wm_cv(biased, wm), _wm_cv(corrected, wm), _wm_cv(clean, wm)
    assert before > 0.1 and floor < 0.02
    assert after < 0.3 * before, (before, after)
    # what is left of the field inside the head varies by a few percent at most
    residual = corrected[wm] / clean[wm]
    assert residual.std() / residual.mean() < 0.05


def test_n4_rejects_what_it_cannot_correct() -> None:
    with pytest.raises(ValueError, match="no usable signal"):
        n4_correct(np.zeros((16, 16, 16)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="constant"):
        n4_correct(np.full((16, 16, 16), 3.0), (1.0, 1.0, 1.0))
    volume = np.random.default_rng(1).random((16, 16, 16)) + 1.0
    with pytest.raises(ValueError, match="shrink must be an integer >= 1. Found 0"):
        n4_correct(volume, (1.0, 1.0, 1.0), shrink=0)
    with pytest.raises(ValueError, match="iterations must be one or more positive integers"):
        n4_correct(volume, (1.0, 1.0, 1.0), iterations=())
    with pytest.raises(ValueError, match="spacing must be finite and > 0 mm"):
        n4_correct(volume, (1.0, 0.0, 1.0))
