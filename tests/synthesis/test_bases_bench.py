"""bench/bases.py: the tissue-fraction and lesion metrics of a model's output bases."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.bases import BRAIN_TISSUES, crop_metrics, lesion_subjects, summarize
from synthesis.physics import TISSUES
from synthesis.protocol import MRProtocol
from synthesis.simulate import SPLIT_SEEDS
from synthesis.stream import Crop, subject_edits

P = 16
SIGNAL = np.array([0.1, 0.7, 0.5, 1.0, 0.8, 0.2, 0.3, 0.0], dtype=np.float32)  # FLAIR-like
T1_SIGNAL = np.array([0.2, 0.6, 0.8, 0.65, 0.9, 0.5, 0.7, 0.0], dtype=np.float32)  # a lesion near GM


def _crop() -> Crop:
    """A 16^3 crop: white matter with a 4^3 lesion and a CSF slab; truth = fractions x SIGNAL."""
    fractions = np.zeros((len(TISSUES), P, P, P), np.float32)
    fractions[TISSUES.index("wm")] = 1.0
    fractions[:, :, :, :3] = 0.0
    fractions[TISSUES.index("csf"), :, :, :3] = 1.0
    fractions[:, :, :, 13:] = 0.0
    fractions[TISSUES.index("gm"), :, :, 13:] = 1.0         # a grey-matter slab
    fractions[:, 6:10, 6:10, 6:10] = 0.0
    fractions[TISSUES.index("lesion"), 6:10, 6:10, 6:10] = 1.0
    target = np.tensordot(SIGNAL, fractions, axes=1).astype(np.float32)
    source = np.tensordot(T1_SIGNAL, fractions, axes=1).astype(np.float32)
    return Crop(source=source, target=target, target_cell=target, cell=1.0,
                fractions=fractions.astype(np.float16), mask=np.ones((P, P, P), np.float32),
                source_protocol=MRProtocol(contrast="T1w"), target_protocol=MRProtocol(contrast="FLAIR"),
                brain_range=1.0)


class _Model:
    """Returns the given bases; the output is their mix by SIGNAL, the prior plus a learned
    correction ``drift`` (zero: the mix is the prior's)."""

    config = SimpleNamespace(feature_dim=None)
    uses_physics_mix = True

    def __init__(self, bases: np.ndarray, drift: np.ndarray | None = None) -> None:
        self.bases = torch.from_numpy(bases.astype(np.float32))[None]
        correction = torch.from_numpy(np.zeros_like(SIGNAL) if drift is None else drift.astype(np.float32))
        self.signal = torch.from_numpy(SIGNAL) + correction

    def encode(self, source, text, features):
        return SimpleNamespace(cond=None, mix_prior=torch.from_numpy(SIGNAL)[None])

    def mixing_weights(self, feats):
        return self.signal[None]

    def render_grid(self, feats, with_bases=False):
        out = (self.bases * self.signal[None, :, None, None, None]).sum(1, keepdim=True)
        return out, self.bases


def test_a_model_whose_bases_are_the_fractions_scores_perfectly() -> None:
    crop = _crop()
    row = crop_metrics(_Model(crop.fractions.astype(np.float32)), crop)
    assert row["target"] == "FLAIR" and row["lesion_voxels"] == 64
    assert all(row["basis_mae"][name] == pytest.approx(0.0, abs=1e-6) for name in BRAIN_TISSUES)
    assert row["lesion_basis_in_lesions"] == pytest.approx(1.0)
    assert row["lesion_wm_model"] == pytest.approx(2.0) == row["lesion_wm_truth"]
    assert row["lesion_basis_in_wm"] == pytest.approx(0.0) and row["lesion_basis_in_gm"] == pytest.approx(0.0)
    assert row["source_lesion_position"] == pytest.approx(0.25)    # (0.65 - 0.6) / (0.8 - 0.6)
    assert row["fractions_psnr"]["model_mix"] == row["fractions_psnr"]["prior"] == row["fractions_psnr"]["output"]
    assert row["fractions_psnr"]["prior"] > 60
    for name in ("csf", "gm", "wm"):
        pure = row["pure_bases"][name]
        assert pure[name] == pytest.approx(1.0) and pure["sum"] == pytest.approx(1.0)
        assert all(pure[other] == pytest.approx(0.0) for other in BRAIN_TISSUES if other != name)



def test_a_model_without_the_physics_mix_has_no_fractions_score() -> None:
    crop = _crop()
    model = _Model(crop.fractions.astype(np.float32))
    model.uses_physics_mix = False
    row = crop_metrics(model, crop)
    assert row["fractions_psnr"] is None and row["basis_mae"]["wm"] == pytest.approx(0.0, abs=1e-6)

def test_a_model_that_marks_grey_matter_as_lesion_is_caught() -> None:
    crop = _crop()
    bases = crop.fractions.astype(np.float32).copy()
    bases[TISSUES.index("lesion")][bases[TISSUES.index("gm")] > 0.5] = 0.4
    row = crop_metrics(_Model(bases), crop)
    assert row["lesion_basis_in_lesions"] == pytest.approx(1.0)
    assert row["lesion_basis_in_gm"] == pytest.approx(0.4) and row["lesion_basis_in_wm"] == pytest.approx(0.0)
    assert row["pure_bases"]["gm"]["lesion"] == pytest.approx(0.4)
    assert row["pure_bases"]["gm"]["sum"] == pytest.approx(1.4)
    assert row["pure_bases"]["wm"]["lesion"] == pytest.approx(0.0)


def test_a_model_whose_grey_matter_basis_falls_short_is_caught() -> None:
    crop = _crop()
    bases = crop.fractions.astype(np.float32).copy()
    bases[TISSUES.index("gm")] *= 0.65
    row = crop_metrics(_Model(bases), crop)
    assert row["pure_bases"]["gm"]["gm"] == pytest.approx(0.65)
    assert row["pure_bases"]["gm"]["sum"] == pytest.approx(0.65)
    assert row["pure_bases"]["csf"]["csf"] == pytest.approx(1.0)
    assert summarize([row])["pure_bases"]["gm"] == {"csf": 0.0, "gm": 0.65, "wm": 0.0, "lesion": 0.0,
                                                   "sum": 0.65, "crops": 1}


def test_bases_and_mix_that_drift_together_are_caught() -> None:
    crop = _crop()
    fractions = crop.fractions.astype(np.float32)
    gm = TISSUES.index("gm")
    drift = np.zeros_like(SIGNAL)
    drift[gm] = 0.35                             # the grey-matter weight raised by half ...
    bases = fractions.copy()
    bases[gm] *= SIGNAL[gm] / (SIGNAL[gm] + drift[gm])  # ... its basis lowered to match: same output
    row = crop_metrics(_Model(bases, drift), crop)
    psnr = row["fractions_psnr"]
    assert psnr["output"] > 60 and psnr["prior"] > 60
    assert psnr["model_mix"] < psnr["prior"] - 20
    assert row["pure_bases"]["gm"]["gm"] == pytest.approx(SIGNAL[gm] / (SIGNAL[gm] + drift[gm]))
    assert summarize([row])["fractions_psnr"]["model_mix"] == pytest.approx(psnr["model_mix"], abs=0.01)


def test_a_crop_without_grey_matter_reports_none_for_it() -> None:
    crop = _crop()
    fractions = crop.fractions.copy()
    fractions[TISSUES.index("gm")] = 0
    crop = Crop(**{**crop.__dict__, "fractions": fractions})
    row = crop_metrics(_Model(fractions.astype(np.float32)), crop)
    assert row["lesion_basis_in_gm"] is None and row["source_lesion_position"] is None
    out = summarize([row])
    assert out["lesion_basis_in_gm"] is None and out["crops_with_gm"] == 0


def test_a_model_that_paints_lesions_as_white_matter_is_caught() -> None:
    crop = _crop()
    bases = crop.fractions.astype(np.float32).copy()
    lesion = bases[TISSUES.index("lesion")] > 0.5
    bases[TISSUES.index("wm")][lesion] = 1.0
    bases[TISSUES.index("lesion")][lesion] = 0.0
    row = crop_metrics(_Model(bases), crop)
    assert row["lesion_basis_in_lesions"] == pytest.approx(0.0)
    assert row["lesion_wm_model"] == pytest.approx(1.0)
    assert row["lesion_wm_truth"] == pytest.approx(2.0)
    assert row["basis_mae"]["lesion"] == pytest.approx(64 / P**3)
    assert row["basis_mae"]["csf"] == pytest.approx(0.0, abs=1e-6)


def test_a_crop_without_enough_lesion_is_skipped() -> None:
    crop = _crop()
    fractions = crop.fractions.copy()
    fractions[TISSUES.index("lesion")] = 0
    crop = Crop(**{**crop.__dict__, "fractions": fractions})
    assert crop_metrics(_Model(fractions.astype(np.float32)), crop) is None


def test_summary_means_over_crops_and_groups_by_target() -> None:
    def row(target: str, basis: float, model: float) -> dict:
        return {"target": target, "basis_mae": dict.fromkeys(BRAIN_TISSUES, basis),
                "lesion_basis_in_lesions": basis, "lesion_basis_in_wm": 0.0,
                "lesion_basis_in_gm": None if target == "T2w" else basis / 2,
                "source_lesion_position": 0.5, "lesion_wm_model": model, "lesion_wm_truth": 2.0,
                "pure_bases": {"gm": {"csf": 0.0, "gm": basis, "wm": 0.0, "lesion": 0.0, "sum": basis}}}

    out = summarize([row("FLAIR", 0.2, 1.0), row("FLAIR", 0.4, 1.5), row("T2w", 0.6, 3.0)])
    assert out["crops"] == 3
    assert out["basis_mae"]["gm"] == pytest.approx(0.4)
    assert out["lesion_wm"]["FLAIR"] == {"model": 1.25, "truth": 2.0, "crops": 2}
    assert out["lesion_wm"]["T2w"]["model"] == 3.0
    assert out["lesion_basis_in_gm"] == pytest.approx(0.15) and out["crops_with_gm"] == 2   # T2w crop has none
    assert out["pure_bases"]["gm"]["gm"] == pytest.approx(0.4) and out["pure_bases"]["gm"]["crops"] == 3
    assert "wm" not in out["pure_bases"]


def test_held_out_subjects_have_lesions_and_are_not_phantoms() -> None:
    picked = lesion_subjects(3, min_lesions=10)
    assert len(picked) == 3
    for index in picked:
        edits = subject_edits(SPLIT_SEEDS["validation"][index])
        assert edits.lesions >= 10 and not edits.phantom
    with pytest.raises(ValueError):
        lesion_subjects(2, min_lesions=1000)
