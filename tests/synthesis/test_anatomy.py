"""Randomized anatomy: the edits do what they say and keep the contrasts physics gives them."""
from __future__ import annotations

import numpy as np
import pytest

from synthesis.physics import TISSUES
from synthesis.protocol import preset
from synthesis.simulate import make_subject, render
from synthesis.simulate.phantom import with_coverage
from synthesis.simulate.anatomy import (
    AnatomyEdits,
    BrainMaps,
    Coverage,
    add_lesions,
    enlarge_ventricles,
    label_phantom,
    random_affine,
    random_edits,
    svf_displacement,
    thin_cortex,
    ventricle_mask,
)

pytestmark = pytest.mark.slow


def _frac(subject, name: str) -> np.ndarray:
    return subject.fractions[TISSUES.index(name)].astype(np.float32)


def _mean(image: np.ndarray, where: np.ndarray) -> float:
    assert where.sum() > 50, "too few voxels to compare"
    return float(image[where].mean())


@pytest.fixture(scope="module")
def edited():
    """One subject with enlarged ventricles, thinned cortex and many lesions, and its twin."""
    base = make_subject(11, edits=AnatomyEdits(deformation=0.5))
    subject = make_subject(11, edits=AnatomyEdits(deformation=0.5, ventricles_mm=5.0, atrophy_mm=1.0,
                                                   lesions=25, lesion_radius_mm=(2.0, 6.0)))
    return base, subject


def test_edits_change_the_anatomy_they_name(edited) -> None:
    base, subject = edited
    # the same seed and deformation: only the edits differ
    assert base.shape == subject.shape
    assert _frac(subject, "csf").sum() > 1.15 * _frac(base, "csf").sum()
    assert _frac(subject, "gm").sum() < _frac(base, "gm").sum()
    assert _frac(subject, "lesion").sum() > 2000          # mm³ of lesion
    assert _frac(base, "lesion").sum() == 0
    total = subject.fractions.astype(np.float32).sum(0)
    assert total.max() <= 1.0 + 2e-3                      # fractions never exceed a voxel


def test_lesions_are_bright_on_flair_and_csf_bright_on_t2(edited) -> None:
    _, subject = edited
    lesion, wm, csf = (_frac(subject, n) > 0.9 for n in ("lesion", "wm", "csf"))
    inside = subject.brain_mask
    flair = render(subject, preset("FLAIR", 3.0))
    t2 = render(subject, preset("T2", 3.0))
    t1 = render(subject, preset("T1", 3.0))
    assert _mean(flair, lesion) > 1.5 * _mean(flair, wm)   # lesions bright on FLAIR
    assert _mean(flair, csf & inside) < 0.5 * _mean(flair, wm)  # CSF nulled on FLAIR
    assert _mean(t2, csf & inside) > 2.0 * _mean(t2, wm)  # CSF bright on T2
    assert _mean(t1, lesion) < _mean(t1, wm)              # lesions dark on T1


