"""Enhanced MR Image Storage: one multi-frame instance with per-frame functional groups,
assembled into an :class:`~dicom_node.process.volume.AssembledVolume` (frames ordered along the
slice normal; one orientation for all frames)."""
from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from highdicom.spatial import get_volume_positions
from pydicom.dataset import Dataset

from dicom_node.errors import RejectedSeries
from dicom_node.process.series_checks import (MIN_SLICES, SLICE_SPACING_RTOL, decode,
                                              irregular_reason, label)
from dicom_node.process.volume import AssembledVolume, SliceReference, volume_from_highdicom

__all__ = ["assemble_enhanced"]


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
        raise RejectedSeries(irregular_reason(np.array(positions), orientation))
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


def assemble_enhanced(ds: Dataset) -> AssembledVolume:
    """Enhanced MR: one multi-frame instance with per-frame functional groups."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < MIN_SLICES:
        raise RejectedSeries(f"series has {frames} frame; a volume needs at least {MIN_SLICES}")
    orientation = _enhanced_orientation(ds)
    order = _enhanced_frame_order(ds, orientation)
    decode(ds, label(ds, "Enhanced MR instance"))
    try:
        volume = hd.Image.from_dataset(ds, copy=True).get_volume(
            dtype=np.float32, rtol=SLICE_SPACING_RTOL)
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise RejectedSeries(f"Enhanced MR frames do not form a volume: {exc}") from exc
    references = tuple(SliceReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID), frame)
                       for frame in order)
    return volume_from_highdicom(volume, orientation, references, ds)
