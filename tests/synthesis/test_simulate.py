"""The physics simulator: phantom, contrasts, protocols, splits and acquisition effects."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from synthesis.protocol import Contrast, MRProtocol, SequenceKind, preset
from synthesis.simulate import (
    NOMINAL_PARAMS,
    SEVERITIES,
    SPLIT_SEEDS,
    TISSUES,
    Effects,
    Subject,
    degrade,
    in_zero_shot_band,
    load_or_make_subject,
    make_subject,
    random_effects,
    random_protocol,
    render,
    thick_slices,
    tissue_signal,
    with_acquisition,
)
from synthesis.simulate import phantom
from synthesis.physics import jittered_params

SEED = 7


@pytest.fixture(scope="module")
def subject() -> Subject:
    """One phantom for the whole module (making one takes seconds)."""
    return make_subject(SEED, n_lesions=8)


def _tissue_means(subject: Subject, image: np.ndarray) -> dict[str, float]:
    """Mean image value over voxels that are at least 90% one tissue."""
    means = {}
    for i, name in enumerate(TISSUES):
        pure = subject.fractions[i] > 0.9
        if pure.any():
            means[name] = float(image[pure].mean())
    return means


def test_subject_fractions_mask_and_params(subject: Subject) -> None:
    d, h, w = subject.shape
    assert subject.fractions.shape == (len(TISSUES), d, h, w)
    assert subject.fractions.dtype == np.float16
    total = subject.fractions.astype(np.float32).sum(axis=0)
    assert total.max() <= 1.0 + 2e-3 and total.min() >= 0.0
    assert 1.0e6 < subject.brain_mask.sum() < 2.5e6  # an adult brain, about 1.2-2 litres
    assert (total[subject.brain_mask] > 0.99).mean() > 0.99
    assert (subject.tissue("lesion") > 0.5).sum() > 20
    for field_t, params in subject.params.items():
        ratio = params / NOMINAL_PARAMS[field_t]
        assert params.shape == (len(TISSUES), 4)
        assert np.all((ratio > 0.899) & (ratio < 1.101))
    # extra-cerebral shells surround the brain; the head stays inside the grid
    head = total > 0.5
    assert head[:, 0, :].sum() == 0 and head[:, -1, :].sum() == 0
    assert head[:, :, 0].sum() == 0 and head[:, :, -1].sum() == 0


@pytest.mark.parametrize("field_t", [1.5, 3.0])
def test_tissue_contrasts_on_rendered_subject(subject: Subject, field_t: float) -> None:
    t1 = _tissue_means(subject, render(subject, preset("T1", field_t)))
    assert t1["wm"] > t1["gm"] > t1["csf"]
    t1se = _tissue_means(subject, render(subject, preset("T1SE", field_t)))
    assert t1se["wm"] > t1se["gm"] > t1se["csf"]
    t2 = _tissue_means(subject, render(subject, preset("T2", field_t)))
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert t2["lesion"] > t2["gm"]
    flair = _tissue_means(subject, render(subject, preset("FLAIR", field_t)))
    assert flair["csf"] < 0.5 * min(flair["gm"], flair["wm"])
    assert flair["lesion"] > 1.3 * max(flair["gm"], flair["wm"])
    long_tr_pd = MRProtocol(contrast=Contrast.PDw, sequence=SequenceKind.TSE, tr_ms=6000.0,
                            te_ms=12.0, field_t=field_t)
    pd = _tissue_means(subject, render(subject, long_tr_pd))
    assert pd["csf"] >= pd["gm"] > pd["wm"]
    assert t1["bone"] < 0.1 * t1["wm"]  # skull: almost no signal


@pytest.mark.parametrize("split", ["train", "zeroshot"])
@pytest.mark.parametrize("contrast", ["T1", "T2", "PD", "FLAIR"])
def test_random_protocols_keep_contrast_order(contrast: str, split: str) -> None:
    rng = np.random.default_rng(0)
    idx = {name: i for i, name in enumerate(TISSUES)}
    for _ in range(50):
        protocol = random_protocol(contrast, rng, split=split)
        s = tissue_signal(jittered_params(rng)[protocol.field_t], protocol)
        csf, gm, wm, lesion = (s[idx[n]] for n in ("csf", "gm", "wm", "lesion"))
        if contrast == "T1":
            assert wm > gm > csf, protocol
        elif contrast == "T2":
            assert csf > gm > wm, protocol
        elif contrast == "PD":
            # clinical TRs (2.8-9 s) leave CSF somewhat below GM at short TR, never dark as on T1w
            assert csf >= 0.6 * gm and gm > wm, protocol
        else:
            assert csf < 0.5 * min(gm, wm) and lesion > max(gm, wm), protocol


def test_render_region_is_the_crop_and_fast(subject: Subject) -> None:
    protocol = preset("T2", 3.0)
    region = (slice(60, 124), slice(80, 144), slice(60, 124))
    full = render(subject, protocol)
    part = render(subject, protocol, region=region)
    assert part.shape == (64, 64, 64) and part.dtype == np.float32
    np.testing.assert_allclose(part, full[region], rtol=1e-6)
    best = min(_timed(lambda: render(subject, protocol, region=region)) for _ in range(5))
    assert best < 0.1, f"rendering a 64^3 region took {best * 1000:.0f} ms"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_make_subject_is_deterministic_by_seed(subject: Subject) -> None:
    again = make_subject(SEED, n_lesions=8)
    np.testing.assert_array_equal(again.fractions, subject.fractions)
    np.testing.assert_array_equal(again.brain_mask, subject.brain_mask)
    for field_t in subject.params:
        np.testing.assert_array_equal(again.params[field_t], subject.params[field_t])
    coords_a = phantom._sampling_coords((8, 8, 8), (0, 0, 0), np.random.default_rng([SEED, 1]))
    coords_b = phantom._sampling_coords((8, 8, 8), (0, 0, 0), np.random.default_rng([SEED + 1, 1]))
    assert not np.allclose(coords_a, coords_b)


def test_load_or_make_subject_caches(subject: Subject, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []

    def fake_make(seed: int) -> Subject:
        made.append(seed)
        return subject

    monkeypatch.setattr(phantom, "make_subject", fake_make)
    first = load_or_make_subject(SEED, tmp_path)
    second = load_or_make_subject(SEED, tmp_path)
    assert made == [SEED]
    assert len(list(tmp_path.glob("*.npz"))) == 1
    np.testing.assert_array_equal(second.fractions, first.fractions)
    np.testing.assert_array_equal(second.brain_mask, first.brain_mask)
    assert second.origin_mm == first.origin_mm and second.seed == SEED
    np.testing.assert_array_equal(second.params[3.0], first.params[3.0])


def test_invalid_seed_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        make_subject(-1)


def test_splits_are_disjoint() -> None:
    names = list(SPLIT_SEEDS)
    assert set(names) == {"train", "validation", "test"}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = SPLIT_SEEDS[a], SPLIT_SEEDS[b]
            assert ra.stop <= rb.start or rb.stop <= ra.start, (a, b)


def test_zero_shot_band_is_held_out_of_training() -> None:
    rng = np.random.default_rng(1)
    for contrast in ("T1", "T2", "PD", "FLAIR"):
        for _ in range(300):
            assert not in_zero_shot_band(random_protocol(contrast, rng, split="train"))
    t2_te = [random_protocol("T2", rng, split="train").te_ms for _ in range(300)]
    assert min(t2_te) < 100 and max(t2_te) > 140  # the band is cut out of a wider range
    for contrast in ("T1", "T2", "PD", "FLAIR"):
        for _ in range(100):
            protocol = random_protocol(contrast, rng, split="zeroshot")
            assert in_zero_shot_band(protocol), protocol
    with pytest.raises(ValueError, match="split must be one of"):
        random_protocol("FLAIR", rng, split="holdout")


def test_random_protocol_is_realistic_and_deterministic() -> None:
    a = [random_protocol(c, np.random.default_rng(3)) for c in ("T1", "T2", "PD", "FLAIR")]
    b = [random_protocol(c, np.random.default_rng(3)) for c in ("T1", "T2", "PD", "FLAIR")]
    assert a == b
    rng = np.random.default_rng(4)
    for _ in range(100):
        flair = random_protocol("FLAIR", rng, field_t=1.5)
        assert flair.sequence is SequenceKind.IR and flair.field_t == 1.5
        assert 1500 < flair.ti_ms < 3000 and flair.te_ms < flair.tr_ms
        t1 = random_protocol("T1w", rng, field_t=3.0)
        assert t1.sequence in (SequenceKind.MPRAGE, SequenceKind.SPGR, SequenceKind.SE)
        assert (t1.ti_ms is not None) == (t1.sequence is SequenceKind.MPRAGE)
    with pytest.raises(ValueError, match="Unknown contrast"):
        random_protocol("DWI", rng)


# -- acquisition effects -------------------------------------------------
@pytest.fixture(scope="module")
def head_patch(subject: Subject) -> np.ndarray:
    """A 40^3 T1w patch at the edge of the head: brain, skull, scalp and air."""
    d, h, w = subject.shape
    return render(subject, preset("T1", 3.0),
                  region=(slice(d // 2 - 20, d // 2 + 20), slice(0, 40), slice(w // 2 - 20, w // 2 + 20)))


def test_clean_effects_change_nothing(head_patch: np.ndarray) -> None:
    vol, spacing = degrade(head_patch, (1.0, 1.0, 1.0), SEVERITIES["clean"], np.random.default_rng(0))
    assert spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol, head_patch)


def test_noise_raises_background_std(head_patch: np.ndarray) -> None:
    air = head_patch == 0
    assert air.sum() > 1000
    vol, _ = degrade(head_patch, (1.0, 1.0, 1.0), SEVERITIES["noise"], np.random.default_rng(0))
    sigma = 0.03 * np.percentile(head_patch, 99)
    # Rician noise on zero signal is Rayleigh: mean sigma*sqrt(pi/2), std sigma*0.655
    assert vol[air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.1)
    assert vol[air].std() == pytest.approx(sigma * 0.655, rel=0.1)
    assert vol.min() >= 0


def test_bias_field_is_smooth_and_bounded(head_patch: np.ndarray) -> None:
    vol, _ = degrade(head_patch, (1.0, 1.0, 1.0), SEVERITIES["bias"], np.random.default_rng(0))
    tissue = head_patch > 0.05 * head_patch.max()
    gain = vol[tissue] / head_patch[tissue]
    assert gain.min() >= np.exp(-0.2) - 1e-4 and gain.max() <= np.exp(0.2) + 1e-4
    assert gain.max() - gain.min() > 0.1
    gain_map = np.where(head_patch > 0, vol / np.maximum(head_patch, 1e-9), np.nan)
    steps = np.abs(np.diff(gain_map, axis=2))
    assert np.nanmax(steps) < 0.05  # smooth: < 5% change per mm


def test_thick_slices_coarsen_the_axis(head_patch: np.ndarray) -> None:
    for axis in (0, 2):
        vol, spacing = degrade(head_patch, (1.0, 1.0, 1.0), SEVERITIES["thick_slices"],
                               np.random.default_rng(0), axis=axis)
        expected = list(head_patch.shape)
        expected[axis] = 8  # 40 mm / 5 mm
        assert vol.shape == tuple(expected)
        assert spacing[axis] == 5.0 and sum(spacing) == 7.0
    moved = np.moveaxis(head_patch, 0, 0)
    np.testing.assert_allclose(thick_slices(moved, 1.0, 5.0, 0)[1], moved[5:10].mean(axis=0),
                               rtol=1e-5, atol=1e-7)
    # non-integer thickness keeps the total signal (a box profile without gaps)
    ramp = np.arange(10, dtype=np.float32).reshape(10, 1, 1) * np.ones((1, 2, 2), np.float32)
    out = thick_slices(ramp, 1.0, 2.5, 0)
    np.testing.assert_allclose(out[:, 0, 0], [0.8, 3.2, 5.8, 8.2], rtol=1e-6)  # (0+1+2/2)/2.5, ...


def test_gibbs_rings_at_edges() -> None:
    cube = np.zeros((4, 48, 48), np.float32)
    cube[:, 12:36, 12:36] = 1.0
    vol, _ = degrade(cube, (1.0, 1.0, 1.0), SEVERITIES["gibbs"], np.random.default_rng(0))
    assert vol.max() > 1.05  # overshoot next to the edge
    assert vol[:, 24, 8].mean() > 0.01  # ripples outside the object
    assert np.allclose(vol[:, 0, :], vol[:, 0, :].mean(), atol=0.05)  # nothing global


def test_ghosting_puts_signal_outside_the_object() -> None:
    cube = np.zeros((4, 64, 64), np.float32)
    cube[:, 24:40, 24:40] = 1.0
    vol, _ = degrade(cube, (1.0, 1.0, 1.0), SEVERITIES["ghosting"], np.random.default_rng(2))
    outside = cube == 0
    assert vol[outside].mean() > 1e-3
    assert vol[~outside].mean() < 1.0
    assert vol.sum() == pytest.approx(cube.sum(), rel=0.3)


def test_degrade_is_deterministic_and_validates(head_patch: np.ndarray) -> None:
    effects = Effects(noise=0.02, bias=0.1, ghosting=0.03, gibbs=0.2, slice_thickness_mm=3.0)
    a = degrade(head_patch, (1.0, 1.0, 1.0), effects, np.random.default_rng(9), axis=1)
    b = degrade(head_patch, (1.0, 1.0, 1.0), effects, np.random.default_rng(9), axis=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == (1.0, 3.0, 1.0) and a[0].shape == (40, 13, 40)
    with pytest.raises(ValueError, match="3-D image"):
        degrade(head_patch[0], (1.0, 1.0, 1.0), effects, np.random.default_rng(0))
    with pytest.raises(ValueError, match="Effects.noise"):
        Effects(noise=-0.1)


def test_severities_and_random_effects() -> None:
    assert set(SEVERITIES) == {"clean", "noise", "bias", "ghosting", "gibbs", "thick_slices"}
    assert SEVERITIES["noise"].noise == 0.03 and SEVERITIES["thick_slices"].slice_thickness_mm == 5.0
    rng = np.random.default_rng(5)
    mixes = [random_effects(rng) for _ in range(300)]
    assert all(1.0 <= e.slice_thickness_mm <= 5.5 for e in mixes)
    assert 0.1 < np.mean([e.slice_thickness_mm > 1.0 for e in mixes]) < 0.5
    assert 0.05 < np.mean([e.ghosting > 0 for e in mixes]) < 0.5
    assert np.mean([e.noise > 0 for e in mixes]) > 0.7
    se = MRProtocol(contrast="T1w", sequence="SE", dimension="2D", tr_ms=500, te_ms=10,
                    slice_thickness_mm=4.0)
    assert random_effects(rng, protocol=se).slice_thickness_mm == 4.0
    stamped = with_acquisition(se, Effects(slice_thickness_mm=4.0))
    assert stamped.voxel_mm == (1.0, 1.0, 4.0) and stamped.slice_thickness_mm == 4.0
