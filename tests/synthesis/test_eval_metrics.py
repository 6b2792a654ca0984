"""Brain-relative RMSE, tissue contrast ratios, crop alignment and the real-T1 helpers on constructed arrays."""
from __future__ import annotations

import numpy as np
import pytest

from synthesis.eval_sets import CASE_SETS, aligned_box, from_box, scoring_region, select_sets
from synthesis.grid import resample
from synthesis.metrics import brain_relative_rmse, contrast_ratios, error_split, normalize_in_mask, tissue_means
from synthesis.real_t1 import kmeans3, physics_order
from synthesis.protocol import preset


def test_brain_relative_rmse_is_in_percent_of_the_truths_bright_end() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.5, 2.0, size=(10, 10, 10)).astype(np.float32)
    mask = np.ones_like(truth, dtype=bool)
    hi = np.percentile(truth, 99.5)
    assert brain_relative_rmse(truth / hi, truth, mask) == pytest.approx(0.0, abs=1e-4)
    assert brain_relative_rmse(truth / hi + 0.05, truth, mask) == pytest.approx(5.0, rel=1e-4)
    # a wrong overall scale counts (the prediction is taken in its own units)
    assert brain_relative_rmse(truth, truth, mask) > 50.0
    outside = mask.copy()
    outside[:5] = False
    pred = truth / np.percentile(truth[outside], 99.5)  # the bright end inside the mask sets the unit
    pred[:5] += 1.0  # errors outside the mask do not count
    assert brain_relative_rmse(pred, truth, outside) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="mask is empty"):
        brain_relative_rmse(pred, truth, np.zeros_like(mask))


def test_contrast_ratios_use_voxels_that_are_mostly_one_tissue() -> None:
    shape = (4, 10, 10)
    tissues = {name: np.zeros(shape, np.float16) for name in ("csf", "gm", "wm", "lesion")}
    volume = np.zeros(shape, np.float32)
    for z, (name, value) in enumerate((("csf", 3.0), ("gm", 1.5), ("wm", 1.0), ("lesion", 2.4))):
        tissues[name][z] = 1.0
        volume[z] = value
    tissues["csf"][0, 0, :] = 0.95  # 95% CSF still counts as CSF
    tissues["gm"][1, 0, :] = 0.85   # 85% GM does not count, whatever its value
    volume[1, 0, :] = 100.0
    mask = np.ones(shape, bool)
    ratios = contrast_ratios(volume, tissues, mask)
    assert ratios == pytest.approx({"GM/WM": 1.5, "CSF/GM": 2.0, "lesion/WM": 2.4})
    tissues["lesion"][:] = 0
    assert contrast_ratios(volume, tissues, mask)["lesion/WM"] is None
    assert tissue_means(volume, tissues, mask, min_voxels=1000)["wm"] is None


def test_error_split_says_whether_the_error_lies_in_pure_or_partial_voxels() -> None:
    shape = (4, 10, 10)
    tissues = {name: np.zeros(shape, np.float16) for name in ("csf", "gm", "wm", "lesion")}
    tissues["wm"][:2] = 1.0                               # two pure slabs ...
    tissues["gm"][2:] = 0.6                               # ... and two partial ones
    tissues["wm"][2:] = 0.4
    mask = np.ones(shape, bool)
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.2, 1.0, shape).astype(np.float32)
    pred = truth.copy()
    pred[3, 5, 5] += 0.3                                  # the one error, in a partial voxel
    split = error_split(pred, truth, tissues, mask)
    assert split["partial_voxels"] == pytest.approx(0.5)
    assert split["partial_error"] > 0.9 and split["pure_rmse"] < split["partial_rmse"]
    err = (normalize_in_mask(pred, mask) - normalize_in_mask(truth, mask)) ** 2   # the scale PSNR uses
    assert split["partial_rmse"] == pytest.approx(float(np.sqrt(err[2:].mean())), rel=1e-5)
    pred = truth.copy()
    pred[0, 5, 5] += 0.3                                  # now in a pure voxel
    assert error_split(pred, truth, tissues, mask)["partial_error"] < 0.1
    assert error_split(truth, truth, tissues, mask) is None   # no error, no split
    tissues["gm"][:] = 0
    tissues["wm"][:] = 1.0                                # every voxel pure
    split = error_split(pred, truth, tissues, mask)
    assert split["partial_voxels"] == 0.0 and split["partial_error"] == 0.0 and split["partial_rmse"] is None


def test_sets_select_by_name_and_group_and_always_hold_in_distribution() -> None:
    assert [s.name for s in select_sets("phantom")] == ["in_distribution", "phantom"]
    anatomy = select_sets("anatomy")
    assert {s.group for s in anatomy[1:]} == {"anatomy"} and len(anatomy) == 6
    assert len(select_sets("all")) == len(CASE_SETS)
    with pytest.raises(ValueError, match="unknown set 'nope'"):
        select_sets("nope")
    assert CASE_SETS["ventricles_6mm"].edits.ventricles_mm == 6.0
    assert CASE_SETS["slices_5mm"].acquisition.spacing == (5.0, 1.0, 1.0) and CASE_SETS["slices_5mm"].resamples
    assert not CASE_SETS["snr_10"].resamples


@pytest.mark.parametrize("spacing", [(1.4, 1.4, 1.4), (5.0, 1.0, 1.0), (1.2, 0.8, 0.8), (3.0, 1.0, 1.0)])
def test_the_source_box_lands_on_the_1mm_region(spacing: tuple[float, float, float]) -> None:
    """A smooth 1 mm volume resampled to ``spacing``, cut by aligned_box, brought back to 1 mm and
    cut by from_box, is the region of the original (up to interpolation)."""
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (70, 80, 60)), indexing="ij")
    volume = np.sin(zz / 9) + np.cos(yy / 7) + 0.02 * xx
    mask = np.zeros(volume.shape, bool)
    mask[20:50, 25:55, 15:45] = True
    region = scoring_region(mask, (24, 24, 24))
    acquired = resample(volume, (1.0, 1.0, 1.0), spacing)
    box, origin = aligned_box(region, spacing, acquired.shape)
    assert all(abs(b.start * s - round(b.start * s)) < 1e-6 for b, s in zip(box, spacing))
    rel = tuple(o - r.start for o, r in zip(origin, region))
    back = from_box(resample(acquired[box], spacing, (1.0, 1.0, 1.0)), rel, (24, 24, 24))
    error = np.abs(back - volume[region])[2:-2, 2:-2, 2:-2]
    assert error.mean() < 0.05
    shifted = from_box(resample(acquired[box], spacing, (1.0, 1.0, 1.0)), tuple(r - 1 for r in rel), (24, 24, 24))
    assert np.abs(shifted - volume[region])[2:-2, 2:-2, 2:-2].mean() > error.mean()


def test_kmeans3_orders_classes_dark_to_bright() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(m, 0.05, 500) for m in (2.0, 0.3, 1.0)])
    labels, centres = kmeans3(values)
    assert centres == pytest.approx([0.3, 1.0, 2.0], abs=0.02)
    assert (labels[:500] == 2).all() and (labels[500:1000] == 0).all() and (labels[1000:] == 1).all()


def test_physics_order_of_csf_gm_wm() -> None:
    t2 = physics_order(preset("T2", 3.0))
    flair = physics_order(preset("FLAIR", 3.0))
    assert t2["csf"] > t2["gm"] > t2["wm"]            # CSF bright on T2w
    assert flair["gm"] > flair["wm"] > flair["csf"]   # CSF nulled on FLAIR
