"""DICOM MR series → one float32 volume with its patient geometry.

:func:`assemble_series` accepts the files of one series, either classic MR
Image Storage (one instance per slice) or one Enhanced MR Image Storage
multi-frame instance, checks that they form a regular 3-D volume and returns
an :class:`AssembledVolume`. Sorting, regularity checks and the modality /
real-world value transforms are highdicom's (``get_volume_from_series``,
``Image.get_volume``); this module adds the checks whose failure must be
reported to a person with a specific reason (:class:`RejectedSeries`).

Conventions: the volume is indexed ``(z, y, x)`` (slice, row, column) and
spacing is ``(dz, dy, dx)`` mm. Slices are ordered along the slice normal
``row_direction × column_direction`` so that voxel ``(k, i, j)`` lies at
``origin + k*dz*slice_direction + i*dy*column_direction + j*dx*row_direction``
in LPS patient coordinates (mm).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.spatial import get_series_volume_positions, get_volume_positions
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage

from dicom_node.dicom.identity import is_own_output
from dicom_node.errors import RejectedSeries

__all__ = [
    "AssembledVolume",
    "SliceGeometry",
    "SliceReference",
    "assemble_series",
    "warm_up",
    "MIN_SLICES",
    "SLICE_SPACING_RTOL",
]

logger = logging.getLogger(__name__)

MR_STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage)
MIN_SLICES = 2
SLICE_SPACING_RTOL = 0.02  # slice gaps may vary by 2 % of their mean
ORIENTATION_TOL = 1e-4  # per direction cosine, between slices
_REQUIRED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
             "Rows", "Columns")
_CLASSIC_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


@dataclass(frozen=True)
class SliceReference:
    """The source instance (and frame, for multi-frame) that holds one slice."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class SliceGeometry:
    """Where the volume lies in the patient (LPS, mm).

    ``origin`` is the centre of voxel ``(0, 0, 0)`` (the first slice's Image
    Position); the three unit vectors give the directions of increasing x
    (``row_direction``), y (``column_direction``) and z (``slice_direction``).
    """

    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    slice_direction: tuple[float, float, float]
    frame_of_reference_uid: str

    def position(self, offset_zyx_mm: Sequence[float]) -> np.ndarray:
        """LPS position (3,) of a point given in mm along the (z, y, x) axes from the origin."""
        dz, dy, dx = (float(v) for v in offset_zyx_mm)
        return (np.asarray(self.origin) + dz * np.asarray(self.slice_direction)
                + dy * np.asarray(self.column_direction) + dx * np.asarray(self.row_direction))


@dataclass(frozen=True)
class AssembledVolume:
    """One series as a volume.

    ``volume`` float32 ``(z, y, x)`` in real-world units (rescale or real-world
    value mapping applied); ``spacing`` ``(dz, dy, dx)`` mm; ``references``
    one per slice z; ``header`` the first slice's dataset without pixel data
    (patient/study modules and protocol tags).
    """

    volume: np.ndarray
    spacing: tuple[float, float, float]
    geometry: SliceGeometry
    references: tuple[SliceReference, ...]
    header: Dataset

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)




def assemble_series(files: Sequence[Path]) -> AssembledVolume:
    """Read the files of one MR series and build its volume.

    Raises :class:`RejectedSeries` when the files are not one regular MR
    volume (the reason names the rule and the value found).
    """
    datasets = [_read(Path(f)) for f in files]
    if not datasets:
        raise RejectedSeries("no DICOM files were given for the series")
    _check_one_mr_series(datasets)
    if datasets[0].SOPClassUID == EnhancedMRImageStorage:
        if len(datasets) != 1:
            raise RejectedSeries(f"Enhanced MR series with {len(datasets)} instances; only one "
                                 "multi-frame instance per series is supported")
        assembled = _assemble_enhanced(datasets[0])
    else:
        assembled = _assemble_classic(datasets)
    logger.info("Assembled series: %d x %d x %d voxels, spacing %s mm",
                *assembled.volume.shape, tuple(round(s, 4) for s in assembled.spacing))
    return assembled


