"""Source intensity normalization that does not depend on the field of view.

A whole-volume percentile scale depends on what lies around the brain: scalp
fat, a neck, or nothing at all (a skull-stripped image) move the 99.5th
percentile and with it every brain intensity. The *tissue peak* does not: it
is the tallest mode of the intensity histogram of the head's *core* (voxels at
least :data:`CORE_DEPTH_MM` inside the head's outer surface, or the deeper half
of the head when it is smaller) above the core's median intensity. That is
white matter on a T1-weighted image and brain parenchyma on the other
contrasts, whatever surrounds the brain: the core of a head with its scalp is
brain, and so is the core of a skull-stripped one. The whole head's histogram
is not enough: on an MPRAGE with 1.6x white matter fat, the scalp's fat mode
outgrows white matter's (measured on the simulated heads). The source is
scaled so that peak lands on :data:`PEAK_LEVEL`; air stays 0.

The same function runs in training (:mod:`synthesis.data`) and inference
(:class:`synthesis.Synthesizer`), so the network always sees the same units.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["PEAK_LEVEL", "SOURCE_MAX", "CORE_DEPTH_MM", "head_mask", "head_core", "tissue_peak",
           "normalize_source", "scale_source"]

logger = logging.getLogger(__name__)

PEAK_LEVEL = 0.75   # where the tissue peak lands
SOURCE_MAX = 2.0    # normalized source intensities are clipped to [0, SOURCE_MAX]
CORE_DEPTH_MM = 20.0  # the head's core: deeper than this below its outer surface (scalp + skull ~ 15 mm)
_BINS = 256
_MAX_SAMPLES = 2_000_000
_MIN_HEAD_VOXELS = 1000  # fewer head voxels than this (or than 5% of a small volume): no usable signal


def _stride(volume: np.ndarray) -> int:
    """The step of a regular subsample with at most ~2 M voxels."""
    return max(1, int(np.ceil((volume.size / _MAX_SAMPLES) ** (1 / 3))))


def _sample(volume: np.ndarray) -> np.ndarray:
    """A regular subsample of the voxels (at most ~2 M), float32, for histograms."""
    stride = _stride(volume)
    return np.asarray(volume[::stride, ::stride, ::stride], dtype=np.float32)


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels brighter than a tenth of the 99th percentile: the head without the air, bool
    (``volume``'s shape). Raises ``ValueError`` for a volume with no usable signal."""
    return np.asarray(volume) > _signal_threshold(_sample(volume))


def _signal_threshold(values: np.ndarray) -> float:
    """A tenth of the 99th percentile of ``values`` (a subsample): the head/air threshold.

    Raises ``ValueError`` when the volume has no usable signal: not finite, all
    zero or negative, or fewer head voxels than ``min(1000, 5% of the voxels)``.
    """
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("The volume must be finite and non-empty to normalize it.")
    top = float(np.percentile(values, 99.0))
    n_head = int(np.count_nonzero(values > 0.1 * top)) if top > 0 else 0
    if n_head < min(_MIN_HEAD_VOXELS, 0.05 * values.size):
        raise ValueError(f"The volume has no usable signal: {n_head} voxels above a tenth of its "
                         f"99th percentile ({top:.4g}).")
    return 0.1 * top


def head_core(volume: np.ndarray, spacing: Sequence[float] | None = None, *,
              core_depth_mm: float = CORE_DEPTH_MM) -> tuple[np.ndarray, np.ndarray]:
    """``(values, core)`` on a regular subsample of ``volume``: the float32 subsample and a bool
    mask of its head core (head voxels at least ``min(core_depth_mm, median head depth)`` below
    the head's outer surface; dark inner tissues such as skull count as head, and the
    field-of-view border is not a surface). ``spacing``: ``(dz, dy, dx)`` mm, default 1 mm.
    Raises ``ValueError`` for a volume with no usable signal (see :func:`tissue_peak`)."""
    stride = _stride(volume)
    values = np.asarray(volume[::stride, ::stride, ::stride], dtype=np.float32)
    threshold = _signal_threshold(values)
    head = _head_body(values > threshold)
    sampling = [stride * float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0))]
    depth = ndimage.distance_transform_edt(head, sampling=sampling)
    cut = min(float(core_depth_mm), float(np.median(depth[head])))
    return values, head & (depth >= cut) & (values > threshold)


def _head_body(lit: np.ndarray) -> np.ndarray:
    """The head in a thresholded subsample: its largest connected part after an opening (noise
    voxels above the threshold, scattered in the air of a low-SNR image, are neither part of
    it nor do they make its surface), holes filled. ``lit`` itself when the opening leaves
    nothing (a tiny or very thin object)."""
    solid = ndimage.binary_opening(lit)
    labels, count = ndimage.label(solid)
    if count == 0:
        return ndimage.binary_fill_holes(lit)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def tissue_peak(volume: np.ndarray, spacing: Sequence[float] | None = None, *,
                core_depth_mm: float = CORE_DEPTH_MM) -> float:
    """The intensity of the tallest histogram mode of the head's core above the core's median
    (see the module), in the volume's units. ``spacing``: ``(dz, dy, dx)`` mm, default 1 mm;
    ``core_depth_mm``: see :func:`head_core` (0: the whole head).

    Raises ``ValueError`` for a volume with no usable signal (blank, constant, or fewer than
    ``min(1000, 5% of the voxels)`` head voxels), so a blank series is refused, not scaled.
    """
    values, core = head_core(volume, spacing, core_depth_mm=core_depth_mm)
    lit = values[values > _signal_threshold(values)]
    if lit.max() <= lit.min():
        raise ValueError(f"The volume's head intensities are constant ({lit.min():.4g}); nothing to normalize.")
    tissue = values[core]
    median, upper = (float(v) for v in np.percentile(tissue, [50.0, 99.5]))
    if upper <= median:  # a core of one intensity (a piecewise-constant phantom): that is its peak
        return median
    counts, edges = np.histogram(tissue, bins=_BINS, range=(0.0, upper))
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0)
    centres = 0.5 * (edges[:-1] + edges[1:])
    best = int(np.argmax(np.where(centres >= median, smooth, -1.0)))
    return float(centres[best])


def scale_source(volume: np.ndarray, peak: float) -> np.ndarray:
    """``volume`` scaled so ``peak`` maps to :data:`PEAK_LEVEL`, clipped to ``[0, SOURCE_MAX]``, float32."""
    if not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be a finite positive intensity. Found {peak!r}.")
    out = np.asarray(volume, dtype=np.float32) * np.float32(PEAK_LEVEL / peak)
    np.clip(out, 0.0, SOURCE_MAX, out=out)
    return out


def normalize_source(volume: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[np.ndarray, float]:
    """``(scale_source(volume, peak), peak)`` with the volume's own :func:`tissue_peak`."""
    peak = tissue_peak(volume, spacing)
    return scale_source(volume, peak), peak
