"""The evaluation's case builders make the shifts they claim (real generator, one test subject)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthesis.eval_sets import CONTRAST_TISSUES, build_cases, select_sets, held_out_seeds
from synthesis.metrics import contrast_ratios, psnr

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases(eval_cache: Path) -> dict:
    """(set, target) -> case for in_distribution, ventricles_6mm, phantom and slices_5mm."""
    built = build_cases(select_sets("ventricles_6mm,phantom,slices_5mm"), held_out_seeds(1), crop=(96, 112, 96),
                        cache_dir=eval_cache, targets=["T2w", "FLAIR"])
    return {(c.set_name, c.target_contrast): c for c in built}


def _fraction(case, tissue: str) -> float:
    return float((case.tissues[tissue].astype(np.float32) > 0.5)[case.mask].mean())


def test_enlarged_ventricles_hold_more_csf_and_stay_bright_on_t2w(cases: dict) -> None:
    base, vent = cases["in_distribution", "T2w"], cases["ventricles_6mm", "T2w"]
    assert _fraction(vent, "csf") > 1.3 * _fraction(base, "csf")
    ratios = contrast_ratios(vent.truth, vent.tissues, vent.mask)
    assert ratios["CSF/GM"] > 1.5 and ratios["GM/WM"] > 1.1  # CSF bright on T2w, GM above WM


def test_lesions_are_bright_on_the_flair_truth_and_csf_dark(cases: dict) -> None:
    flair = cases["in_distribution", "FLAIR"]
    ratios = contrast_ratios(flair.truth, flair.tissues, flair.mask)
    assert ratios["lesion/WM"] is not None and ratios["lesion/WM"] > 1.2
    assert ratios["CSF/GM"] < 0.3


def test_the_phantom_has_csf_grey_and_white_matter(cases: dict) -> None:
    phantom = cases["phantom", "T2w"]
    for tissue in ("csf", "gm", "wm"):
        assert _fraction(phantom, tissue) > 0.08, tissue
    base = cases["in_distribution", "T2w"]  # a different anatomy than the template-based subject
    assert np.mean(np.abs(phantom.tissues["wm"].astype(np.float32) - base.tissues["wm"].astype(np.float32))) > 0.2


def test_thick_slices_are_acquired_coarse_and_scored_against_the_sliced_oracle(cases: dict) -> None:
    base, thick = cases["in_distribution", "T2w"], cases["slices_5mm", "T2w"]
    assert thick.source_spacing == (5.0, 1.0, 1.0) and base.source_spacing == (1.0, 1.0, 1.0)
    assert thick.source.shape[0] * 5 == pytest.approx(base.source.shape[0], abs=10)
    assert base.sliced_oracle is None and thick.sliced_oracle is not None
    mask = thick.mask
    assert psnr(thick.sliced_oracle, thick.truth, mask) < psnr(thick.oracle, thick.truth, mask) - 3.0
    # the same head: the thick source, back on 1 mm, still lines up with the 1 mm source
    assert np.corrcoef(thick.source_1mm[mask], base.source_1mm[mask])[0, 1] > 0.9


def test_every_case_carries_its_region_and_units(cases: dict) -> None:
    for case in cases.values():
        shape = case.truth.shape
        assert case.mask.shape == case.oracle.shape == case.source_1mm.shape == shape
        assert set(case.tissues) == set(CONTRAST_TISSUES)
        assert 0.9 < np.percentile(case.truth[case.mask], 99.5) < 1.1  # brain-relative (of the whole brain)
        assert case.source_peak > 0 and all(o <= 0 for o in case.source_origin_mm)


def test_validation_subjects_are_neither_test_subjects_nor_trainings_validation_subject() -> None:
    test, validation = held_out_seeds(3), held_out_seeds(3, "validation")
    assert test == [2_000_000, 2_000_001, 2_000_002]
    assert validation == [1_000_001, 1_000_002, 1_000_003]  # 1_000_000 is validated on while training
    with pytest.raises(ValueError, match="split must be"):
        held_out_seeds(1, "train")
    assert held_out_seeds(2, "validation", first=2) == [1_000_003, 1_000_004]   # past the ones a model was chosen on
    assert held_out_seeds(2, first=1) == [2_000_001, 2_000_002]
    with pytest.raises(ValueError, match="first must be"):
        held_out_seeds(1, first=-1)
