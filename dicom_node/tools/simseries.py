"""Simulated volumes written as realistic DICOM MR series.

:func:`write_series` turns a simulated volume (``(z, y, x)``, spacing
``(dz, dy, dx)`` mm, axial, LPS: +x to the patient's left, +y posterior,
+z superior) and its :class:`~synthesis.protocol.MRProtocol` into

* classic **MR Image Storage** instances, one file per slice (default), or
* one **Enhanced MR Image Storage** multi-frame instance (``enhanced=True``),

with the MR acquisition attributes a scanner would write (scanning sequence,
TR/TE/TI, flip angle, field strength, manufacturer) and patient/study modules
from a :class:`PatientInfo` that defaults to a clearly fake subject. The
files are what the node and the tests receive, so they must pass ``dciodvfy``.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, MRImageStorage, generate_uid

from dicom_node.dicom.elements import ds_text, file_meta
from dicom_node.process.encode.acquisition import imaging_frequency_mhz, mr_sequence_attributes
from dicom_node.tools.simseries_enhanced import write_enhanced
from synthesis.protocol import Contrast, MRProtocol, SequenceKind

__all__ = ["PatientInfo", "write_series", "default_series_description", "SIMULATOR_IMPLEMENTATION"]

logger = logging.getLogger(__name__)

#: Implementation Class UID and Version Name of the simulator (it poses as another program).
SIMULATOR_IMPLEMENTATION = ("1.2.826.0.1.3680043.8.498.77.1", "RTFSYN_SIM_01")
_DEFAULT_MANUFACTURER = {1.5: ("SIEMENS", "Avanto"), 3.0: ("SIEMENS", "Prisma")}


@dataclass(frozen=True)
class PatientInfo:
    """Patient and study identification for a simulated series (fake by default).

    Dates are DICOM ``YYYYMMDD`` strings, times ``HHMMSS``; ``sex`` is M, F or O.
    """

    name: str = "SIM^SUBJECT"
    patient_id: str = "SIM0001"
    birth_date: str = ""
    sex: str = "O"
    study_id: str = "SIM1"
    accession_number: str = "SIMACC0001"
    study_date: str = "20240101"
    study_time: str = "090000"
    study_description: str = "SIMULATED BRAIN MRI"

    def __post_init__(self) -> None:
        if self.sex not in ("M", "F", "O", ""):
            raise ValueError(f"PatientInfo.sex must be 'M', 'F', 'O' or ''. Found {self.sex!r}.")
        for name in ("birth_date", "study_date"):
            value = getattr(self, name)
            if value and (len(value) != 8 or not value.isdigit()):
                raise ValueError(f"PatientInfo.{name} must be YYYYMMDD. Found a value of length "
                                 f"{len(value)}.")


def _uid(seed: int | None, *parts: object) -> UID:
    """A new UID; deterministic when ``seed`` is given (same parts, same UID)."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=["rtfsyn-sim", str(seed), *(str(p) for p in parts)])


def default_series_description(protocol: MRProtocol) -> str:
    """A short scanner-like description, e.g. ``"T1 MPRAGE AX"`` or ``"T2 TSE AX"``."""
    contrast = {Contrast.T1w: "T1", Contrast.T2w: "T2", Contrast.PDw: "PD",
                Contrast.FLAIR: "FLAIR", Contrast.T2starw: "T2STAR"}[protocol.contrast]
    parts = [contrast]
    if protocol.sequence is not None and not (protocol.contrast is Contrast.FLAIR
                                              and protocol.sequence is SequenceKind.IR):
        parts.append(protocol.sequence.value)
    if protocol.dimension == "3D":
        parts.append("3D")
    parts.append("AX")
    return " ".join(parts)


