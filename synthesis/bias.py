"""N4 bias-field correction of a source volume (SimpleITK), before normalization.

A receive coil's smooth intensity non-uniformity ("bias field") makes the same
tissue brighter near the coil than far from it; the network was trained on
sources with mild bias only. :func:`n4_correct` estimates the field with N4
(Tustison et al., IEEE TMI 2010) on a shrunk copy of the volume inside the head
mask, rebuilds the log field at full resolution and divides it out. Optional in
the :class:`~synthesis.Synthesizer` (``bias_correction=True``); it costs
seconds (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from synthesis import grid, intensity

__all__ = ["n4_correct"]

logger = logging.getLogger(__name__)

_MIN_SHRUNK = 8  # the shrunk volume keeps at least this many voxels per axis


def _shrink_factors(shape: Sequence[int], spacing: Sequence[float], shrink: int) -> list[int]:
    """Per-axis shrink factors ``(z, y, x)``: ``shrink`` voxels of the finest axis, no axis
    under ``_MIN_SHRUNK`` voxels, at least 1."""
    finest = min(spacing)
    factors = []
    for n, sp in zip(shape, spacing):
        f = max(1, int(round(shrink * finest / sp)))
        factors.append(max(1, min(f, n // _MIN_SHRUNK)))
    return factors


def n4_correct(volume: np.ndarray, spacing: Sequence[float], *, shrink: int = 4,
               iterations: Sequence[int] = (50, 50, 30)) -> np.ndarray:
    """``volume`` divided by its N4-estimated bias field, float32 ``(z, y, x)`` like the input.

    ``spacing``: ``(dz, dy, dx)`` mm. ``shrink``: the field is fitted on a copy shrunk by
    this many voxels of the finest axis (thicker axes less). ``iterations``: the
    maximum iterations per fitting level (one level per entry; the B-spline control
    grid doubles at each). The mask is :func:`synthesis.intensity.head_mask`; air keeps
    its values divided by the (smooth, extrapolated) field. Raises ``ValueError`` for a
    volume with no usable signal or bad arguments.
    """
    import SimpleITK as sitk

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x). Found shape {volume.shape}.")
    grid.working_spacing(spacing)  # validates spacing
    sp = tuple(float(s) for s in spacing)
    if isinstance(shrink, bool) or int(shrink) < 1:
        raise ValueError(f"shrink must be an integer >= 1. Found {shrink!r}.")
    levels = [int(n) for n in iterations]
    if not levels or min(levels) < 1:
        raise ValueError(f"iterations must be one or more positive integers. Found {iterations!r}.")
    started = time.perf_counter()
    mask = intensity.head_mask(volume)  # raises for a blank volume
    head = volume[mask]
    if head.max() <= head.min():
        raise ValueError(f"The volume's head intensities are constant ({head.min():.4g}); "
                         "there is no bias field to correct.")
    image = sitk.GetImageFromArray(np.maximum(volume, 0.0))  # sitk axes are (x, y, z)
    image.SetSpacing(sp[::-1])
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    factors = _shrink_factors(volume.shape, sp, int(shrink))[::-1]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(levels)
    corrector.Execute(sitk.Shrink(image, factors), sitk.Shrink(mask_image, factors))
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    out = volume / np.exp(log_field, dtype=np.float32)
    logger.info("N4 bias correction of %s in %.1f s (field %.2f-%.2f in the head)", volume.shape,
                time.perf_counter() - started, float(np.exp(log_field[mask].min())),
                float(np.exp(log_field[mask].max())))
    return out.astype(np.float32, copy=False)
