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
    "scale_to_range",
    "WORKING_SPACING_MM",
    "working_spacing",
    "default_output_spacing",
    "resample_antialiased",
    "output_shape",
    "axis_coords",
    "origin_offset_mm",
    "resample",
    "percentile_normalize",
    "plan_tiles",
    "blend_weights",
]

logger = logging.getLogger(__name__)

ANISOTROPY_LIMIT = 1.5  # output axes coarser than this times the finest one take the finest spacing
WORKING_SPACING_MM = 1.0  # the network's grid
WORKING_TOLERANCE = 0.1   # an input axis this close to 1 mm (relative) is not resampled


def _spacing(name: str, spacing: Sequence[float]) -> tuple[float, float, float]:
    """Validate a ``(dz, dy, dx)`` spacing in mm."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (dz, dy, dx) in mm. Found {tuple(spacing)!r}.")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{name} must be finite and > 0 mm. Found {values!r}.")
    return values  # type: ignore[return-value]


def working_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """The spacing the network runs on: ~1 mm whatever the input spacing.

    An axis within ``WORKING_TOLERANCE`` of :data:`WORKING_SPACING_MM` keeps its own
    spacing (no resampling of a 1 mm scan); every other axis takes exactly 1 mm. A
    0.45 mm scan is anti-aliased down to 1 mm and a 5 mm one interpolated up; the
    implicit decoder then writes whatever output grid is asked for.
    """
    sp = _spacing("spacing", spacing)
    return tuple(s if abs(s - WORKING_SPACING_MM) <= WORKING_TOLERANCE * WORKING_SPACING_MM
                 else WORKING_SPACING_MM for s in sp)  # type: ignore[return-value]


def default_output_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """The output grid when none is asked for: axes coarser than 1.5x the finest axis take
    the finest spacing (a 1 x 1 x 5 mm scan gives 1 mm isotropic); the others keep theirs."""
    sp = _spacing("spacing", spacing)
    finest = min(sp)
    return tuple(finest if s > ANISOTROPY_LIMIT * finest else s for s in sp)  # type: ignore[return-value]


def output_shape(in_shape: Sequence[int], in_spacing: Sequence[float],
                 out_spacing: Sequence[float]) -> tuple[int, int, int]:
    """``round(n_in * sp_in / sp_out)`` per axis (at least 1)."""
    sp_in, sp_out = _spacing("in_spacing", in_spacing), _spacing("out_spacing", out_spacing)
    shape = tuple(max(1, int(round(n * a / b))) for n, a, b in zip(in_shape, sp_in, sp_out))
    return shape  # type: ignore[return-value]


def axis_coords(n_out: int, sp_in: float, sp_out: float) -> np.ndarray:
    """Continuous input-voxel coordinates of ``n_out`` output centres along one axis, float64.

    Output centre ``j`` lies at ``(j + 0.5) * sp_out / sp_in - 0.5`` input voxels.
    """
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (sp_out / sp_in) - 0.5


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


def resample_antialiased(volume: np.ndarray, spacing: Sequence[float],
                         new_spacing: Sequence[float]) -> np.ndarray:
    """:func:`resample` (same grid convention, linear) with SimpleITK, after a Gaussian
    anti-aliasing blur along every axis made coarser (sigma ``0.5 * sqrt(f^2 - 1)`` input
    voxels for a factor ``f``), float32. Axes made finer are interpolated as they are."""
    import SimpleITK as sitk

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D (z, y, x). Found shape {volume.shape}.")
    sp_in, sp_out = _spacing("spacing", spacing), _spacing("new_spacing", new_spacing)
    shape = output_shape(volume.shape, sp_in, sp_out)
    if shape == volume.shape and np.allclose(sp_in, sp_out):
        return volume.copy()
    image = sitk.GetImageFromArray(volume)          # sitk axes are (x, y, z)
    image.SetSpacing(sp_in[::-1])
    sigma_mm = [0.5 * a * math.sqrt(max((b / a) ** 2 - 1.0, 0.0)) for a, b in zip(sp_in, sp_out)]
    if max(sigma_mm) > 0:
        # a tiny sigma on the untouched axes: the filter wants one positive sigma per axis
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigma_mm[::-1]])
    origin = [0.5 * (b - a) for a, b in zip(sp_in, sp_out)]
    out = sitk.Resample(image, list(shape[::-1]), sitk.Transform(), sitk.sitkLinear, origin[::-1],
                        sp_out[::-1], image.GetDirection(), 0.0, sitk.sitkFloat32, True)
    return sitk.GetArrayFromImage(out)


def scale_to_range(volume: np.ndarray, p_lo: float, p_hi: float, *, margin: float = 0.5) -> np.ndarray:
    """Map ``p_lo``/``p_hi`` to 0/1, clip to ``[0, 1 + margin]``; float32 copy (zeros if ``p_hi <= p_lo``)."""
    out = np.asarray(volume).astype(np.float32)  # copy
    if p_hi > p_lo:
        out -= np.float32(p_lo)
        out *= np.float32(1.0 / (p_hi - p_lo))
        np.clip(out, 0.0, 1.0 + margin, out=out)
    else:
        out[...] = 0.0
    return out


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
    if p_hi <= p_lo:
        logger.warning("Constant intensities within the percentile range; the volume maps to zeros.")
    out = scale_to_range(volume, p_lo, p_hi, margin=margin)
    return out, (p_lo, p_hi)


# -- tiles ----------------------------------------------------------------
def plan_tiles(shape: Sequence[int], max_voxels: int, multiple: int,
               overlap: int) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """Overlapping tiles covering ``shape``: a list of ``(start, size)`` per tile, ``(z, y, x)``.

    Tile sizes are multiples of ``multiple`` (or the whole axis) and their
    padded volume stays within ``max_voxels`` where possible; neighbouring
    tiles share at least ``overlap`` voxels.
    """
    if max_voxels < 1 or multiple < 1 or overlap < 0:
        raise ValueError(
            f"plan_tiles needs max_voxels >= 1, multiple >= 1, overlap >= 0. "
            f"Found {max_voxels}, {multiple}, {overlap}."
        )
    padded = [math.ceil(n / multiple) * multiple for n in shape]
    size = list(padded)
    smallest = max(multiple, math.ceil((2 * overlap + 1) / multiple) * multiple)
    while math.prod(size) > max_voxels:
        shrinkable = [a for a in range(3) if size[a] - multiple >= smallest]
        if not shrinkable:
            logger.warning("Tile budget %d voxels too small; using tiles of %s.", max_voxels, size)
            break
        axis = max(shrinkable, key=lambda a: size[a])
        size[axis] -= multiple
    starts_per_axis = []
    for n, t in zip(shape, size):
        t = min(t, n)
        if t >= n:
            starts_per_axis.append([(0, n)])
            continue
        count = math.ceil((n - overlap) / max(1, t - overlap))
        starts = np.round(np.linspace(0, n - t, max(count, 2))).astype(int)
        starts_per_axis.append([(int(s), t) for s in starts])
    return [
        ((z[0], y[0], x[0]), (z[1], y[1], x[1]))
        for z in starts_per_axis[0] for y in starts_per_axis[1] for x in starts_per_axis[2]
    ]


def _ramp(start: int, size: int, total: int, overlap: int) -> np.ndarray:
    """1-D weights of one tile: raised-cosine ramps on the sides shared with a neighbour."""
    w = np.ones(size, dtype=np.float32)
    width = min(overlap, size // 2)
    if width < 1:
        return w
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width, dtype=np.float32) + 0.5) / width)
    if start > 0:
        w[:width] = ramp
    if start + size < total:
        w[size - width:] = np.minimum(w[size - width:], ramp[::-1])
    return w


def blend_weights(start: Sequence[int], size: Sequence[int], shape: Sequence[int],
                  overlap: int) -> np.ndarray:
    """Smooth blending weights ``(z, y, x)`` float32 of a tile; positive everywhere.

    Weights fall towards the faces shared with another tile (raised cosine over
    ``overlap`` voxels) and stay 1 at the volume's own faces.
    """
    wz, wy, wx = (_ramp(s, n, t, overlap) for s, n, t in zip(start, size, shape))
    return wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
