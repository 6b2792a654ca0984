"""Thumbnails for the status page: the middle slice of a series as a small grey PNG.

For display only. A classic series is sorted along its slice normal (Image Position
Patient projected on the row x column direction) and only the middle file's pixels
are decoded; a multi-frame instance (Enhanced MR, Parametric Map) gives its middle
frame, sorted the same way when the per-frame positions are present. Pixels only:
no text is drawn, so no header value (and no patient data) reaches the image.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydicom import dcmread
from pydicom.pixels import apply_rescale

__all__ = ["middle_slice", "thumbnail_png", "THUMBNAIL_SIZE"]

logger = logging.getLogger(__name__)
THUMBNAIL_SIZE = 128  # pixels, the longer side


def _normal(orientation: Any) -> np.ndarray | None:
    try:
        values = np.asarray([float(v) for v in orientation], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return np.cross(values[:3], values[3:]) if values.size == 6 else None


def _position_along(normal: np.ndarray | None, position: Any, fallback: float) -> float:
    if normal is None or position is None:
        return fallback
    try:
        return float(np.dot(normal, [float(v) for v in position]))
    except (TypeError, ValueError):
        return fallback


def _middle_frame_index(ds: Any, n_frames: int) -> int:
    """The frame in the middle along the slice normal (index order when unknown)."""
    try:
        shared = ds.SharedFunctionalGroupsSequence[0]
        normal = _normal(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
        frames = ds.PerFrameFunctionalGroupsSequence
        keys = [_position_along(normal, f.PlanePositionSequence[0].ImagePositionPatient, i)
                for i, f in enumerate(frames)]
    except (AttributeError, IndexError, KeyError):
        return n_frames // 2
    order = np.argsort(keys, kind="stable")
    return int(order[len(order) // 2])


def _frame_rescale(ds: Any, index: int) -> tuple[float, float]:
    """(slope, intercept) of one frame: its Pixel Value Transformation (per frame, else
    shared), else the top-level Rescale Slope/Intercept, else identity."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index),
                      ("SharedFunctionalGroupsSequence", 0)):
        try:
            item = getattr(ds, groups)[i].PixelValueTransformationSequence[0]
            return float(item.RescaleSlope), float(item.RescaleIntercept)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            continue
    return float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0))


def middle_slice(files: Sequence[Path]) -> tuple[np.ndarray, float]:
    """The middle slice of a series, ``(image (rows, columns) float32, aspect)``, with the
    modality rescale applied; ``aspect`` = row spacing / column spacing."""
    if not files:
        raise ValueError("middle_slice needs at least one file. Found none.")
    headers = [(Path(f), dcmread(f, stop_before_pixels=True)) for f in files]
    first = headers[0][1]
    n_frames = int(getattr(first, "NumberOfFrames", 1) or 1)
    if len(headers) == 1 and n_frames > 1:
        ds = dcmread(headers[0][0])
        index = _middle_frame_index(ds, n_frames)
        slope, intercept = _frame_rescale(ds, index)
        image = np.asarray(ds.pixel_array[index], dtype=np.float32) * slope + intercept
        spacing = _spacing(ds, multi_frame=True)
    else:
        normal = _normal(getattr(first, "ImageOrientationPatient", None))
        keyed = sorted(headers, key=lambda h: _position_along(
            normal, getattr(h[1], "ImagePositionPatient", None),
            float(getattr(h[1], "InstanceNumber", 0) or 0)))
        ds = dcmread(keyed[len(keyed) // 2][0])
        image = np.asarray(apply_rescale(ds.pixel_array, ds), dtype=np.float32)
        spacing = _spacing(ds, multi_frame=False)
    if image.ndim != 2:
        raise ValueError(f"a slice must be one grey image (rows, columns). Found shape "
                         f"{image.shape}.")
    return image, spacing[0] / spacing[1]


def _spacing(ds: Any, *, multi_frame: bool) -> tuple[float, float]:
    """(row spacing, column spacing) mm; (1, 1) when the file does not say."""
    try:
        source = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0] \
            if multi_frame else ds
        rows, cols = (float(v) for v in source.PixelSpacing)
        return (rows, cols) if rows > 0 and cols > 0 else (1.0, 1.0)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return 1.0, 1.0


def _window(image: np.ndarray) -> tuple[float, float]:
    """(low, high): the 0.5th percentile of all pixels (the background stays dark) and the
    99.5th of the non-zero ones (the tissue decides the bright end)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    tissue = finite[finite != 0]
    high = float(np.percentile(tissue if tissue.size else finite, 99.5))
    low = min(float(np.percentile(finite, 0.5)), high - 1.0)
    return low, high


def thumbnail_png(files: Sequence[Path], size: int = THUMBNAIL_SIZE) -> bytes:
    """The middle slice of a series as an 8-bit grey PNG, its longer side ``size`` pixels
    (window: from the 0.5th percentile of all pixels to the 99.5th of the non-zero ones)."""
    from PIL import Image

    image, aspect = middle_slice(files)
    vmin, vmax = _window(image)
    grey = np.clip((image - vmin) / (vmax - vmin), 0.0, 1.0)
    picture = Image.fromarray(np.round(grey * 255.0).astype(np.uint8))
    height_mm, width_mm = image.shape[0] * aspect, float(image.shape[1])
    scale = size / max(height_mm, width_mm)
    shape = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    picture = picture.resize(shape, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()
