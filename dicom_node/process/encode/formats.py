"""The two other output formats of a derived series (DESIGN §4), built with highdicom.

* ``enhanced-mr``: the classic slices of :func:`dicom_node.derive_mr.build_mr_datasets`
  converted into one Legacy Converted Enhanced MR instance
  (``highdicom.legacy.LegacyConvertedEnhancedMRImage``);
* ``parametric-map``: the float32 model intensities as a Parametric Map
  (``highdicom.pm.ParametricMap``) on the output grid, for quantitative use.

Both carry the provenance of the classic series: Synthetic Data YES,
derivation description and codes, Contributing Equipment (109100) and the
source references.
"""
from __future__ import annotations

import copy
import logging
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.process.assemble import AssembledVolume
from dicom_node.process.encode.classic_mr import sop_instance_uid, window_from_percentiles

__all__ = ["build_enhanced_mr", "build_parametric_map"]

logger = logging.getLogger(__name__)

# provenance, plus the series attributes highdicom does not copy from the classic slices
_CARRIED_KEYWORDS = ("SyntheticData", "DerivationDescription", "DerivationCodeSequence",
                     "ImageComments", "ContributingEquipmentSequence", "Laterality",
                     "BodyPartExamined")


def _carry_provenance(target: Dataset, template: Dataset) -> None:
    """Copy the provenance attributes of a classic derived slice onto ``target``."""
    for keyword in _CARRIED_KEYWORDS:
        if keyword in template:
            target[keyword] = copy.deepcopy(template[keyword])


def build_enhanced_mr(datasets: Sequence[Dataset], *, series_uid: str,
                      series_number: int) -> Dataset:
    """One Legacy Converted Enhanced MR instance from the classic derived slices."""
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        list(datasets), series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid(series_uid, 0), instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    _carry_provenance(image, datasets[0])
    image.SourceImageEvidenceSequence = _evidence(datasets[0])
    image.Manufacturer = datasets[0].Manufacturer
    image.ManufacturerModelName = datasets[0].ManufacturerModelName
    image.SoftwareVersions = datasets[0].SoftwareVersions
    return image


def _evidence(first: Dataset) -> DicomSequence:
    """Source Image Evidence Sequence (hierarchical SOP instance reference) of the source."""
    study = Dataset()
    study.StudyInstanceUID = first.StudyInstanceUID
    series = []
    for ref in first.ReferencedSeriesSequence:
        item = Dataset()
        item.SeriesInstanceUID = ref.SeriesInstanceUID
        item.ReferencedSOPSequence = copy.deepcopy(ref.ReferencedInstanceSequence)
        series.append(item)
    study.ReferencedSeriesSequence = DicomSequence(series)
    return DicomSequence([study])


def _source_metadata(assembled: AssembledVolume) -> list[Dataset]:
    """Metadata-only stand-ins for the source instances (what highdicom references)."""
    header = assembled.header
    if assembled.references[0].frame_number is not None:  # one Enhanced MR instance
        return [header]
    out = []
    for k, ref in enumerate(assembled.references):
        ds = copy.deepcopy(header)
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_instance_uid
        position = assembled.geometry.position((k * assembled.spacing[0], 0.0, 0.0))
        ds.ImagePositionPatient = [float(v) for v in position]
        out.append(ds)
    return out


def _output_volume(volume: np.ndarray, first: Dataset, spacing_z: float,
                   frame_of_reference_uid: str) -> hd.Volume:
    """The float32 output as a highdicom Volume on the derived slices' grid."""
    orientation = [float(v) for v in first.ImageOrientationPatient]
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    direction = np.stack([np.cross(row, col), col, row], axis=1)
    spacing = (float(spacing_z), *(float(v) for v in first.PixelSpacing))
    return hd.Volume.from_components(
        np.ascontiguousarray(volume, dtype=np.float32), spacing=spacing,
        coordinate_system="PATIENT", position=[float(v) for v in first.ImagePositionPatient],
        direction=direction,
        frame_of_reference_uid=frame_of_reference_uid)


def build_parametric_map(volume: np.ndarray, datasets: Sequence[Dataset],
                         assembled: AssembledVolume, *, series_uid: str,
                         series_number: int) -> Dataset:
    """A float32 Parametric Map of ``volume`` (z, y, x, model intensity units) on the grid of
    the classic derived slices ``datasets``."""
    first = datasets[0]
    values = np.asarray(volume, dtype=np.float32)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="RTFSYN", lut_explanation="synthesized intensity (normalized, unitless)",
        unit=codes.UCUM.NoUnits, value_range=(float(values.min()), float(values.max())),
        slope=1.0, intercept=0.0)
    centre, width = window_from_percentiles(values)
    pm = hd.pm.ParametricMap(
        source_images=_source_metadata(assembled),
        pixel_array=_output_volume(values, first, float(first.SpacingBetweenSlices),
                                   assembled.geometry.frame_of_reference_uid),
        series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid(series_uid, 0), instance_number=1,
        manufacturer=str(first.Manufacturer),
        manufacturer_model_name=str(first.ManufacturerModelName),
        software_versions=str(first.SoftwareVersions[0]),
        device_serial_number=str(first.ContributingEquipmentSequence[-1].DeviceUID)[-16:],
        contains_recognizable_visual_features=True,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=centre, window_width=max(width, 1e-3),
            window_explanation="RTFSyn percentile window", voi_lut_function="LINEAR_EXACT")],
        content_description=str(first.SeriesDescription)[:64],
        content_label="RTFSYN",
        derivation=codes.DCM.ImageProcessing)
    _carry_provenance(pm, first)
    pm.SeriesDescription = first.SeriesDescription
    pm.SoftwareVersions = first.SoftwareVersions
    return pm
