"""Classic MR Image Storage datasets for a derived (synthetic) series.

:func:`build_mr_series` makes one instance per output slice, exactly as
DESIGN §4 asks: patient and study modules copied from the source, new series
with Synthetic Data YES and DERIVED image type, geometry of the output grid,
MR acquisition attributes of the *target* protocol, uint16 pixels with a
rescale and a window, Source Image Sequence per slice and the provenance
carried by a :class:`~dicom_node.process.encode.provenance.Provenance`. The
instances share one template dataset (:class:`MRSeries`), so the writer encodes
it once; writing and read-back live in :mod:`dicom_node.process.encode.write`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import MRImageStorage, generate_uid

from dicom_node.dicom.elements import code_item, ds_text, file_meta
from dicom_node.process.volume import AssembledVolume, SliceReference
from dicom_node.process.encode.acquisition import imaging_frequency_mhz, mr_sequence_attributes
from dicom_node.process.encode.provenance import Provenance
from synthesis.protocol import MRProtocol

__all__ = ["OutputGrid", "MRSeries", "build_mr_series", "quantize", "window_from_percentiles",
           "sop_instance_uid", "copy_patient_study", "source_image_sequence", "INTENSITY_SCALE"]

logger = logging.getLogger(__name__)

STORED_MAX = 4095  # 12 significant bits, like most MR scanners
# Rescaled (real-world) value = model intensity x 1000: the model's normalized [0, 1] scale in
# per-mille, so windows are in the hundreds (a window width below 1 is not permitted).
INTENSITY_SCALE = 1000.0
_STUDY_KEYWORDS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "ProcedureCodeSequence", "ReferencedStudySequence",
    "RequestingService", "AdmittingDiagnosesDescription", "PatientPosition", "BodyPartExamined",
    "Laterality", "ImageLaterality",
)
_PATIENT_GROUPS = (0x0010, 0x0012)  # Patient, Patient Study, Clinical Trial Subject/Study


@dataclass(frozen=True)
class OutputGrid:
    """The synthesized volume's grid in the patient.

    ``origin`` LPS mm of voxel (0, 0, 0)'s centre; ``spacing`` (dz, dy, dx)
    mm; directions as in :class:`~dicom_node.process.volume.SliceGeometry`;
    ``offset_z_mm`` the first output slice centre minus the first source
    slice centre along the slice direction.
    """

    origin: np.ndarray
    spacing: tuple[float, float, float]
    row_direction: np.ndarray
    column_direction: np.ndarray
    slice_direction: np.ndarray
    offset_z_mm: float

    @classmethod
    def from_result(cls, assembled: AssembledVolume, spacing: Sequence[float],
                    origin_offset_mm: Sequence[float]) -> "OutputGrid":
        geo = assembled.geometry
        return cls(origin=geo.position(origin_offset_mm),
                   spacing=tuple(float(s) for s in spacing),
                   row_direction=np.asarray(geo.row_direction),
                   column_direction=np.asarray(geo.column_direction),
                   slice_direction=np.asarray(geo.slice_direction),
                   offset_z_mm=float(origin_offset_mm[0]))

    def slice_position(self, k: int) -> np.ndarray:
        """LPS position (3,) of the centre of the first voxel of output slice ``k``."""
        return self.origin + k * self.spacing[0] * self.slice_direction


def sop_instance_uid(series_uid: str, index: int) -> str:
    """The SOP Instance UID of instance ``index``: derived from the series UID, so a
    re-run with the same series UID writes the same instances."""
    return generate_uid(entropy_srcs=["rtfsyn-derived", str(series_uid), "sop", str(index)])


def quantize(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map a float volume (model intensities) onto uint16 ``0..STORED_MAX``.

    Returns (pixels, slope, intercept) with ``pixels * slope + intercept =
    volume * INTENSITY_SCALE`` (to quantization). Negative values (no
    meaning for a magnitude image) are clipped to 0; the slope is rounded to
    its Decimal String form first so that the stored values and the written
    Rescale Slope agree exactly.
    """
    clean = np.array(volume, dtype=np.float64)  # a copy, worked on in place
    np.nan_to_num(clean, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(clean, 0.0, None, out=clean)
    clean *= INTENSITY_SCALE
    top = float(clean.max())
    slope = float(ds_text(top / STORED_MAX)) if top > 0 else 1.0
    clean /= slope
    np.rint(clean, out=clean)
    np.clip(clean, 0, 65535, out=clean)
    return clean.astype(np.uint16), slope, 0.0


def window_from_percentiles(values: np.ndarray, low: float = 1.0,
                            high: float = 99.5) -> tuple[float, float]:
    """(centre, width) spanning the ``low``–``high`` percentiles of the foreground."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    foreground = flat[flat > 0.05 * flat.max()] if flat.size and flat.max() > 0 else flat
    if foreground.size == 0:
        return 0.5, 1.0
    lo, hi = np.percentile(foreground, [low, high])
    if hi <= lo:
        lo, hi = float(foreground.min()), float(foreground.min()) + 1.0
    return float(lo + hi) / 2.0, float(hi - lo)


def copy_patient_study(header: Dataset) -> Dataset:
    """Patient, Patient Study, Clinical Trial and General Study attributes of the source."""
    ds = Dataset()
    if "SpecificCharacterSet" in header:
        ds.SpecificCharacterSet = header.SpecificCharacterSet
    for element in header:
        if element.tag.group in _PATIENT_GROUPS and not element.tag.is_private:
            ds.add(element)
    for keyword in _STUDY_KEYWORDS:
        if keyword in header:
            ds[keyword] = header[keyword]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDate",
                    "StudyTime", "PatientPosition"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # type 2 (2C for MR): present, possibly empty
    if "BodyPartExamined" not in ds and "Laterality" not in ds:
        ds.Laterality = ""  # type 2C: required unless the body part is known to be unpaired
    return ds


def source_image_sequence(references: Sequence[SliceReference], source_dz: float,
                          output_dz: float, centre_mm: float) -> DicomSequence:
    """Source Image Sequence for the output slice centred ``centre_mm`` along the source's
    slice axis (0 = first source slice centre): every source slice whose slab overlaps."""
    half = 0.5 * (source_dz + output_dz) - 1e-6
    chosen = [j for j in range(len(references)) if abs(j * source_dz - centre_mm) < half]
    if not chosen:  # outside the stack (cannot happen for the default grid): nearest slice
        chosen = [int(np.clip(round(centre_mm / source_dz), 0, len(references) - 1))]
    items = []
    for j in chosen:
        ref = references[j]
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        if ref.frame_number is not None:
            item.ReferencedFrameNumber = ref.frame_number
        item.PurposeOfReferenceCodeSequence = DicomSequence(
            [code_item(codes.DCM.SourceImageForImageProcessingOperation)])
        items.append(item)
    return DicomSequence(items)


def _referenced_series(assembled: AssembledVolume) -> DicomSequence:
    """Referenced Series Sequence naming every source instance (Common Instance Reference)."""
    instances = []
    for ref in dict.fromkeys((r.sop_class_uid, r.sop_instance_uid) for r in assembled.references):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref
        instances.append(item)
    series = Dataset()
    series.SeriesInstanceUID = assembled.series_instance_uid
    series.ReferencedInstanceSequence = DicomSequence(instances)
    return DicomSequence([series])


def _target_acquisition(ds: Dataset, target: MRProtocol, thickness: float) -> None:
    """MR Image module attributes describing the simulated target protocol."""
    seq = mr_sequence_attributes(target)
    field = target.field_t or 3.0
    ds.ScanningSequence = seq["ScanningSequence"]
    ds.SequenceVariant = seq["SequenceVariant"]
    ds.ScanOptions = seq["ScanOptions"]
    ds.MRAcquisitionType = seq["MRAcquisitionType"]
    ds.SequenceName = seq["SequenceName"]
    ds.RepetitionTime = ds_text(target.tr_ms) if target.tr_ms else ""
    ds.EchoTime = ds_text(target.te_ms) if target.te_ms else ""
    if seq["inversion"]:
        ds.InversionTime = ds_text(target.ti_ms) if target.ti_ms else ""
    ds.EchoTrainLength = seq["EchoTrainLength"]
    if target.flip_deg is not None:
        ds.FlipAngle = ds_text(target.flip_deg)
    ds.MagneticFieldStrength = ds_text(field)
    ds.ImagingFrequency = ds_text(imaging_frequency_mhz(field))
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.SliceThickness = ds_text(thickness)


def _series_template(assembled: AssembledVolume, target: MRProtocol, grid: OutputGrid, *,
                     provenance: Provenance, series_uid: str, series_number: int,
                     description: str, now: datetime) -> Dataset:
    """Everything every instance of the derived series shares."""
    header = assembled.header
    ds = copy_patient_study(header)
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.FrameOfReferenceUID = assembled.geometry.frame_of_reference_uid
    ds.PositionReferenceIndicator = header.get("PositionReferenceIndicator", "")
    provenance.apply(ds)  # equipment, derivation, contributing equipment, SyntheticData
    lossy = str(header.get("LossyImageCompression", "00"))
    ds.LossyImageCompression = "01" if lossy == "01" else "00"
    if lossy == "01":
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in header:
                ds[keyword] = header[keyword]
    ds.BurnedInAnnotation = "NO"
    ds.ReferencedSeriesSequence = _referenced_series(assembled)
    _target_acquisition(ds, target, grid.spacing[0])
    ds.ImageOrientationPatient = [ds_text(v) for v in (*grid.row_direction,
                                                       *grid.column_direction)]
    ds.PixelSpacing = [ds_text(grid.spacing[1]), ds_text(grid.spacing[2])]
    ds.SpacingBetweenSlices = ds_text(grid.spacing[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


@dataclass(frozen=True)
class MRSeries:
    """The classic MR instances of a derived series, in slice order: ``template`` holds the
    attributes they all share, ``slices[k]`` the ones only instance k has (SOP Instance
    UID, Instance Number, position, Slice Location, Source Image Sequence, Pixel Data);
    ``pixels`` the stored values (z, y, x) uint16."""

    template: Dataset
    slices: list[Dataset]
    pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.slices)

    def dataset(self, k: int) -> Dataset:
        """The whole dataset of instance ``k`` (the template's elements are shared, not
        copied)."""
        ds = Dataset()
        ds.update(self.template)
        ds.update(self.slices[k])
        return ds

    def datasets(self) -> list[Dataset]:
        """Every instance's whole dataset."""
        return [self.dataset(k) for k in range(len(self.slices))]

    def part10_datasets(self) -> list[Dataset]:
        """Every instance's whole dataset with the node's file meta information (what the
        single-instance formats are converted from)."""
        datasets = self.datasets()
        for ds in datasets:
            ds.file_meta = file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        return datasets


def _slice_attributes(k: int, pixels: np.ndarray, assembled: AssembledVolume,
                      grid: OutputGrid, series_uid: str) -> Dataset:
    """What only output slice ``k`` has."""
    ds = Dataset()
    ds.SOPInstanceUID = sop_instance_uid(series_uid, k)
    ds.InstanceNumber = k + 1
    position = grid.slice_position(k)
    ds.ImagePositionPatient = [ds_text(v) for v in position]
    ds.SliceLocation = ds_text(float(np.dot(position, grid.slice_direction)))
    ds.SourceImageSequence = source_image_sequence(
        assembled.references, assembled.spacing[0], grid.spacing[0],
        grid.offset_z_mm + k * grid.spacing[0])
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels[k]).tobytes())  # Pixel Data
    return ds


def build_mr_series(volume: np.ndarray, assembled: AssembledVolume, target: MRProtocol,
                    grid: OutputGrid, *, provenance: Provenance, series_uid: str,
                    series_number: int, description: str, now: datetime) -> MRSeries:
    """One MR Image Storage instance per slice of ``volume`` (z, y, x), in slice order."""
    template = _series_template(assembled, target, grid, provenance=provenance,
                                series_uid=series_uid, series_number=series_number,
                                description=description, now=now)
    pixels, slope, intercept = quantize(volume)
    centre, width = window_from_percentiles(pixels.astype(np.float64) * slope + intercept)
    template.RescaleIntercept = ds_text(intercept)
    template.RescaleSlope = ds_text(slope)
    template.RescaleType = "US"
    template.WindowCenter = ds_text(centre)
    template.WindowWidth = ds_text(max(width, slope))
    template.WindowCenterWidthExplanation = "RTFSyn percentile window"
    template.Rows, template.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    slices = [_slice_attributes(k, pixels, assembled, grid, series_uid)
              for k in range(pixels.shape[0])]
    return MRSeries(template, slices, pixels)

