"""One Enhanced MR Image Storage multi-frame instance for a simulated series.

Used by :func:`dicom_node.tools.simseries.write_series` with ``enhanced=True``: the
same patient/study/series modules as the classic slices, the acquisition in
the shared functional groups, and one frame per slice with its position in
the per-frame functional groups (one stack, dimension = in-stack position).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedMRImageStorage

from dicom_node.dicom.elements import ds_text, file_meta
from dicom_node.process.encode.acquisition import imaging_frequency_mhz, mr_sequence_attributes
from synthesis.protocol import Contrast, MRProtocol

__all__ = ["write_enhanced"]

logger = logging.getLogger(__name__)

_ACQUISITION_CONTRAST = {Contrast.T1w: "T1", Contrast.T2w: "T2", Contrast.PDw: "PROTON_DENSITY",
                         Contrast.FLAIR: "FLUID_ATTENUATED", Contrast.T2starw: "T2_STAR"}


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _shared_groups(protocol: MRProtocol, spacing: Sequence[float], thickness: float,
                   slope: float, intercept: float, window: tuple[float, float],
                   shape: tuple[int, int, int], coil: tuple[str, str]) -> Dataset:
    """The Shared Functional Groups Sequence item (geometry and acquisition)."""
    seq = mr_sequence_attributes(protocol)
    dz, dy, dx = (float(s) for s in spacing)
    three_d = seq["MRAcquisitionType"] == "3D"
    inversion = bool(seq["inversion"])
    fov = _item(InPlanePhaseEncodingDirection="ROW",
                MRAcquisitionFrequencyEncodingSteps=int(shape[2]),
                MRAcquisitionPhaseEncodingStepsInPlane=int(shape[1]),
                PercentSampling=100.0, PercentPhaseFieldOfView=100.0)
    if three_d:
        fov.MRAcquisitionPhaseEncodingStepsOutOfPlane = int(shape[0])
    modifier = _item(InversionRecovery="YES" if inversion else "NO", FlowCompensation="NONE",
                     T2Preparation="NO", SpatialPresaturation="NONE", PartialFourier="NO",
                     SpectrallySelectedExcitation="NONE", ParallelAcquisition="NO")
    if inversion:
        modifier.InversionTimes = [float(protocol.ti_ms or 0.0)]
    groups = _item(
        PixelMeasuresSequence=DicomSequence([_item(
            PixelSpacing=[ds_text(dy), ds_text(dx)], SliceThickness=ds_text(thickness),
            SpacingBetweenSlices=ds_text(dz))]),
        PlaneOrientationSequence=DicomSequence([_item(
            ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])]),
        PixelValueTransformationSequence=DicomSequence([_item(
            RescaleIntercept=ds_text(intercept), RescaleSlope=ds_text(slope), RescaleType="US")]),
        FrameVOILUTSequence=DicomSequence([_item(
            WindowCenter=ds_text(window[0]), WindowWidth=ds_text(window[1]),
            VOILUTFunction="LINEAR_EXACT" if window[1] < 1.0 else "LINEAR")]),
        FrameAnatomySequence=DicomSequence([_item(
            AnatomicRegionSequence=DicomSequence([_code("12738006", "SCT", "Brain")]),
            FrameLaterality="U")]),
        MRImageFrameTypeSequence=DicomSequence([_item(
            FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
            ComplexImageComponent="MAGNITUDE",
            AcquisitionContrast=_ACQUISITION_CONTRAST[protocol.contrast])]),
        MRFOVGeometrySequence=DicomSequence([fov]),
        MREchoSequence=DicomSequence([_item(EffectiveEchoTime=protocol.te_ms or 0.0)]),
        MRModifierSequence=DicomSequence([modifier]),
    )
    groups.update(_hardware_groups(protocol, seq, coil))
    return groups


def _hardware_groups(protocol: MRProtocol, seq: dict, coil: tuple[str, str]) -> Dataset:
    """Timing, imaging modifier, coil and averages functional groups."""
    field_t = protocol.field_t or 3.0
    timing = _item(RepetitionTime=protocol.tr_ms or 0.0, FlipAngle=protocol.flip_deg or 90.0,
                   EchoTrainLength=int(seq["EchoTrainLength"]),
                   RFEchoTrainLength=int(seq["EchoTrainLength"]),
                   GradientEchoTrainLength=0 if "SE" in seq["ScanningSequence"] else 1,
                   SpecificAbsorptionRateSequence=DicomSequence([_item(
                       SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                       SpecificAbsorptionRateValue=0.8)]),
                   GradientOutputType="DB_DT", GradientOutput=0.6,
                   OperatingModeSequence=DicomSequence([
                       _item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
                       for kind in ("STATIC FIELD", "RF", "GRADIENT")]))
    return _item(
        MRTimingAndRelatedParametersSequence=DicomSequence([timing]),
        MRImagingModifierSequence=DicomSequence([_item(
            MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
            TransmitterFrequency=[round(imaging_frequency_mhz(field_t), 6)], PixelBandwidth=200.0)]),
        MRReceiveCoilSequence=DicomSequence([_item(
            ReceiveCoilName=coil[0], ReceiveCoilManufacturerName=coil[1],
            ReceiveCoilType="MULTICOIL", QuadratureReceiveCoil="NO",
            MultiCoilDefinitionSequence=DicomSequence([_item(
                MultiCoilElementName="HEA;HEP", MultiCoilElementUsed="YES")]))]),
        MRTransmitCoilSequence=DicomSequence([_item(
            TransmitCoilName="Body", TransmitCoilManufacturerName=coil[1],
            TransmitCoilType="BODY")]),
        MRAveragesSequence=DicomSequence([_item(NumberOfAverages=1.0)]),
    )


def _per_frame_groups(n_frames: int, dz: float, origin_mm: Sequence[float],
                      acquisition_datetime: str) -> DicomSequence:
    """One Per-frame Functional Groups item per slice: frame content and position."""
    items = []
    for k in range(n_frames):
        position = (float(origin_mm[0]), float(origin_mm[1]), float(origin_mm[2]) + k * dz)
        items.append(_item(
            FrameContentSequence=DicomSequence([_item(
                FrameAcquisitionNumber=1, FrameReferenceDateTime=acquisition_datetime,
                FrameAcquisitionDateTime=acquisition_datetime, FrameAcquisitionDuration=1000.0,
                StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1])]),
            PlanePositionSequence=DicomSequence([_item(
                ImagePositionPatient=[ds_text(v) for v in position])]),
        ))
    return DicomSequence(items)


def _pulse_sequence(ds: Dataset, protocol: MRProtocol) -> None:
    """MR Pulse Sequence and MR Image and Spectroscopy Instance module attributes."""
    seq = mr_sequence_attributes(protocol)
    spin = "SE" in seq["ScanningSequence"]
    ds.PulseSequenceName = str(seq["SequenceName"]).lstrip("*")
    ds.MRAcquisitionType = seq["MRAcquisitionType"]
    ds.EchoPulseSequence = "SPIN" if spin else "GRADIENT"
    if spin:
        ds.MultipleSpinEcho = "YES" if int(seq["EchoTrainLength"]) > 1 else "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "PARTIAL" if int(seq["EchoTrainLength"]) > 1 else "SINGLE"
    if seq["MRAcquisitionType"] == "3D":
        ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = protocol.field_t or 3.0
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ContentQualification = "RESEARCH"


def write_enhanced(common: Dataset, pixels: np.ndarray, spacing: Sequence[float],
                   protocol: MRProtocol, out_dir: Path, *, slope: float, intercept: float,
                   window: tuple[float, float], thickness: float, origin_mm: Sequence[float],
                   bits: int, uid: Callable[..., str], implementation: tuple[str, str]) -> Path:
    """Write ``pixels`` (uint16 ``(z, y, x)``) as one Enhanced MR instance; returns its path.

    ``uid(*parts)`` makes the instance's UIDs (deterministic for the same parts when the
    caller seeds it); ``implementation`` the file meta's class UID and version name."""
    ds = Dataset()
    ds.update(common)
    for keyword in ("AcquisitionDate", "AcquisitionTime"):
        delattr(ds, keyword)
    sop_uid = uid("sop", common.SeriesInstanceUID, "enhanced")
    ds.file_meta = file_meta(EnhancedMRImageStorage, sop_uid,
                             implementation=implementation)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = _ACQUISITION_CONTRAST[protocol.contrast]
    acquisition_dt = f"{common.StudyDate}{common.StudyTime}"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = acquisition_dt
    ds.AcquisitionDuration = 300.0
    ds.ContentDate, ds.ContentTime = common.StudyDate, common.StudyTime
    ds.AcquisitionContextSequence = DicomSequence()
    _pulse_sequence(ds, protocol)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PresentationLUTShape = "IDENTITY"
    ds.NumberOfFrames = int(pixels.shape[0])
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits)
    ds.HighBit = int(bits) - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    dimension_uid = uid("dimension", common.SeriesInstanceUID)
    ds.DimensionOrganizationSequence = DicomSequence([
        _item(DimensionOrganizationUID=dimension_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = DicomSequence([
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209056,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Stack ID"),
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111,
              DimensionDescriptionLabel="In-Stack Position Number"),
    ])
    ds.SharedFunctionalGroupsSequence = DicomSequence([_shared_groups(
        protocol, spacing, thickness, slope, intercept, window, pixels.shape,
        (str(common.get("ReceiveCoilName", "Head_32")), str(common.Manufacturer)))])
    ds.PerFrameFunctionalGroupsSequence = _per_frame_groups(
        pixels.shape[0], float(spacing[0]), origin_mm, acquisition_dt)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path = Path(out_dir) / "EN00001.dcm"
    ds.save_as(path, enforce_file_format=True)
    logger.info("Wrote an Enhanced MR instance of %d frames (%s) to %s",
                pixels.shape[0], common.SeriesDescription, out_dir)
    return path