def warm_up() -> None:
    """Load what the first assembly in a process would otherwise load on the way (about
    0.5 s: highdicom's tables of the standard, pydicom's pixel decoders) by assembling a
    tiny two-slice series made in memory. Never raises (logged)."""
    uid = "1.2.826.0.1.3680043.8.498.77.9"
    datasets = []
    for k in range(MIN_SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, f"{uid}.{k + 1}", "MR"
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.FrameOfReferenceUID = uid
        ds.Rows = ds.Columns = 2
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SamplesPerPixel, ds.PhotometricInterpretation = [1, 1], 1, \
            "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = bytes(8)
        datasets.append(ds)
    try:
        _check_one_mr_series(datasets)
        _assemble_classic(datasets)
    except Exception:  # a warm-up only: the first real series will say what is wrong
        logger.warning("assembly warm-up failed", exc_info=True)


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise RejectedSeries(f"{path.name}: not a readable DICOM file ({exc})") from exc


def _check_one_mr_series(datasets: Sequence[Dataset]) -> None:
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


def _label(ds: Dataset, what: str) -> str:
    """How an error names one input: its file name (spool names are UIDs) and its role."""
    name = Path(str(ds.filename)).name if getattr(ds, "filename", None) else None
    return f"{name} ({what})" if name else what


def _decode(ds: Dataset, label: str) -> None:
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


def _check_classic_geometry(datasets: Sequence[Dataset]) -> None:
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


def _irregular_reason(positions: np.ndarray, orientation: Sequence[float]) -> str:
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


def _assemble_classic(datasets: list[Dataset]) -> AssembledVolume:
    """Classic MR: one instance per slice, sorted along the slice normal."""
    _check_classic_geometry(datasets)
    orientation = [float(v) for v in datasets[0].ImageOrientationPatient]
    try:
        _, indices = get_series_volume_positions(
            datasets, rtol=SLICE_SPACING_RTOL, orientation_tol=ORIENTATION_TOL,
            handedness=hd.AxisHandedness.LEFT_HANDED)
    except ValueError as exc:
        raise RejectedSeries(f"slices do not form a volume: {exc}") from exc
    if indices is None:
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        raise RejectedSeries(_irregular_reason(positions, orientation))
    ordered = [datasets[indices.index(k)] for k in range(len(datasets))]
    for k, ds in enumerate(ordered):
        _decode(ds, _label(ds, f"slice {k + 1}"))
    try:
        volume = hd.get_volume_from_series(ordered, dtype=np.float32, rtol=SLICE_SPACING_RTOL,
                                           orientation_tol=ORIENTATION_TOL)
    except ValueError as exc:
        raise RejectedSeries(f"slices do not form a volume: {exc}") from exc
    references = tuple(SliceReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
                       for ds in ordered)
    return _finish(volume, orientation, references, ordered[0])


def _finish(volume: hd.Volume, orientation: Sequence[float],
            references: tuple[SliceReference, ...], first: Dataset) -> AssembledVolume:
    """Orient the highdicom volume along the slice normal and package it."""
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    if float(np.dot(volume.direction[:, 0], normal)) < 0:
        volume = volume.flip_spatial(0)
    if not np.allclose(volume.direction[:, 1], col, atol=1e-4) or \
            not np.allclose(volume.direction[:, 2], row, atol=1e-4):
        raise RejectedSeries("volume axes do not follow the image orientation (internal check)")
    geometry = SliceGeometry(
        origin=tuple(float(v) for v in volume.position),
        row_direction=tuple(float(v) for v in row),
        column_direction=tuple(float(v) for v in col),
        slice_direction=tuple(float(v) for v in normal / np.linalg.norm(normal)),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
    )
    spacing = tuple(float(s) for s in volume.spacing)
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise RejectedSeries(f"voxel spacing must be finite and positive. Found {spacing}")
    header = copy.deepcopy(first)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    array = np.ascontiguousarray(volume.array, dtype=np.float32)
    return AssembledVolume(array, spacing, geometry, references, header)


def _enhanced_frame_order(ds: Dataset, orientation: Sequence[float]) -> list[int]:
    """1-based frame numbers in slice order along the normal."""
    try:
        positions = [[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                     for item in ds.PerFrameFunctionalGroupsSequence]
    except (AttributeError, IndexError) as exc:
        raise RejectedSeries("missing ImagePositionPatient (Plane Position Sequence) in the "
                             "per-frame functional groups") from exc
    try:
        _, indices = get_volume_positions(positions, orientation, rtol=SLICE_SPACING_RTOL,
                                          handedness=hd.AxisHandedness.LEFT_HANDED)
    except ValueError as exc:
        raise RejectedSeries(f"Enhanced MR frames do not form a volume: {exc}") from exc
    if indices is None:
        raise RejectedSeries(_irregular_reason(np.array(positions), orientation))
    return [indices.index(k) + 1 for k in range(len(positions))]


def _enhanced_orientation(ds: Dataset) -> list[float]:
    """The single Image Orientation (Patient) of an Enhanced MR instance."""
    found = set()
    groups = list(ds.get("SharedFunctionalGroupsSequence", []))
    groups += list(ds.get("PerFrameFunctionalGroupsSequence", []))
    for group in groups:
        for item in group.get("PlaneOrientationSequence", []):
            if "ImageOrientationPatient" in item:
                found.add(tuple(round(float(v), 4) for v in item.ImageOrientationPatient))
    if not found:
        raise RejectedSeries("missing ImageOrientationPatient (Plane Orientation Sequence)")
    if len(found) > 1:
        raise RejectedSeries(f"mixed orientations: {len(found)} different "
                             "ImageOrientationPatient values between frames")
    return [float(v) for v in found.pop()]


def _assemble_enhanced(ds: Dataset) -> AssembledVolume:
    """Enhanced MR: one multi-frame instance with per-frame functional groups."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < MIN_SLICES:
        raise RejectedSeries(f"series has {frames} frame; a volume needs at least {MIN_SLICES}")
    orientation = _enhanced_orientation(ds)
    order = _enhanced_frame_order(ds, orientation)
    _decode(ds, _label(ds, "Enhanced MR instance"))
    try:
        volume = hd.Image.from_dataset(ds, copy=True).get_volume(
            dtype=np.float32, rtol=SLICE_SPACING_RTOL)
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise RejectedSeries(f"Enhanced MR frames do not form a volume: {exc}") from exc
    references = tuple(SliceReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID), frame)
                       for frame in order)
    return _finish(volume, orientation, references, ds)
