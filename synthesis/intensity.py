"""Source intensity normalization that does not depend on the field of view.

A whole-volume percentile scale depends on what lies around the brain: scalp
fat, a neck, or nothing at all (a skull-stripped image) move the 99.5th
percentile and with it every brain intensity. The *tissue peak* does not: it
is the tallest mode of the head's intensity histogram above the head's median
intensity, which is white matter on a T1-weighted image (the largest
homogeneous tissue; fat lies in thin, partial-volumed layers and its mode is
low and broad), and brain parenchyma on the other contrasts. The source is
scaled so that peak lands on :data:`PEAK_LEVEL`; air stays 0.

The same function runs in training (:mod:`synthesis.data`) and inference
(:class:`synthesis.Synthesizer`), so the network always sees the same units.
"""
from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

__all__ = ["PEAK_LEVEL", "SOURCE_MAX", "head_mask", "tissue_peak", "normalize_source", "scale_source"]

logger = logging.getLogger(__name__)

PEAK_LEVEL = 0.75   # where the tissue peak lands
SOURCE_MAX = 2.0    # normalized source intensities are clipped to [0, SOURCE_MAX]
_BINS = 256
_MAX_SAMPLES = 2_000_000


def _sample(volume: np.ndarray) -> np.ndarray:
    """A regular subsample of the voxels (at most ~2 M), float32, for histograms."""
    stride = max(1, int(np.ceil((volume.size / _MAX_SAMPLES) ** (1 / 3))))
    return np.asarray(volume[::stride, ::stride, ::stride], dtype=np.float32)


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels brighter than a tenth of the 99th percentile: the head without the air, bool."""
    values = _sample(volume)
    top = float(np.percentile(values, 99.0))
    return np.asarray(volume) > 0.1 * top


def tissue_peak(volume: np.ndarray) -> float:
    """The intensity of the tallest histogram mode above the head's median (see the module).

    Raises ``ValueError`` for a volume with no usable signal (all voxels equal,
    or fewer than 1000 head voxels), so a blank series is refused, not scaled.
    """
    values = _sample(volume)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("tissue_peak needs a finite, non-empty volume.")
    top = float(np.percentile(values, 99.0))
    head = values[values > 0.1 * top]
    if top <= 0 or head.size < 1000:
        raise ValueError(f"The volume has no usable signal: {head.size} voxels above a tenth of its "
                         f"99th percentile ({top:.4g}).")
    median, upper = (float(v) for v in np.percentile(head, [50.0, 99.5]))
    if upper <= median:
        raise ValueError(f"The volume's head intensities are constant ({median:.4g}); nothing to normalize.")
    counts, edges = np.histogram(head, bins=_BINS, range=(0.0, upper))
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0)
    centres = 0.5 * (edges[:-1] + edges[1:])
    above = centres >= median
    best = int(np.argmax(np.where(above, smooth, -1.0)))
    return float(centres[best])


def scale_source(volume: np.ndarray, peak: float) -> np.ndarray:
    """``volume`` scaled so ``peak`` maps to :data:`PEAK_LEVEL`, clipped to ``[0, SOURCE_MAX]``, float32."""
    if not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be a finite positive intensity. Found {peak!r}.")
    out = np.asarray(volume, dtype=np.float32) * np.float32(PEAK_LEVEL / peak)
    np.clip(out, 0.0, SOURCE_MAX, out=out)
    return out


def normalize_source(volume: np.ndarray) -> tuple[np.ndarray, float]:
    """``(scale_source(volume, peak), peak)`` with the volume's own :func:`tissue_peak`."""
    peak = tissue_peak(volume)
    return scale_source(volume, peak), peak