def _scale_to_uint(volume: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
    """Map ``volume`` linearly onto ``0 .. 2**bits - 1``; returns (pixels, slope, intercept)."""
    vmin = float(np.min(volume))
    vmax = float(np.max(volume))
    top = float(2**bits - 1)
    slope = (vmax - vmin) / top if vmax > vmin else 1.0
    pixels = np.clip(np.rint((volume - vmin) / slope), 0, top).astype(np.uint16)
    return pixels, slope, vmin


def _check_inputs(volume: np.ndarray, spacing: Sequence[float], bits: int) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume must be a non-empty 3-D array (z, y, x). "
                         f"Found shape {vol.shape}.")
    if not np.issubdtype(vol.dtype, np.number) or not np.all(np.isfinite(vol)):
        raise ValueError("volume must hold finite numbers. Found non-finite or non-numeric values.")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (dz, dy, dx) mm. Found {spacing!r}.")
    if not 8 <= int(bits) <= 16:
        raise ValueError(f"bits must be between 8 and 16. Found {bits!r}.")
    return vol.astype(np.float64, copy=False)



def _common_dataset(protocol: MRProtocol, patient: PatientInfo, *, study_uid: str,
                    series_uid: str, for_uid: str, series_number: int,
                    description: str) -> Dataset:
    """Patient, study, series, frame of reference and equipment modules."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = "MR"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = patient.study_date
    ds.StudyTime = patient.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = patient.study_id
    ds.AccessionNumber = patient.accession_number
    ds.StudyDescription = patient.study_description
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = description[:64]
    ds.SeriesDate = patient.study_date
    ds.SeriesTime = patient.study_time
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "HEAD"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    field_t = protocol.field_t or 3.0
    default_make, default_model = _DEFAULT_MANUFACTURER[1.5 if field_t < 2.25 else 3.0]
    ds.Manufacturer = protocol.manufacturer or default_make
    ds.ManufacturerModelName = protocol.model or default_model
    ds.InstitutionName = "RTFSyn simulation"
    ds.StationName = "SIMULATOR"
    ds.SoftwareVersions = SIMULATOR_IMPLEMENTATION[1]
    ds.DeviceSerialNumber = "SIM0"
    ds.ContentDate = patient.study_date
    ds.ContentTime = patient.study_time
    ds.AcquisitionDate = patient.study_date
    ds.AcquisitionTime = patient.study_time
    return ds


def _mr_acquisition(ds: Dataset, protocol: MRProtocol, slice_thickness: float) -> None:
    """MR Image module attributes of a classic instance (acquisition physics)."""
    seq = mr_sequence_attributes(protocol)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence = seq["ScanningSequence"]
    ds.SequenceVariant = seq["SequenceVariant"]
    ds.ScanOptions = seq["ScanOptions"]
    ds.MRAcquisitionType = seq["MRAcquisitionType"]
    ds.SequenceName = seq["SequenceName"]
    ds.AngioFlag = "N"
    ds.RepetitionTime = ds_text(protocol.tr_ms) if protocol.tr_ms else ""
    ds.EchoTime = ds_text(protocol.te_ms) if protocol.te_ms else ""
    if seq["inversion"]:
        ds.InversionTime = ds_text(protocol.ti_ms) if protocol.ti_ms else ""
    ds.EchoTrainLength = seq["EchoTrainLength"]
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = ds_text(imaging_frequency_mhz(protocol.field_t or 3.0))
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = ds_text(protocol.field_t or 3.0)
    if protocol.flip_deg is not None:
        ds.FlipAngle = ds_text(protocol.flip_deg)
    ds.SliceThickness = ds_text(slice_thickness)
    ds.ReceiveCoilName = "Head_32"
    ds.TransmitCoilName = "Body"



def _window(volume: np.ndarray) -> tuple[float, float]:
    """Window centre and width (rescaled units) spanning the 1st–99.5th percentiles."""
    lo, hi = np.percentile(volume, [1.0, 99.5])
    if hi <= lo:
        lo, hi = float(volume.min()), float(volume.max()) + 1.0
    return (lo + hi) / 2.0, max(hi - lo, 1e-6)


def write_series(volume: np.ndarray, spacing: tuple[float, float, float], protocol: MRProtocol,
                 out_dir: Path, *, study_uid: str | None = None,
                 frame_of_reference_uid: str | None = None, series_number: int = 1,
                 series_description: str | None = None, patient: PatientInfo | None = None,
                 origin_mm: Sequence[float] = (0.0, 0.0, 0.0), enhanced: bool = False,
                 bits: int = 12, seed: int | None = None) -> list[Path]:
    """Write ``volume`` as an axial DICOM MR series into ``out_dir``; returns the file paths.

    ``volume`` is ``(z, y, x)`` with ``spacing = (dz, dy, dx)`` mm; ``origin_mm``
    is the LPS position ``(x, y, z)`` mm of voxel ``(0, 0, 0)``'s centre, and
    slice ``k`` lies at ``origin + k * dz`` along +z (Image Orientation
    ``[1,0,0,0,1,0]``). Pixel values are stored as unsigned ``bits``-bit
    integers spanning the full range, with Rescale Slope/Intercept mapping
    them back to the volume's values. With ``seed`` every UID not given is
    derived from it, so the same call writes the same files.
    """
    vol = _check_inputs(volume, spacing, bits)
    if len(origin_mm) != 3:
        raise ValueError(f"origin_mm must be 3 numbers (x, y, z) mm. Found {origin_mm!r}.")
    patient = patient or PatientInfo()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or _uid(seed, "study")
    for_uid = frame_of_reference_uid or _uid(seed, "for", study_uid)
    series_uid = _uid(seed, "series", study_uid, series_number, protocol.to_dict())
    description = series_description or default_series_description(protocol)
    common = _common_dataset(protocol, patient, study_uid=study_uid, series_uid=series_uid,
                             for_uid=for_uid, series_number=series_number,
                             description=description)
    pixels, slope, intercept = _scale_to_uint(vol, bits)
    thickness = float(protocol.slice_thickness_mm or spacing[0])
    window = _window(vol)
    if enhanced:
        path = write_enhanced(common, pixels, spacing, protocol, out_dir,
                              slope=slope, intercept=intercept, window=window,
                              thickness=thickness, origin_mm=origin_mm, bits=bits,
                              uid=functools.partial(_uid, seed),
                              implementation=SIMULATOR_IMPLEMENTATION)
        return [path]
    return _write_classic(common, pixels, spacing, protocol, out_dir, slope=slope,
                          intercept=intercept, window=window, thickness=thickness,
                          origin_mm=origin_mm, bits=bits, seed=seed)


def _write_classic(common: Dataset, pixels: np.ndarray, spacing: Sequence[float],
                   protocol: MRProtocol, out_dir: Path, *, slope: float, intercept: float,
                   window: tuple[float, float], thickness: float, origin_mm: Sequence[float],
                   bits: int, seed: int | None) -> list[Path]:
    """One MR Image Storage file per slice ``pixels[k]``; returns the paths in slice order."""
    dz, dy, dx = (float(s) for s in spacing)
    paths: list[Path] = []
    for k in range(pixels.shape[0]):
        ds = Dataset()
        ds.update(common)
        sop_uid = _uid(seed, "sop", common.SeriesInstanceUID, k)
        ds.file_meta = file_meta(MRImageStorage, sop_uid, implementation=SIMULATOR_IMPLEMENTATION)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        _mr_acquisition(ds, protocol, thickness)
        position = (float(origin_mm[0]), float(origin_mm[1]), float(origin_mm[2]) + k * dz)
        ds.ImagePositionPatient = [ds_text(v) for v in position]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = ds_text(position[2])
        ds.PixelSpacing = [ds_text(dy), ds_text(dx)]
        ds.SpacingBetweenSlices = ds_text(dz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = int(bits)
        ds.HighBit = int(bits) - 1
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = ds_text(intercept)
        ds.RescaleSlope = ds_text(slope)
        ds.WindowCenter = ds_text(window[0])
        ds.WindowWidth = ds_text(window[1])
        if window[1] < 1.0:  # plain LINEAR windows must be at least 1 wide
            ds.VOILUTFunction = "LINEAR_EXACT"
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = out_dir / f"IM{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("Wrote %d MR slices (%s) to %s", len(paths), common.SeriesDescription, out_dir)
    return paths
