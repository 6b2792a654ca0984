"""DICOM MR series → one float32 volume with its patient geometry.

:func:`assemble_series` accepts the files of one series, either classic MR
Image Storage (one instance per slice) or one Enhanced MR Image Storage
multi-frame instance, checks that they form a regular 3-D volume and returns
an :class:`~dicom_node.process.volume.AssembledVolume`. Sorting, regularity checks and the modality /
real-world value transforms are highdicom's (``get_volume_from_series``,
``Image.get_volume``); :mod:`dicom_node.process.series_checks` adds the checks
whose failure must be reported to a person with a specific reason
(:class:`RejectedSeries`); Enhanced MR is :mod:`dicom_node.process.assemble_enhanced`.

Conventions: the volume is indexed ``(z, y, x)`` (slice, row, column) and
spacing is ``(dz, dy, dx)`` mm. Slices are ordered along the slice normal
``row_direction × column_direction`` so that voxel ``(k, i, j)`` lies at
``origin + k*dz*slice_direction + i*dy*column_direction + j*dx*row_direction``
in LPS patient coordinates (mm).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.spatial import get_series_volume_positions
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage

from dicom_node.errors import RejectedSeries
from dicom_node.process.assemble_enhanced import assemble_enhanced
from dicom_node.process.series_checks import (MIN_SLICES, ORIENTATION_TOL, SLICE_SPACING_RTOL,
                                              check_classic_geometry, check_one_mr_series, decode,
                                              irregular_reason, label)
from dicom_node.process.volume import AssembledVolume, SliceReference, volume_from_highdicom

__all__ = ["assemble_series", "warm_up"]

logger = logging.getLogger(__name__)


def assemble_series(files: Sequence[Path]) -> AssembledVolume:
    """Read the files of one MR series and build its volume.

    Raises :class:`RejectedSeries` when the files are not one regular MR
    volume (the reason names the rule and the value found).
    """
    datasets = [_read(Path(f)) for f in files]
    if not datasets:
        raise RejectedSeries("no DICOM files were given for the series")
    check_one_mr_series(datasets)
    if datasets[0].SOPClassUID == EnhancedMRImageStorage:
        if len(datasets) != 1:
            raise RejectedSeries(f"Enhanced MR series with {len(datasets)} instances; only one "
                                 "multi-frame instance per series is supported")
        assembled = assemble_enhanced(datasets[0])
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
        check_one_mr_series(datasets)
        _assemble_classic(datasets)
    except Exception:  # a warm-up only: the first real series will say what is wrong
        logger.warning("assembly warm-up failed", exc_info=True)


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise RejectedSeries(f"{path.name}: not a readable DICOM file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises what damaged bytes provoke (zlib.error, ...)
        raise RejectedSeries(f"{path.name}: a damaged DICOM file ({type(exc).__name__}: {exc})") from exc


def _assemble_classic(datasets: list[Dataset]) -> AssembledVolume:
    """Classic MR: one instance per slice, sorted along the slice normal."""
    check_classic_geometry(datasets)
    orientation = [float(v) for v in datasets[0].ImageOrientationPatient]
    try:
        _, indices = get_series_volume_positions(
            datasets, rtol=SLICE_SPACING_RTOL, orientation_tol=ORIENTATION_TOL,
            handedness=hd.AxisHandedness.LEFT_HANDED)
    except ValueError as exc:
        raise RejectedSeries(f"slices do not form a volume: {exc}") from exc
    if indices is None:
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        raise RejectedSeries(irregular_reason(positions, orientation))
    ordered = [datasets[indices.index(k)] for k in range(len(datasets))]
    for k, ds in enumerate(ordered):
        decode(ds, label(ds, f"slice {k + 1}"))
    try:
        volume = hd.get_volume_from_series(ordered, dtype=np.float32, rtol=SLICE_SPACING_RTOL,
                                           orientation_tol=ORIENTATION_TOL)
    except ValueError as exc:
        raise RejectedSeries(f"slices do not form a volume: {exc}") from exc
    references = tuple(SliceReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
                       for ds in ordered)
    return volume_from_highdicom(volume, orientation, references, ordered[0])
