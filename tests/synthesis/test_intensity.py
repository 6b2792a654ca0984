"""Source normalization (tissue peak) and N4 bias correction on a simulated head."""
from __future__ import annotations

import numpy as np
import pytest

from bench.bias import bias_field, white_matter_cv
from bench.normalization import coverage_variants
from synthesis import intensity
from synthesis.bias import n4_correct
from synthesis.physics import TISSUES
from synthesis.protocol import preset
from synthesis.simulate import Subject, make_subject, render, tissue_weights

SEED = 7


@pytest.fixture(scope="module")
def subject() -> Subject:
    """One simulated head for the module (making one takes seconds)."""
    return make_subject(SEED)


@pytest.mark.parametrize("contrast", ["T1", "T2", "FLAIR", "PD"])
def test_normalized_brain_is_the_same_whatever_surrounds_it(subject: Subject, contrast: str) -> None:
    """The same brain, with or without its scalp, with a neck or a cropped field of view,
    gets the same normalized intensities (within 3%), compared on the brain voxels all hold."""
    quantiles = (10.0, 50.0, 90.0)
    variants, z_common = coverage_variants(subject, contrast)
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


@pytest.mark.parametrize("snr", [12.0, 16.0])
def test_t1_peak_is_white_matter_at_low_snr_not_the_noise_in_the_air(subject: Subject, snr: float) -> None:
    """Rician noise in the air around the head, with a tenth of the 99th percentile inside its
    spread: the noise voxels above that threshold are not the head (its largest part after an
    opening is), so the head's core stays brain. The head mask alone used to take them in, the
    core's median fell towards the noise, and the peak with it (0.78 x white matter here at
    both SNRs; 0.19 x in one randomized training draw at SNR 12). At SNR 10 and below the
    noise merges the grey and white matter modes (0.81 x), a limit of the peak, not the mask."""
    from synthesis.simulate.acquisition import Acquisition, acquire

    image = render(subject, preset("T1", 3.0))
    wm = tissue_weights(subject, preset("T1", 3.0))[TISSUES.index("wm")]
    noisy, spacing = acquire(image, Acquisition(snr=snr), np.random.default_rng(3))
    air = subject.fractions.sum(0) < 0.01
    assert (noisy[air] > 0.1 * np.percentile(noisy, 99)).mean() > 0.005  # the threshold is inside the noise
    assert intensity.tissue_peak(noisy, spacing) == pytest.approx(wm, rel=0.08)


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
    # a noise-free, piecewise-constant phantom: a core of one intensity is its own peak
    shells = np.where(ball > 0, 300.0, 0.0)
    shells[8:22, 10:30, 10:30] = 800.0
    assert intensity.tissue_peak(shells) == 800.0
    with pytest.raises(ValueError, match="peak must be a finite positive intensity. Found 0.0"):
        intensity.scale_source(ball, 0.0)


def test_n4_removes_a_smooth_bias_field(subject: Subject) -> None:
    """A known smooth multiplicative field on a simulated T1 (2 mm): N4 brings the white matter's
    coefficient of variation back near the clean image's."""
    step = 2  # 2 mm voxels keep the test quick
    clean = render(subject, preset("T1", 3.0))[::step, ::step, ::step]
    wm = (subject.tissue("wm") > 0.95)[::step, ::step, ::step]
    biased = clean * bias_field(clean.shape)
    corrected = n4_correct(biased, (2.0, 2.0, 2.0))  # fitted on 8 mm voxels
    assert corrected.shape == biased.shape and corrected.dtype == np.float32
    before, after = white_matter_cv(biased, wm), white_matter_cv(corrected, wm)
    assert before > 0.1 and white_matter_cv(clean, wm) < 0.02
    assert after < 0.3 * before, (before, after)
    # what is left of the field inside the white matter varies by a few percent at most
    assert white_matter_cv(corrected / np.maximum(clean, 1e-6), wm) < 0.05


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
