"""An assembled series: one float32 volume ``(z, y, x)`` with its patient geometry and the
source instance of every slice; what the encoder writes the derived series against.

Conventions: spacing is ``(dz, dy, dx)`` mm; voxel ``(k, i, j)`` lies at
``origin + k*dz*slice_direction + i*dy*column_direction + j*dx*row_direction`` in LPS patient
coordinates (mm).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.errors import RejectedSeries

__all__ = ["SliceReference", "SliceGeometry", "AssembledVolume", "volume_from_highdicom"]


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


def volume_from_highdicom(volume: hd.Volume, orientation: Sequence[float],
            references: tuple[SliceReference, ...], first: Dataset) -> AssembledVolume:
    """Orient a highdicom volume along the slice normal ``row x column`` of ``orientation``
    and package it with the header of its ``first`` instance (pixel data removed)."""
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
