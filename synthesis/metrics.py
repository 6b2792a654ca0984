"""Image-quality metrics as the synthesis literature reports them.

Both volumes are normalized by their own 0.5–99.5 percentiles inside the
brain mask to [0, 1]; PSNR, 3-D SSIM (Gaussian window 11, sigma 1.5) and MAE
are then computed inside the mask.

Also, in the units the model writes (brain-relative: the truth divided by its brain
99.5th percentile): :func:`brain_relative_rmse`, and the tissue contrast ratios of
:func:`contrast_ratios` (means over voxels that are more than 90% one tissue).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Scores", "normalize_in_mask", "psnr", "ssim3d", "mae", "score", "brain_relative_rmse",
           "tissue_means", "contrast_ratios", "error_split", "RATIOS"]


@dataclass(frozen=True)
class Scores:
    psnr: float
    ssim: float
    mae: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def normalize_in_mask(volume: np.ndarray, mask: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> np.ndarray:
    """Map the ``lo``/``hi`` percentiles inside ``mask`` to 0/1 and clip to [0, 1]."""
    values = volume[mask]
    if values.size == 0:
        raise ValueError("The brain mask is empty; metrics need at least one voxel inside it.")
    p_lo, p_hi = np.percentile(values, [lo, hi])
    scale = max(float(p_hi - p_lo), 1e-8)
    return np.clip((volume.astype(np.float32) - p_lo) / scale, 0.0, 1.0)


def psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB on the [0, 1] scale inside ``mask``."""
    mse = float(np.mean((pred[mask] - truth[mask]) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def mae(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error on the [0, 1] scale inside ``mask``."""
    return float(np.mean(np.abs(pred[mask] - truth[mask])))


def ssim3d(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, *, sigma: float = 1.5,
           window: int = 11, data_range: float = 1.0) -> float:
    """Mean 3-D SSIM inside ``mask`` (Gaussian window of ``window`` voxels, ``sigma``)."""
    truncate = ((window - 1) / 2) / sigma
    blur = lambda a: ndimage.gaussian_filter(a, sigma, truncate=truncate, mode="reflect")  # noqa: E731
    x = pred.astype(np.float64)
    y = truth.astype(np.float64)
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map[mask].mean())


def score(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> Scores:
    """All three metrics after percentile normalization of each volume inside ``mask``.

    pred, truth: (D, H, W) on the same grid; mask: (D, H, W) bool.
    """
    if pred.shape != truth.shape or truth.shape != mask.shape:
        raise ValueError(
            f"pred, truth and mask must have one shape. Found {pred.shape}, {truth.shape}, {mask.shape}."
        )
    mask = mask.astype(bool)
    p = normalize_in_mask(pred, mask)
    t = normalize_in_mask(truth, mask)
    return Scores(psnr=psnr(p, t, mask), ssim=ssim3d(p, t, mask), mae=mae(p, t, mask))


#: Contrast ratios reported per case: name -> (numerator tissue, denominator tissue).
RATIOS = {"GM/WM": ("gm", "wm"), "CSF/GM": ("csf", "gm"), "lesion/WM": ("lesion", "wm")}


def brain_relative_rmse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """RMSE inside ``mask`` in % of the truth's brain 99.5th percentile.

    ``truth`` is divided by its 99.5th percentile inside ``mask``; ``pred`` is taken as it is,
    in brain-relative units (the Synthesizer's output units), so a wrong overall scale counts.
    """
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("The brain mask is empty; the RMSE needs at least one voxel inside it.")
    hi = max(float(np.percentile(truth[mask], 99.5)), 1e-12)
    diff = pred[mask].astype(np.float64) - truth[mask].astype(np.float64) / hi
    return float(100.0 * np.sqrt(np.mean(diff * diff)))


def tissue_means(volume: np.ndarray, tissues: dict[str, np.ndarray], mask: np.ndarray,
                 purity: float = 0.9, min_voxels: int = 20) -> dict[str, float | None]:
    """Mean of ``volume`` over the voxels inside ``mask`` whose fraction of each tissue exceeds
    ``purity`` (None where fewer than ``min_voxels`` such voxels exist)."""
    out: dict[str, float | None] = {}
    for name, fraction in tissues.items():
        pure = mask & (np.asarray(fraction, dtype=np.float32) > purity)
        out[name] = float(volume[pure].mean()) if int(pure.sum()) >= min_voxels else None
    return out


def contrast_ratios(volume: np.ndarray, tissues: dict[str, np.ndarray], mask: np.ndarray
                    ) -> dict[str, float | None]:
    """:data:`RATIOS` of the tissue means of ``volume`` (None where a tissue is missing or 0)."""
    means = tissue_means(volume, tissues, mask.astype(bool))
    out: dict[str, float | None] = {}
    for name, (num, den) in RATIOS.items():
        a, b = means.get(num), means.get(den)
        out[name] = float(a / b) if a is not None and b not in (None, 0.0) else None
    return out


def error_split(pred: np.ndarray, truth: np.ndarray, tissues: dict[str, np.ndarray], mask: np.ndarray,
                purity: float = 0.9) -> dict[str, float] | None:
    """Where the squared error lies: in voxels that are more than ``purity`` one tissue
    (*pure*) or in the rest (*partial*: a tissue boundary or a mixture), both volumes
    normalized as :func:`score` does. Returns the share of the brain's voxels that are
    partial (``partial_voxels``), their share of the squared error (``partial_error``) and
    the RMSE in each kind (``pure_rmse``, ``partial_rmse``; None where a kind is empty);
    None when the squared error is 0."""
    mask = mask.astype(bool)
    top = np.max(np.stack([np.asarray(f, dtype=np.float32) for f in tissues.values()]), axis=0)
    partial = mask & (top <= purity)
    pure = mask & ~partial
    err = (normalize_in_mask(pred, mask) - normalize_in_mask(truth, mask)) ** 2
    total = float(err[mask].sum())
    if total <= 0.0:
        return None

    def rmse(kind: np.ndarray) -> float | None:
        return float(np.sqrt(err[kind].mean())) if kind.any() else None

    return {"partial_voxels": float(partial.sum() / mask.sum()), "partial_error": float(err[partial].sum() / total),
            "pure_rmse": rmse(pure), "partial_rmse": rmse(partial)}
