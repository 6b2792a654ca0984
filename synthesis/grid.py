"""Grids, resampling and intensity normalization (pure functions, shared with training).

Volumes are numpy arrays indexed ``(z, y, x)``; spacings are ``(dz, dy, dx)``
in mm. A resampled grid covers the same field of view edge to edge: along an
axis ``n_out = round(n_in * sp_in / sp_out)`` and the first output centre lies
``0.5 * (sp_out - sp_in)`` mm from the first input centre.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "ANISOTROPY_LIMIT",
    "working_spacing",
    "output_shape",
    "axis_coords",
    "output_coords",
    "origin_offset_mm",
    "resample",
    "percentile_normalize",
]

logger = logging.getLogger(__name__)

ANISOTROPY_LIMIT = 1.5  # axes coarser than this times the finest one are resampled


def _spacing(name: str, spacing: Sequence[float]) -> tuple[float, float, float]:
    """Validate a ``(dz, dy, dx)`` spacing in mm."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (dz, dy, dx) in mm. Found {tuple(spacing)!r}.")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name} must be finite and > 0 mm. Found {values!r}.")
    return values  # type: ignore[return-value]


def working_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """The spacing the network runs on: axes coarser than 1.5x the finest axis take the finest spacing."""
    sp = _spacing("spacing", spacing)
    finest = min(sp)
    return tuple(finest if s > ANISOTROPY_LIMIT * finest else s for s in sp)  # type: ignore[return-value]


def output_shape(in_shape: Sequence[int], in_spacing: Sequence[float],
                 out_spacing: Sequence[float]) -> tuple[int, int, int]:
    """``round(n_in * sp_in / sp_out)`` per axis (at least 1)."""
    sp_in, sp_out = _spacing("in_spacing", in_spacing), _spacing("out_spacing", out_spacing)
    return tuple(max(1, int(round(n * a / b))) for n, a, b in zip(in_shape, sp_in, sp_out))  # type: ignore[return-value]


def axis_coords(n_out: int, sp_in: float, sp_out: float) -> np.ndarray:
    """Continuous input-voxel coordinates of ``n_out`` output centres along one axis, float64.

    Output centre ``j`` lies at ``(j + 0.5) * sp_out / sp_in - 0.5`` input voxels.
    """
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (sp_out / sp_in) - 0.5


def output_coords(in_shape: Sequence[int], in_spacing: Sequence[float],
                  out_spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis continuous input-voxel coordinates ``(z, y, x)`` of the output grid centres."""
    shape = output_shape(in_shape, in_spacing, out_spacing)
    sp_in, sp_out = _spacing("in_spacing", in_spacing), _spacing("out_spacing", out_spacing)
    return tuple(axis_coords(n, a, b) for n, a, b in zip(shape, sp_in, sp_out))  # type: ignore[return-value]


def origin_offset_mm(in_spacing: Sequence[float], out_spacing: Sequence[float]) -> tuple[float, float, float]:
    """Output voxel (0,0,0) centre minus input voxel (0,0,0) centre, in mm per axis."""
    sp_in, sp_out = _spacing("in_spacing", in_spacing), _spacing("out_spacing", out_spacing)
    return tuple(0.5 * (b - a) for a, b in zip(sp_in, sp_out))  # type: ignore[return-value]


def resample(volume: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float],
             order: int = 1) -> np.ndarray:
    """Resample ``volume (z, y, x)`` from ``spacing`` to ``new_spacing`` (mm), same field of view.

    ``order`` is the spline order (0 nearest, 1 linear, 3 cubic). Edges are
    clamped. No anti-aliasing: blur first when making an axis coarser.
    Returns float32 (order > 0) or the input dtype (order 0).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x). Found shape {volume.shape}.")
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"order must be a spline order 0-5. Found {order!r}.")
    sp_in, sp_out = _spacing("spacing", spacing), _spacing("new_spacing", new_spacing)
    shape = output_shape(volume.shape, sp_in, sp_out)
    if shape == volume.shape and np.allclose(sp_in, sp_out):
        return volume.astype(np.float32) if order > 0 else volume.copy()
    scale = [b / a for a, b in zip(sp_in, sp_out)]
    offset = [0.5 * s - 0.5 for s in scale]
    source = volume.astype(np.float32) if order > 0 else volume
    return ndimage.affine_transform(
        source, np.asarray(scale), offset=offset, output_shape=shape, order=order, mode="nearest",
        prefilter=order > 1,
    )


def percentile_normalize(volume: np.ndarray, mask: np.ndarray | None = None, lo: float = 0.5,
                         hi: float = 99.5, *, margin: float = 0.5) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the ``lo``/``hi`` percentiles (inside ``mask`` if given) to 0 and 1.

    Values below 0 are clipped to 0; values above 1 are kept up to ``1 + margin``.
    Returns ``(float32 volume, (p_lo, p_hi))``. A volume with ``p_hi == p_lo``
    maps to zeros.
    """
    volume = np.asarray(volume)
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100. Found lo={lo}, hi={hi}.")
    if margin < 0:
        raise ValueError(f"margin must be >= 0. Found {margin}.")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != volume.shape:
            raise ValueError(f"mask shape must equal volume shape {volume.shape}. Found {mask.shape}.")
        if not mask.any():
            raise ValueError("mask selects no voxel; percentiles need at least one.")
        values = volume[mask]
    else:
        values = volume.ravel()
    p_lo, p_hi = (float(v) for v in np.percentile(values, [lo, hi]))
    out = volume.astype(np.float32)  # copy
    if p_hi > p_lo:
        out -= np.float32(p_lo)
        out *= np.float32(1.0 / (p_hi - p_lo))
        np.clip(out, 0.0, 1.0 + margin, out=out)
    else:
        logger.warning("Constant intensities within the percentile range; the volume maps to zeros.")
        out[...] = 0.0
    return out, (p_lo, p_hi)
