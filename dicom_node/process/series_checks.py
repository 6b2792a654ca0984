"""The checks an input series must pass before it is assembled, each failing with a
:class:`~dicom_node.errors.RejectedSeries` that names the rule and the value found: one MR
series of MR storage classes, nothing synthetic, required UIDs, decodable pixel data, and for
classic instances shared, finite geometry that stacks into a regular volume."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, EnhancedMRImageStorage, MRImageStorage

from dicom_node.dicom.identity import is_own_output
from dicom_node.errors import RejectedSeries

__all__ = ["check_one_mr_series", "check_classic_geometry", "decode", "label",
           "irregular_reason", "MIN_SLICES", "SLICE_SPACING_RTOL", "ORIENTATION_TOL"]

MR_STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage)
MIN_SLICES = 2
SLICE_SPACING_RTOL = 0.02  # slice gaps may vary by 2 % of their mean
ORIENTATION_TOL = 1e-4  # per direction cosine, between slices
_REQUIRED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
             "Rows", "Columns")
_CLASSIC_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def check_one_mr_series(datasets: Sequence[Dataset]) -> None:
    """One series, MR storage classes only, nothing synthetic, required UIDs present."""
    for keyword in _REQUIRED:
        missing = sum(keyword not in ds for ds in datasets)
        if missing:
            raise RejectedSeries(f"missing {keyword} in {missing} of {len(datasets)} instances")
    series = sorted({str(ds.SeriesInstanceUID) for ds in datasets})
    if len(series) > 1:
        raise RejectedSeries(f"files belong to {len(series)} series; one series is expected")
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if modalities != ["MR"]:
        raise RejectedSeries(f"not MR: Modality {'/'.join(modalities) or '(missing)'}")
    classes = sorted({str(ds.get("SOPClassUID", "")) for ds in datasets})
    for uid in classes:
        if uid not in MR_STORAGE_CLASSES:
            raise RejectedSeries(f"SOP class {uid} ({UID(uid).name}) is not MR Image or "
                                 "Enhanced MR Image Storage")
    if len(classes) > 1:
        raise RejectedSeries("series mixes MR Image and Enhanced MR Image instances")
    if any(is_own_output(ds) for ds in datasets):
        raise RejectedSeries("series is synthetic (Synthetic Data YES or made by this node); "
                             "synthesizing from synthetic images is refused")


def label(ds: Dataset, what: str) -> str:
    """How an error names one input: its file name (spool names are UIDs) and its role."""
    name = Path(str(ds.filename)).name if getattr(ds, "filename", None) else None
    return f"{name} ({what})" if name else what


def decode(ds: Dataset, label: str) -> None:
    """Decode the pixel data now so a missing decoder is reported by transfer syntax."""
    if "PixelData" not in ds:
        raise RejectedSeries(f"{label}: no Pixel Data")
    syntax = ds.file_meta.get("TransferSyntaxUID", "(unknown)")
    try:
        ds.pixel_array  # noqa: B018 - cached by pydicom for highdicom to reuse
    except (NotImplementedError, RuntimeError, ValueError, TypeError) as exc:
        name = UID(str(syntax)).name
        raise RejectedSeries(f"{label}: pixel data in transfer syntax {name} ({syntax}) "
                             f"cannot be decoded ({exc})") from exc


def _float_values(ds: Dataset, keyword: str, count: int) -> list[float]:
    try:
        values = [float(v) for v in ds[keyword].value]
    except (TypeError, ValueError) as exc:
        raise RejectedSeries(f"{keyword} is not numeric: {ds[keyword].value!r}") from exc
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise RejectedSeries(f"{keyword} must be {count} finite numbers. Found {values!r}")
    return values


def check_classic_geometry(datasets: Sequence[Dataset]) -> None:
    """Geometry tags present, finite and shared by every slice."""
    n = len(datasets)
    if n < MIN_SLICES:
        raise RejectedSeries(f"series has {n} slice; a volume needs at least {MIN_SLICES}")
    for keyword in _CLASSIC_GEOMETRY:
        missing = sum(keyword not in ds or ds[keyword].VM == 0 for ds in datasets)
        if missing:
            raise RejectedSeries(f"missing {keyword} in {missing} of {n} instances")
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in datasets})
    if len(sizes) > 1:
        raise RejectedSeries(f"mixed Rows/Columns within the series: {sizes}")
    spacings = np.array([_float_values(ds, "PixelSpacing", 2) for ds in datasets])
    if np.any(spacings <= 0):
        raise RejectedSeries(f"PixelSpacing must be positive. Found {spacings.min():g} mm")
    if np.ptp(spacings, axis=0).max() > 1e-4:
        raise RejectedSeries(f"mixed PixelSpacing within the series: "
                             f"{sorted({tuple(s) for s in spacings.tolist()})}")
    orientations = np.array([_float_values(ds, "ImageOrientationPatient", 6) for ds in datasets])
    if np.ptp(orientations, axis=0).max() > ORIENTATION_TOL:
        raise RejectedSeries(f"mixed orientations: ImageOrientationPatient differs by up to "
                             f"{np.ptp(orientations, axis=0).max():.4g} between slices "
                             f"(tolerance {ORIENTATION_TOL})")
    for ds in datasets:
        _float_values(ds, "ImagePositionPatient", 3)


def irregular_reason(positions: np.ndarray, orientation: Sequence[float]) -> str:
    """Say why slice positions (N, 3) are not a regular stack."""
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.sort(positions @ normal)
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        return f"duplicate slice positions: {int(np.sum(gaps < 1e-3))} slices share a position"
    offsets = positions - positions[0]
    sideways = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1).max()
    if sideways > 1e-2 * max(float(gaps.mean()), 1e-6) * len(gaps):
        return (f"slices are not stacked along their normal: up to {sideways:.3g} mm "
                "of in-plane shift between slice positions")
    return (f"irregular slice spacing: gaps between {gaps.min():.4g} and {gaps.max():.4g} mm "
            f"(tolerance {SLICE_SPACING_RTOL:.0%} of the mean gap)")
