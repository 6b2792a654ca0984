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

__all__ = ["SliceReference", "SliceGeometry", "AssembledVolume", "volume_from_highdicom", "resample_onto"]


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


def _sitk_image(array: np.ndarray, spacing: Sequence[float], geometry: SliceGeometry):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))  # sitk axes: x, y, z
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    image.SetOrigin(tuple(geometry.origin))
    axes = np.column_stack([geometry.row_direction, geometry.column_direction, geometry.slice_direction])
    image.SetDirection(tuple(float(v) for v in axes.ravel()))
    return image


def resample_onto(moving: AssembledVolume, fixed: AssembledVolume) -> tuple[np.ndarray, np.ndarray]:
    """``moving`` (another series of the same frame of reference) on ``fixed``'s voxel grid, in
    patient coordinates (SimpleITK, linear), and where it has data (bool, ``fixed``'s shape).
    Where ``moving`` is finer than ``fixed`` along an axis it is first smoothed by a Gaussian
    that takes it to ``fixed``'s spacing there, so the coarser grid does not alias it."""
    import SimpleITK as sitk

    image = _sitk_image(moving.volume, moving.spacing, moving.geometry)
    reference = _sitk_image(np.zeros(fixed.volume.shape, np.float32), fixed.spacing, fixed.geometry)
    fixed_axes = np.column_stack([fixed.geometry.slice_direction, fixed.geometry.column_direction,
                                  fixed.geometry.row_direction])  # (z, y, x) axes as columns
    moving_axes = (moving.geometry.slice_direction, moving.geometry.column_direction, moving.geometry.row_direction)
    sigmas = []
    for axis, own in zip(moving_axes, moving.spacing):  # the fixed spacing most along this axis
        coarse = float(np.asarray(fixed.spacing)[int(np.argmax(np.abs(np.asarray(axis) @ fixed_axes)))])
        sigmas.append(0.5 * math.sqrt(max(coarse**2 - float(own) ** 2, 0.0)))
    if max(sigmas) > 0.25 * min(moving.spacing):
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in reversed(sigmas)])
    values = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ones = _sitk_image(np.ones(moving.volume.shape, np.float32), moving.spacing, moving.geometry)
    inside = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(values).astype(np.float32), sitk.GetArrayFromImage(inside) > 0.5