def test_ventricle_enlargement_grows_the_ventricles_by_about_the_distance() -> None:
    shape = (48, 48, 48)
    maps = BrainMaps(*(np.zeros(shape, np.float32) for _ in range(4)))
    zz, yy, xx = np.mgrid[:48, :48, :48]
    r = np.sqrt((zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2)
    brain = r < 22
    vent = r < 5
    maps.wm[brain & ~vent] = 1.0
    maps.csf[vent] = 1.0
    assert ventricle_mask(maps, min_depth_mm=8.0).sum() == vent.sum()
    enlarge_ventricles(maps, 4.0)
    grown = maps.csf > 0.5
    radius = (3 * grown.sum() / (4 * np.pi)) ** (1 / 3)
    assert 7.5 < radius < 10.5                             # 5 mm + 4 mm, within the coarse distance
    np.testing.assert_allclose(maps.brain[brain], 1.0, atol=1e-5)  # tissue turned to CSF, not lost


def test_cortical_thinning_turns_grey_matter_at_csf_into_csf() -> None:
    shape = (40, 40, 40)
    maps = BrainMaps(*(np.zeros(shape, np.float32) for _ in range(4)))
    maps.gm[:, :, :20] = 1.0
    maps.csf[:, :, 20:] = 1.0
    thin_cortex(maps, 2.0)
    lost = (maps.csf[:, :, :20] > 0.5).sum(axis=2).mean()
    assert 1.0 <= lost <= 3.0


def test_lesions_replace_white_matter_in_the_white_matter() -> None:
    rng = np.random.default_rng(0)
    maps = BrainMaps(*(np.zeros((40, 40, 40), np.float32) for _ in range(4)))
    maps.wm[4:36, 4:36, 4:36] = 1.0
    maps.gm[maps.wm == 0] = 1.0
    add_lesions(maps, rng, 6, (2.0, 4.0))
    assert maps.lesion.sum() > 50
    assert maps.lesion[maps.wm + maps.lesion == 0].sum() == 0
    np.testing.assert_allclose(maps.brain, 1.0, atol=1e-4)


def test_label_phantom_has_every_brain_tissue_inside_the_outline() -> None:
    rng = np.random.default_rng(3)
    outline = np.zeros((40, 48, 40), bool)
    outline[5:35, 5:43, 5:35] = True
    maps = label_phantom(outline, rng, n_labels=30)
    for name in ("csf", "gm", "wm"):
        assert getattr(maps, name)[outline].mean() > 0.02, name
    assert maps.brain[~outline].max() == 0.0


def test_phantom_subject_renders_with_physics_contrast() -> None:
    subject = make_subject(5, edits=AnatomyEdits(phantom=True, deformation=0.3))
    csf, wm = (_frac(subject, n) > 0.9 for n in ("csf", "wm"))
    t2 = render(subject, preset("T2", 1.5))
    assert _mean(t2, csf & subject.brain_mask) > 2.0 * _mean(t2, wm)


@pytest.mark.parametrize("coverage", list(Coverage))
def test_coverage_variants(edited, coverage: Coverage) -> None:
    head, _ = edited
    subject = with_coverage(head, coverage, np.random.default_rng(4))
    fat_head, fat = _frac(head, "fat").sum(), _frac(subject, "fat").sum()
    if coverage is Coverage.STRIPPED:
        assert fat == 0 and _frac(subject, "bone").sum() == 0
        assert subject.brain_mask.sum() == head.brain_mask.sum()
        inside = head.brain_mask                                  # the mask cuts partial voxels
        np.testing.assert_array_equal(_frac(subject, "wm")[inside], _frac(head, "wm")[inside])
        assert _frac(subject, "wm")[~inside].max() == 0
    elif coverage is Coverage.NECK:
        assert subject.shape[0] > head.shape[0] and fat > fat_head
        assert _frac(subject, "muscle").sum() > 1.5 * _frac(head, "muscle").sum()
        assert subject.origin_mm[2] < head.origin_mm[2]          # the volume grew downwards
    elif coverage is Coverage.CROPPED:
        assert np.prod(subject.shape) < np.prod(head.shape)
        assert subject.brain_mask.sum() < head.brain_mask.sum()
    else:
        assert subject is head


def test_affine_and_warp_are_bounded_and_invertible_in_effect() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        matrix = random_affine(rng)
        singular = np.linalg.svd(matrix, compute_uv=False)
        assert 0.75 < singular.min() and singular.max() < 1.3
    disp = svf_displacement((40, 44, 36), rng, max_std_mm=3.0)
    assert disp.shape == (3, 40, 44, 36)
    assert np.abs(disp).max() < 20
    # a diffeomorphism: the Jacobian determinant of x + u(x) stays positive
    grads = [np.gradient(disp[i], axis=j) for i in range(3) for j in range(3)]
    jac = np.stack(grads).reshape(3, 3, *disp.shape[1:]) + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    assert det.min() > 0


def test_random_edits_cover_every_edit_and_validate() -> None:
    rng = np.random.default_rng(2)
    draws = [random_edits(rng) for _ in range(200)]
    assert any(d.phantom for d in draws) and any(d.ventricles_mm > 4 for d in draws)
    assert {d.coverage for d in draws} == set(Coverage)
    assert any(d.lesions > 20 for d in draws) and any(d.masses for d in draws)
    with pytest.raises(ValueError, match=r"ventricles_mm must be in \[0, 12.0\]. Found -1.0"):
        AnatomyEdits(ventricles_mm=-1.0)
    with pytest.raises(ValueError, match="coverage"):
        AnatomyEdits(coverage="torso")
